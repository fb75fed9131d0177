package tcp_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

const emfileChildEnv = "IOACTOR_TCP_EMFILE_CHILD"

// TestAcceptAtDescriptorLimit runs a listener in a child process whose
// descriptors are all taken (RLIMIT_NOFILE), makes 300 connection attempts,
// and checks that the listener keeps one retry chain with back-off (a few
// log lines, not one chain per readiness event), and accepts again once
// descriptors are free.
func TestAcceptAtDescriptorLimit(t *testing.T) {
	if os.Getenv(emfileChildEnv) != "" {
		emfileChild(t)
		return
	}
	leakcheck.Check(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestAcceptAtDescriptorLimit$", "-test.count=1")
	cmd.Env = append(os.Environ(), emfileChildEnv+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	}()
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	next := func(prefix string) string {
		t.Helper()
		deadline := time.After(60 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("child exited before %q; stderr:\n%s", prefix, tail(stderr.String()))
				}
				if rest, found := strings.CutPrefix(l, prefix); found {
					return strings.TrimSpace(rest)
				}
			case <-deadline:
				t.Fatalf("no %q from the child", prefix)
			}
		}
	}
	addr := next("ADDR ")
	next("FULL")

	// 300 connection attempts while the child has no descriptor to spare:
	// the kernel completes them into the backlog, accept fails.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 300 {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	time.Sleep(3 * time.Second) // at the limit: the retries back off to 1 s
	if _, err := fmt.Fprintln(stdin, "FREE"); err != nil {
		t.Fatal(err)
	}
	accepted := next("ACCEPTED ")
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child: %v; stderr:\n%s", err, tail(stderr.String()))
	}
	failed := strings.Count(stderr.String(), "tcp: accept failed")
	t.Logf("300 connection attempts at the descriptor limit: %d log lines of failed accepts; %s accepted after descriptors were freed", failed, accepted)
	if failed == 0 {
		t.Fatalf("the child never hit the descriptor limit; stderr:\n%s", tail(stderr.String()))
	}
	// One chain, 5 ms doubling to 1 s, logged at each doubling and every
	// tenth failure after: about 10 lines in the 3 s; many chains log
	// thousands.
	if failed > 30 {
		t.Fatalf("%d log lines of failed accepts in ~3 s: more than one retry chain", failed)
	}
	if !strings.Contains(stderr.String(), "tcp: accepting again") {
		t.Errorf("no recovery logged; stderr:\n%s", tail(stderr.String()))
	}
}

func tail(s string) string {
	if len(s) > 4000 {
		return "…" + s[len(s)-4000:]
	}
	return s
}

// emfileChild is the child of TestAcceptAtDescriptorLimit.
func emfileChild(t *testing.T) {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	sys, err := netio.NewSystem(netio.Config{Loops: 2, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sys.Shutdown(ctx)
	}()
	p := newProbe(sys)
	b := bind(t, sys, p, tcp.Bind{RegisterTimeout: 100 * time.Millisecond})
	fmt.Println("ADDR", b.LocalAddr)

	// Take every descriptor under a low limit.
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	low := rl
	low.Cur = 512
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	var fill []int
	for {
		fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			break
		}
		fill = append(fill, fd)
	}
	fmt.Println("FULL", len(fill))

	sc := bufio.NewScanner(os.Stdin)
	if !sc.Scan() || sc.Text() != "FREE" {
		t.Fatal("no FREE from the parent")
	}
	for _, fd := range fill {
		syscall.Close(fd)
	}
	syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
	n := 0
	deadline := time.After(30 * time.Second)
	for n < 30 {
		select {
		case m := <-p.ch:
			if _, ok := m.(tcp.Connected); ok {
				n++
			}
		case <-deadline:
			t.Fatalf("only %d connections accepted after the descriptors were freed", n)
		}
	}
	fmt.Println("ACCEPTED", n)
}
