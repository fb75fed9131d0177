package tftp

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

// The tests in this file drive the real clients Debian users have: tftp-hpa
// (tftp), atftp and curl. CI installs them; a missing one fails the test.

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: these tests need the real clients (apt-get install tftp-hpa atftp curl): %v", name, err)
	}
	return p
}

// peerEnv is a server with a root full of test files, and a directory for
// what the clients fetch.
type peerEnv struct {
	srv    *Server
	root   string
	out    string
	hashes map[string]string
	port   string
}

const size40M = 40 << 20

var peerSizes = []int64{0, 511, 512, 513, 1 << 20, size40M}

func newPeerEnv(t *testing.T) *peerEnv {
	t.Helper()
	base := t.TempDir()
	e := &peerEnv{root: filepath.Join(base, "root"), out: filepath.Join(base, "out"), hashes: map[string]string{}}
	os.MkdirAll(e.out, 0o755)
	os.MkdirAll(filepath.Join(e.root, "up"), 0o755)
	for _, size := range peerSizes {
		name := fmt.Sprintf("f%d", size)
		e.hashes[name] = writePattern(t, e.root, name, size)
	}
	writeFile(t, e.root, "text.txt", []byte(netasciiSample))
	e.srv = startServer(t, ServerConfig{Root: e.root, AllowWrite: true, MaxWindowSize: 64})
	e.port = fmt.Sprint(e.srv.Addr().Port())
	return e
}

