package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

// hpaGet fetches name with tftp-hpa's client and returns what it printed
// (it exits 0 even after an ERROR).
func hpaGet(t *testing.T, addr, name, local string) string {
	t.Helper()
	requireTool(t, "tftp")
	host, port, _ := net.SplitHostPort(addr)
	out, err := runTool(t, "tftp", "-l", "-m", "octet", host, port, "-c", "get", name, local)
	if err != nil {
		t.Fatalf("tftp get %s: %v: %s", name, err, out)
	}
	return out
}

func runTool(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// tftpd -map-file: tftp-hpa's client asks for boot\pxelinux.0 and gets
// boot/pxelinux.0; a rule that maps a name out of the root is refused with
// ERROR 2, though the file it names exists; a rule that does not end
// refuses with ERROR 0, and the server goes on.
func TestMapFile(t *testing.T) {
	leakcheck.Check(t)
	base := t.TempDir()
	root := filepath.Join(base, "root")
	os.MkdirAll(filepath.Join(root, "boot"), 0o755)
	pxe := bytes.Repeat([]byte("pxelinux"), 5000)
	os.WriteFile(filepath.Join(root, "boot", "pxelinux.0"), pxe, 0o644)
	os.WriteFile(filepath.Join(base, "outside"), []byte("secret"), 0o644)
	mapFile := filepath.Join(base, "tftpd.map")
	os.WriteFile(mapFile, []byte(`# Windows clients
rg \\ /
r ^evil$ ../outside     # out of the root
r ^/evil2$ /../outside  # the same, with a leading slash
rs ^spin$ spin          # never ends: bounded
`), 0o644)
	stdout, stderr, stop := start(t, "-root", root, "-listen", "127.0.0.1:0", "-map-file", mapFile)
	addr := addrRE.FindStringSubmatch(stdout.String())[1]
	out := t.TempDir()

	local := filepath.Join(out, "pxelinux.0")
	msg := hpaGet(t, addr, `boot\pxelinux.0`, local)
	if b, err := os.ReadFile(local); err != nil || !bytes.Equal(b, pxe) {
		t.Fatalf("boot\\pxelinux.0: %d bytes, %v (client said %q)", len(b), err, msg)
	}
	for name, code := range map[string]string{"evil": "Error code 2", "/evil2": "Error code 2", "spin": "Error code 0"} {
		local := filepath.Join(out, strings.Trim(name, "/"))
		msg := hpaGet(t, addr, name, local)
		if !strings.Contains(msg, code) {
			t.Errorf("%s: client said %q, want %s", name, msg, code)
		}
		if b, _ := os.ReadFile(local); len(b) != 0 {
			t.Errorf("%s: got %q", name, b)
		}
	}
	// Still serving.
	hpaGet(t, addr, "boot/pxelinux.0", local)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stderr.String(), "remapping file names") || !strings.Contains(stderr.String(), "rules=4") {
		t.Errorf("the start does not say it remaps: %s", stderr)
	}
	// The client sends the backslash as it is: without the map file, the
	// name is refused.
	stdout, _, _ = start(t, "-root", root, "-listen", "127.0.0.1:0")
	addr = addrRE.FindStringSubmatch(stdout.String())[1]
	if msg := hpaGet(t, addr, `boot\pxelinux.0`, local); !strings.Contains(msg, "Error code 2") {
		t.Fatalf("without -map-file: client said %q, want ERROR 2", msg)
	}
}

// A map file that cannot be used stops tftpd at once, with the reason and
// the line.
func TestMapFileHostile(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	for name, c := range map[string]struct {
		content, want string
	}{
		"regexp":  {"rg \\\\ /\nr a( b\n", "line 2: bad regex"},
		"flag":    {"x a b\n", "line 1: unknown flag"},
		"loop":    {"# g on a replacement that matches again\nrg a aa\n", "line 2: g repeats"},
		"empty":   {"rs x* y\n", "line 1: the regex \"x*\" matches the empty name"},
		"huge":    {strings.Repeat("r a b # padding padding padding\n", 4000), "larger than 65536 bytes"},
		"rules":   {strings.Repeat("r a b\n", 1001), "more than 1000 rules"},
		"long":    {"r a " + strings.Repeat("b", 5000) + "\n", "line 1: longer than 4096 bytes"},
		"group":   {"r (a) \\2\n", "names group \\2"},
		"missing": {"", "no such file"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			if name != "missing" {
				os.WriteFile(path, []byte(c.content), 0o644)
			}
			var stdout, stderr bytes.Buffer
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := run(ctx, []string{"-root", dir, "-listen", "127.0.0.1:0", "-map-file", path}, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), "-map-file") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error with %q", err, c.want)
			}
			if strings.Contains(stdout.String(), "serving") {
				t.Fatalf("served with a bad map file: %s", stdout.String())
			}
		})
	}
}
