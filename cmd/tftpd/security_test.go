package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestClusterRefusesInsecure: tftpd -cluster without -cluster-tls and
// without -cluster-insecure exits non-zero naming both ways out; with
// -cluster-tls pointing at a world-readable key it refuses too; with
// -cluster-insecure it warns.
func TestClusterRefusesInsecure(t *testing.T) {
	bin := buildTftpd(t)
	dir := t.TempDir()
	runTftpd := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		return string(out), err
	}
	base := []string{"-cluster", "-node-id", "n1", "-data", filepath.Join(dir, "data"), "-raft", freeTCP(t), "-cluster-http", freeTCP(t), "-listen", freeUDP(t)}
	out, err := runTftpd(base...)
	if err == nil || !strings.Contains(out, "-cluster-tls DIR") || !strings.Contains(out, "-cluster-insecure") {
		t.Fatalf("without TLS: %v\n%s", err, out)
	}
	t.Logf("without TLS: %s", out)

	ca, certs := filepath.Join(dir, "ca"), filepath.Join(dir, "n1")
	if out, err := runTftpd("cert", "ca", "-dir", ca); err != nil {
		t.Fatalf("cert ca: %v\n%s", err, out)
	}
	if out, err := runTftpd("cert", "node", "-ca", ca, "-node-id", "n1", "-host", "127.0.0.1", "-dir", certs); err != nil {
		t.Fatalf("cert node: %v\n%s", err, out)
	}
	for _, f := range []string{filepath.Join(ca, "ca.key"), filepath.Join(certs, "node.key")} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, %v; want 0600", f, fi.Mode(), err)
		}
	}
	if out, err := runTftpd("cert", "node", "-ca", ca, "-node-id", "n1", "-host", "127.0.0.1", "-dir", certs); err == nil || !strings.Contains(out, "exists") {
		t.Fatalf("cert node over an existing one: %v\n%s", err, out)
	}
	os.Chmod(filepath.Join(certs, "node.key"), 0o644)
	out, err = runTftpd(append(base, "-cluster-tls", certs)...)
	if err == nil || !strings.Contains(out, "readable by others") || !strings.Contains(out, "0644") {
		t.Fatalf("world-readable key: %v\n%s", err, out)
	}
	t.Logf("world-readable key: %s", out)
	os.Chmod(filepath.Join(certs, "node.key"), 0o600)
	out, err = runTftpd(append(base, "-cluster-tls", certs, "-node-id", "n2")...)
	if err == nil || !strings.Contains(out, `node "n1"`) {
		t.Fatalf("-node-id other than the certificate's: %v\n%s", err, out)
	}
}

// TestClusterInsecureWarns: -cluster-insecure starts, with a warning.
func TestClusterInsecureWarns(t *testing.T) {
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // stop at once: the warning comes before raft starts
	dir := t.TempDir()
	run(ctx, []string{"-cluster", "-cluster-insecure", "-node-id", "n1", "-data", filepath.Join(dir, "data"), "-raft", "127.0.0.1:0", "-cluster-http", "127.0.0.1:0", "-listen", "127.0.0.1:0", "-root", dir}, &stdout, &stderr)
	if !strings.Contains(stderr.String(), "-cluster-insecure: no TLS") {
		t.Fatalf("no warning:\n%s", stderr.String())
	}
}