// netasciiSample has LF line ends, a CR LF, a bare CR, and ends in a CR.
var netasciiSample = strings.Repeat("first line\nsecond\r\nbare\rcr\n\n", 200) + "tail\r"

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// runStdin runs a command with input on its stdin.
func runStdin(t *testing.T, stdin, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (e *peerEnv) checkFile(t *testing.T, path, name, out string) {
	t.Helper()
	if got := fileSHA(t, path); got != e.hashes[name] {
		t.Fatalf("%s: content differs (client said %q)", name, out)
	}
}

// checkUpload checks that the file uploaded under up/name equals the local
// one, and that no temporary file is left.
func (e *peerEnv) checkUpload(t *testing.T, local, name, out string) {
	t.Helper()
	remote := filepath.Join(e.root, "up", name)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(remote); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if fileSHA(t, remote) != fileSHA(t, local) {
		t.Fatalf("upload %s differs (client said %q)", name, out)
	}
}

func TestPeerTFTPHPA(t *testing.T) {
	tftp := requireTool(t, "tftp")
	leakcheck.Check(t)
	e := newPeerEnv(t)
	t.Run("group", func(t *testing.T) {
		for _, size := range peerSizes {
			name := fmt.Sprintf("f%d", size)
			t.Run("get-"+name, func(t *testing.T) {
				t.Parallel()
				local := filepath.Join(e.out, "hpa-"+name)
				out, err := run(t, tftp, "-l", "-m", "octet", "127.0.0.1", e.port, "-c", "get", name, local)
				if err != nil || strings.Contains(out, "Error") {
					t.Fatalf("%v: %s", err, out)
				}
				e.checkFile(t, local, name, out)
			})
		}
		for _, size := range []int64{0, 1 << 20, size40M} {
			name := fmt.Sprintf("f%d", size)
			t.Run("put-"+name, func(t *testing.T) {
				t.Parallel()
				local := filepath.Join(e.root, name)
				out, err := run(t, tftp, "-l", "-m", "octet", "127.0.0.1", e.port, "-c", "put", local, "up/hpa-"+name)
				if err != nil || strings.Contains(out, "Error") {
					t.Fatalf("%v: %s", err, out)
				}
				e.checkUpload(t, local, "hpa-"+name, out)
			})
		}
		t.Run("netascii", func(t *testing.T) {
			t.Parallel()
			// tftp-hpa's default mode is netascii: get converts CR LF back
			// to LF, put converts again; the round trip is exact.
			local := filepath.Join(e.out, "hpa-text.txt")
			out, err := run(t, tftp, "-l", "127.0.0.1", e.port, "-c", "get", "text.txt", local)
			if b, _ := os.ReadFile(local); err != nil || string(b) != netasciiSample {
				t.Fatalf("get: %v %s: %q", err, out, b[:min(len(b), 40)])
			}
			out, err = run(t, tftp, "-l", "127.0.0.1", e.port, "-c", "put", local, "up/hpa-text.txt")
			if err != nil || strings.Contains(out, "Error") {
				t.Fatalf("put: %v %s", err, out)
			}
			e.checkUpload(t, local, "hpa-text.txt", out)
		})
		t.Run("errors", func(t *testing.T) {
			t.Parallel()
			local := filepath.Join(e.out, "hpa-missing")
			out, _ := run(t, tftp, "-l", "-m", "octet", "127.0.0.1", e.port, "-c", "get", "missing", local)
			if !strings.Contains(out, "Error code 1") {
				t.Fatalf("missing file: %q", out)
			}
			out, _ = run(t, tftp, "-l", "-m", "octet", "127.0.0.1", e.port, "-c", "get", "../../etc/passwd", local)
			if !strings.Contains(out, "Error code 2") {
				t.Fatalf("traversal: %q", out)
			}
		})
	})
}

func TestPeerAtftp(t *testing.T) {
	atftp := requireTool(t, "atftp")
	leakcheck.Check(t)
	e := newPeerEnv(t)
	opt := func(kv ...string) []string {
		var a []string
		for _, o := range kv {
			a = append(a, "--option", o)
		}
		return a
	}
	t.Run("group", func(t *testing.T) {
		for _, size := range peerSizes {
			name := fmt.Sprintf("f%d", size)
			t.Run("get-"+name, func(t *testing.T) {
				t.Parallel()
				local := filepath.Join(e.out, "atftp-"+name)
				out, err := run(t, atftp, "-g", "-r", name, "-l", local, "127.0.0.1", e.port)
				if err != nil {
					t.Fatalf("%v: %s", err, out)
				}
				e.checkFile(t, local, name, out)
			})
		}
		options := map[string][]string{
			"blksize":    opt("blksize 1428"),
			"blksize8":   opt("blksize 8"),
			"tsize":      opt("tsize 0"),
			"timeout":    opt("timeout 2"),
			"windowsize": opt("windowsize 8"),
			"all":        opt("blksize 1428", "tsize 0", "timeout 3", "windowsize 16"),
		}
		for oname, args := range options {
			for _, size := range []int64{0, 513, 1 << 20} {
				name := fmt.Sprintf("f%d", size)
				if oname == "blksize8" && size > 513 {
					continue
				}
				t.Run(oname+"-"+name, func(t *testing.T) {
					t.Parallel()
					local := filepath.Join(e.out, "atftp-"+oname+"-"+name)
					a := append(append([]string{}, args...), "--trace", "-g", "-r", name, "-l", local, "127.0.0.1", e.port)
					out, err := run(t, atftp, a...)
					if err != nil {
						t.Fatalf("%v: %s", err, out)
					}
					e.checkFile(t, local, name, out)
					// The OACK acknowledged every option (atftp prints what it
					// got in its trace).
					if !strings.Contains(out, "OACK") {
						t.Fatalf("no OACK in the trace: %s", out[:min(len(out), 500)])
					}
				})
			}
		}
		t.Run("windowsize-40M", func(t *testing.T) {
			t.Parallel()
			name := fmt.Sprintf("f%d", size40M)
			local := filepath.Join(e.out, "atftp-w-"+name)
			out, err := run(t, atftp, append(opt("blksize 1428", "windowsize 16", "tsize 0"), "-g", "-r", name, "-l", local, "127.0.0.1", e.port)...)
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			e.checkFile(t, local, name, out)
		})
		for _, size := range []int64{0, 1 << 20, size40M} {
			name := fmt.Sprintf("f%d", size)
			t.Run("put-"+name, func(t *testing.T) {
				t.Parallel()
				local := filepath.Join(e.root, name)
				var args []string
				if size == size40M {
					args = opt("blksize 8192", "tsize 0")
				}
				args = append(args, "-p", "-l", local, "-r", "up/atftp-"+name, "127.0.0.1", e.port)
				out, err := run(t, atftp, args...)
				if err != nil {
					t.Fatalf("%v: %s", err, out)
				}
				e.checkUpload(t, local, "atftp-"+name, out)
			})
		}
		t.Run("netascii", func(t *testing.T) {
			t.Parallel()
			// atftp converts only in interactive mode.
			local := filepath.Join(e.out, "atftp-text.txt")
			script := fmt.Sprintf("mode netascii\nget text.txt %s\nput %s up/atftp-text.txt\nquit\n", local, local)
			out, err := runStdin(t, script, atftp, "127.0.0.1", e.port)
			if b, _ := os.ReadFile(local); err != nil || string(b) != netasciiSample {
				t.Fatalf("get: %v %s: %q", err, out, b[:min(len(b), 40)])
			}
			e.checkUpload(t, local, "atftp-text.txt", out)
		})
		t.Run("missing", func(t *testing.T) {
			t.Parallel()
			out, err := run(t, atftp, "-g", "-r", "missing", "-l", filepath.Join(e.out, "atftp-missing"), "127.0.0.1", e.port)
			if err == nil || !strings.Contains(strings.ToLower(out), "not found") {
				t.Fatalf("missing file: %v %q", err, out)
			}
		})
	})
}

func TestPeerCurl(t *testing.T) {
	curl := requireTool(t, "curl")
	leakcheck.Check(t)
	e := newPeerEnv(t)
	url := func(name string) string { return "tftp://127.0.0.1:" + e.port + "/" + name }
	t.Run("group", func(t *testing.T) {
		for _, size := range peerSizes {
			name := fmt.Sprintf("f%d", size)
			for _, blk := range []string{"", "1428"} {
				if blk != "" && size == size40M {
					continue
				}
				t.Run("get-"+name+"-"+blk, func(t *testing.T) {
					t.Parallel()
					local := filepath.Join(e.out, "curl-"+name+"-"+blk)
					args := []string{"-sS", "-o", local}
					if blk != "" {
						args = append(args, "--tftp-blksize", blk)
					}
					if size == 0 {
						// curl refuses an OACK with tsize 0, which is what an
						// empty file gets: fetch it without options.
						args = append(args, "--tftp-no-options")
					}
					out, err := run(t, curl, append(args, url(name))...)
					if err != nil {
						t.Fatalf("%v: %s", err, out)
					}
					e.checkFile(t, local, name, out)
				})
			}
		}
		for _, size := range []int64{0, 1 << 20, size40M} {
			name := fmt.Sprintf("f%d", size)
			t.Run("put-"+name, func(t *testing.T) {
				t.Parallel()
				local := filepath.Join(e.root, name)
				args := []string{"-sS", "-T", local}
				if size == size40M {
					args = append(args, "--tftp-blksize", "8192")
				}
				out, err := run(t, curl, append(args, url("up/curl-"+name))...)
				if err != nil {
					t.Fatalf("%v: %s", err, out)
				}
				e.checkUpload(t, local, "curl-"+name, out)
			})
		}
		t.Run("missing", func(t *testing.T) {
			t.Parallel()
			out, err := run(t, curl, "-sS", "-o", filepath.Join(e.out, "curl-missing"), url("missing"))
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 68 {
				t.Fatalf("missing file: %v %q", err, out)
			}
		})
		t.Run("traversal", func(t *testing.T) {
			t.Parallel()
			// --path-as-is keeps curl from resolving the dots itself.
			out, err := run(t, curl, "-sS", "--path-as-is", "-o", filepath.Join(e.out, "curl-trav"), url("../../../etc/passwd"))
			if err == nil {
				t.Fatalf("traversal succeeded: %q", out)
			}
			b, _ := os.ReadFile(filepath.Join(e.out, "curl-trav"))
			if bytes.Contains(b, []byte("root:")) {
				t.Fatal("traversal read /etc/passwd")
			}
		})
	})
}
