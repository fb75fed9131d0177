package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/tftp"
)

// TestHelpListsLimits: every limit of issue 16 is a flag in tftpd -h, with
// its default.
func TestHelpListsLimits(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, &out, &errOut); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-h: %v", err)
	}
	help := out.String() // -h prints the usage to stdout (package cli)
	for flagName, def := range map[string]string{
		"max-timeout-option":   "10s",
		"silence-limit":        "30s",
		"first-retries":        "1",
		"max-client-transfers": "32",
		"client-rate":          "20",
		"client-burst":         "40",
		"client-prefix4":       "32",
		"client-prefix6":       "64",
		"error-rate":           "200",
		"log-repeat":           "100",
		"log-interval":         "10s",
		"max-transfers":        "4096",
		"transfer-deadline":    "1h0m0s",
		"retries":              "5",
	} {
		re := regexp.MustCompile(`(?m)^  -` + flagName + ` .*\n(    .*\n)*?    .*\(default ` + regexp.QuoteMeta(def) + `\)`)
		if !re.MatchString(help) {
			t.Errorf("-h does not list -%s with its default %s", flagName, def)
		}
	}
	if !strings.Contains(help, "  -user string") {
		t.Error("-h does not list -user")
	}
	if err := run(context.Background(), []string{"-cluster", "-data", t.TempDir(), "-user", "nobody"}, &out, &errOut); err == nil || !strings.Contains(err.Error(), "-user") {
		t.Errorf("-user with -cluster: %v", err)
	}
	if err := run(context.Background(), []string{"-client-prefix4", "33"}, &out, &errOut); err == nil {
		t.Error("-client-prefix4 33: no error")
	}
}

// TestClientLimitFlag: -max-client-transfers reaches the server, and the
// refusal is an ERROR that says why.
func TestClientLimitFlag(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	writeTestFile(t, dir, "a", 1<<20)
	stdout, _, stop := start(t, "-root", dir, "-listen", "127.0.0.1:0", "-max-client-transfers", "1", "-log-repeat", "5")
	defer stop()
	addr := netip.MustParseAddrPort(addrRE.FindStringSubmatch(stdout.String())[1])
	// One transfer that never ends by itself (an upload with no DATA),
	// then a second request from the same address.
	a, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.6:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	buf := make([]byte, 1024)
	for i, name := range []string{"a", "b"} {
		a2 := a
		if i == 1 {
			if a2, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.6:0"))); err != nil {
				t.Fatal(err)
			}
			defer a2.Close()
		}
		a2.WriteToUDPAddrPort(tftp.AppendRequest(nil, tftp.Request{Op: tftp.OpRRQ, Filename: name, Mode: tftp.ModeOctet}), addr)
		a2.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, _, err := a2.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		code, msg, perr := tftp.ParseError(buf[:n])
		if i == 0 && perr == nil && code == tftp.ErrFileNotFound {
			// Not found ends the transfer at once: make one that lasts.
			t.Fatal("want a file that exists")
		}
		if i == 1 && (perr != nil || !strings.Contains(msg, "your address")) {
			t.Fatalf("second request: %q, want a refusal for the address", buf[:n])
		}
		if i == 0 && perr == nil {
			t.Fatalf("first request refused: %q", msg)
		}
	}
}

func writeTestFile(t *testing.T, dir, name string, size int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), bytes.Repeat([]byte{'x'}, size), 0o644); err != nil {
		t.Fatal(err)
	}
}
