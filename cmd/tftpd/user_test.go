package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

const userChildEnv = "IOACTOR_TFTPD_CHILD_ARGS"

// TestUserDropsPrivileges runs `tftpd -user nobody` as root on a privileged
// port, in a child process (the drop is for the whole process): once it
// serves, every thread of it runs as nobody, and downloads and uploads
// work.
func TestUserDropsPrivileges(t *testing.T) {
	leakcheck.Check(t)
	if os.Geteuid() != 0 {
		t.Fatal("this test runs tftpd as root on a privileged port and drops to nobody: run it as root (CI does)")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("no user nobody: %v", err)
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl is not installed (apt-get install curl): %v", err)
	}
	base := t.TempDir()
	root := filepath.Join(base, "root")
	os.Mkdir(root, 0o777)
	// nobody must reach the root, read the files and write uploads.
	for d := root; d != "/"; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o005 != 0o005 {
			os.Chmod(d, fi.Mode().Perm()|0o755)
		}
	}
	os.Chmod(root, 0o777)
	content := bytes.Repeat([]byte("nobody may read this\n"), 5000)
	os.WriteFile(filepath.Join(root, "f.bin"), content, 0o644)

	addr := freePrivilegedPort(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestUserChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), userChildEnv+"="+strings.Join([]string{
		"-root", root, "-listen", addr, "-allow-write", "-user", "nobody",
	}, "\x1f"))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		var seen []string
		for sc.Scan() {
			seen = append(seen, sc.Text())
			if strings.Contains(sc.Text(), "running as user nobody") {
				ready <- strings.Join(seen, "\n")
			}
		}
		close(ready)
	}()
	select {
	case out, ok := <-ready:
		if !ok {
			cmd.Wait()
			t.Fatalf("tftpd -user nobody did not start: %s", stderr.String())
		}
		t.Logf("child: %s", out)
	case <-time.After(60 * time.Second):
		t.Fatalf("tftpd -user nobody did not start in 60 s: %s", stderr.String())
	}

	// Every thread's real, effective, saved and file-system ids are nobody's.
	pid := cmd.Process.Pid
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("no threads of %d: %v", pid, err)
	}
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // the thread exited
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f, ok := strings.CutPrefix(l, "Uid:"); ok {
				if got := strings.Fields(f); len(got) != 4 || got[0] != nobody.Uid || got[1] != nobody.Uid || got[2] != nobody.Uid || got[3] != nobody.Uid {
					t.Fatalf("%s: Uid %v, want %s everywhere", p, got, nobody.Uid)
				}
			}
			if f, ok := strings.CutPrefix(l, "Gid:"); ok {
				if got := strings.Fields(f); len(got) != 4 || got[0] != nobody.Gid || got[1] != nobody.Gid {
					t.Fatalf("%s: Gid %v, want %s", p, got, nobody.Gid)
				}
			}
			if f, ok := strings.CutPrefix(l, "Groups:"); ok && strings.TrimSpace(f) != nobody.Gid {
				t.Fatalf("%s: supplementary groups %q, want %s", p, f, nobody.Gid)
			}
		}
	}
	t.Logf("%d threads of tftpd (pid %d) all run as uid %s", len(tasks), pid, nobody.Uid)

	out := filepath.Join(base, "out")
	if b, err := exec.Command(curl, "-sS", "--max-time", "30", "-o", out, "tftp://"+addr+"/f.bin").CombinedOutput(); err != nil {
		t.Fatalf("curl get: %v: %s", err, b)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, content) {
		t.Fatal("download differs")
	}
	if b, err := exec.Command(curl, "-sS", "--max-time", "30", "-T", out, "tftp://"+addr+"/up.bin").CombinedOutput(); err != nil {
		t.Fatalf("curl put: %v: %s", err, b)
	}
	fi, err := os.Stat(filepath.Join(root, "up.bin"))
	if err != nil {
		t.Fatalf("upload: %v; tftpd said: %s", err, stderr.String())
	}
	if st := fi.Sys().(*syscall.Stat_t); fmt.Sprint(st.Uid) != nobody.Uid {
		t.Fatalf("upload owned by uid %d, want nobody's %s", st.Uid, nobody.Uid)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "up.bin")); !bytes.Equal(got, content) {
		t.Fatal("upload differs")
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tftpd: %v: %s", err, stderr.String())
	}
}

// freePrivilegedPort returns a loopback address on a free port below 1024.
func freePrivilegedPort(t *testing.T) string {
	t.Helper()
	for p := 969; p > 600; p-- {
		a := fmt.Sprintf("127.0.0.1:%d", p)
		c, err := net.ListenPacket("udp4", a)
		if err == nil {
			c.Close()
			return a
		}
	}
	t.Fatal("no free privileged UDP port on 127.0.0.1")
	return ""
}

// TestUserChild is the tftpd process of TestUserDropsPrivileges; it does
// nothing in a normal run.
func TestUserChild(t *testing.T) {
	args := os.Getenv(userChildEnv)
	if args == "" {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := run(ctx, strings.Split(args, "\x1f"), os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "tftpd:", err)
		os.Exit(2)
	}
}
