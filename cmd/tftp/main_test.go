package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ioactor/ioactor/internal/cli"
	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tftp"
)

func startServer(t *testing.T, root string) string {
	t.Helper()
	logger := slog.New(slog.DiscardHandler)
	sys, err := netio.NewSystem(netio.Config{Loops: 1, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := tftp.NewServer(sys, tftp.ServerConfig{Root: root, AllowWrite: true, Listen: netip.MustParseAddrPort("127.0.0.1:0"), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Close()
		sys.Shutdown(context.Background())
	})
	return srv.Addr().String()
}

func TestGetPut(t *testing.T) {
	leakcheck.Check(t)
	root, local := t.TempDir(), t.TempDir()
	content := bytes.Repeat([]byte("abc\n"), 50000)
	os.WriteFile(filepath.Join(root, "f.txt"), content, 0o644)
	addr := startServer(t, root)
	var out, errOut bytes.Buffer
	dst := filepath.Join(local, "got.txt")
	if err := run(context.Background(), []string{"get", "-blksize", "1428", "-windowsize", "8", addr, "f.txt", dst}, &out, &errOut); err != nil {
		t.Fatalf("get: %v %s", err, errOut.String())
	}
	if b, _ := os.ReadFile(dst); !bytes.Equal(b, content) {
		t.Fatal("download differs")
	}
	// Quiet when stderr is no terminal.
	if out.Len() != 0 || errOut.Len() != 0 {
		t.Fatalf("output %q %q", out.String(), errOut.String())
	}
	// To stdout, in netascii, with a progress bar forced.
	out.Reset()
	if err := run(context.Background(), []string{"get", "-netascii", "-progress", addr, "f.txt", "-"}, &out, &errOut); err != nil {
		t.Fatalf("get -: %v", err)
	}
	if !bytes.Equal(out.Bytes(), content) || !strings.Contains(errOut.String(), "MB/s") {
		t.Fatalf("stdout %d bytes, stderr %q", out.Len(), errOut.String())
	}
	if err := run(context.Background(), []string{"put", "-blksize", "512", addr, dst, "up.txt"}, &out, &errOut); err != nil {
		t.Fatalf("put: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "up.txt")); !bytes.Equal(b, content) {
		t.Fatal("upload differs")
	}
}

func TestFailedGetLeavesNothing(t *testing.T) {
	leakcheck.Check(t)
	root, local := t.TempDir(), t.TempDir()
	addr := startServer(t, root)
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"get", addr, "missing", filepath.Join(local, "x")}, &out, &errOut)
	var te *tftp.Error
	if !errorsAs(err, &te) || te.Code != tftp.ErrFileNotFound {
		t.Fatalf("err %v", err)
	}
	if ents, _ := os.ReadDir(local); len(ents) != 0 {
		t.Fatalf("left %v", ents)
	}
}

func TestUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	for _, args := range [][]string{nil, {"fetch"}, {"get"}, {"get", "host"}, {"get", "-blksize", "x", "h", "f"}, {"put", "-rollover", "no", "h", "f"}} {
		if err := run(context.Background(), args, &out, &errOut); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
	out.Reset()
	if err := run(context.Background(), []string{"-version"}, &out, &errOut); err != nil || !strings.HasPrefix(out.String(), "tftp ") {
		t.Fatalf("-version: %v %q", err, out.String())
	}
}

func errorsAs(err error, target **tftp.Error) bool { return errors.As(err, target) }

func TestGetNeverReplacesAnExistingFile(t *testing.T) {
	leakcheck.Check(t)
	root, local := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(root, "f.txt"), []byte("served"), 0o644)
	addr := startServer(t, root)
	dst := filepath.Join(local, "f.txt")
	os.WriteFile(dst, []byte("mine"), 0o644)
	var out, errOut bytes.Buffer
	// Named as LOCAL, and by default (the remote name in the current
	// directory): refused, untouched, nothing left behind.
	t.Chdir(local)
	for _, args := range [][]string{{"get", addr, "f.txt", dst}, {"get", addr, "f.txt"}} {
		err := run(context.Background(), args, &out, &errOut)
		if !errors.Is(err, errExists) {
			t.Fatalf("%q: err %v", args, err)
		}
		if b, _ := os.ReadFile(dst); string(b) != "mine" {
			t.Fatalf("%q replaced the file: %q", args, b)
		}
	}
	for _, args := range [][]string{{"get", "-force", addr, "f.txt", dst}, {"get", "-o", dst, addr, "f.txt"}} {
		os.WriteFile(dst, []byte("mine"), 0o644)
		if err := run(context.Background(), args, &out, &errOut); err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if b, _ := os.ReadFile(dst); string(b) != "served" {
			t.Fatalf("%q: %q", args, b)
		}
	}
	if ents, _ := os.ReadDir(local); len(ents) != 1 {
		t.Fatalf("left %v", ents)
	}
	if err := run(context.Background(), []string{"get", "-o", dst, addr, "f.txt", dst}, &out, &errOut); !errors.Is(err, cli.ErrUsage) {
		t.Fatalf("LOCAL and -o: %v", err)
	}
}

func TestHelpAndVersion(t *testing.T) {
	testutil.CheckHelp(t, "tftp", run, [][]string{{"-h"}, {"get", "-h"}, {"put", "-help"}})
}
