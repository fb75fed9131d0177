package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const unitPath = "../../contrib/systemd/tftpd.service"

// TestSystemdUnit checks contrib/systemd/tftpd.service with
// systemd-analyze verify (Debian package systemd; the test fails without
// it), which must have nothing to say, and checks that its ExecStart
// flags parse and that it runs unprivileged with the hardening in place.
func TestSystemdUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze is not installed: this test needs it (apt-get install systemd): %v", err)
	}
	unit, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"User=tftp", "AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
		"NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/srv/tftp", "PrivateTmp=yes",
	} {
		if !strings.Contains(string(unit), "\n"+want+"\n") {
			t.Errorf("the unit lacks %q", want)
		}
	}
	var execStart []string
	for _, l := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
			execStart = strings.Fields(v)
		}
	}
	if len(execStart) < 2 || execStart[0] != "/usr/local/bin/tftpd" {
		t.Fatalf("ExecStart %q: want /usr/local/bin/tftpd and flags", execStart)
	}
	if _, err := parse(execStart[1:], io.Discard, io.Discard); err != nil {
		t.Fatalf("the unit's flags: %v", err)
	}

	// verify wants the binary to exist: point ExecStart at this test's.
	verify := func(text string) string {
		t.Helper()
		dir := t.TempDir()
		p := filepath.Join(dir, "tftpd.service")
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(analyze, "verify", "--man=no", p).CombinedOutput()
		if err != nil {
			return string(out) + err.Error()
		}
		return string(out)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if out := verify(strings.Replace(string(unit), "ExecStart=/usr/local/bin/tftpd", "ExecStart="+self, 1)); out != "" {
		t.Fatalf("systemd-analyze verify: %s", out)
	}
	// The check sees mistakes: a misspelt directive is reported.
	if out := verify(strings.Replace(strings.Replace(string(unit), "ExecStart=/usr/local/bin/tftpd", "ExecStart="+self, 1), "ProtectSystem=strict", "ProtectSystem=strcit", 1)); !strings.Contains(out, "protect system") {
		t.Fatalf("systemd-analyze verify did not report a bad value: %q", out)
	}
}
