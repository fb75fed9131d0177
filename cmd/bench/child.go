package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/ioactor/ioactor/bench"
)

// childEnv marks a re-executed server process; a test binary, which cannot
// take "serve" as its first argument, looks for it in TestMain.
const childEnv = "IOACTOR_BENCH_SERVE=1"

// child is a server process started by the comparison.
type child struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	addr string
	done chan error // Wait's result
}

func startChild(ctx context.Context, impl bench.Impl, opts serverOpts, stderr io.Writer) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	if impl == baseImpl {
		exe, impl = opts.base, bench.IoactorAck
	}
	args := []string{"serve", "-impl", string(impl), "-listen", "127.0.0.1:0",
		"-loops", fmt.Sprint(opts.loops), "-netbuf", fmt.Sprint(opts.netBuf)}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), childEnv)
	cmd.Stderr = stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, in: in, out: bufio.NewReader(outPipe), done: make(chan error, 1)}
	go func() { c.done <- cmd.Wait() }()
	line := make(chan string, 1)
	go func() {
		s, _ := c.out.ReadString('\n')
		line <- s
	}()
	select {
	case s := <-line:
		addr, ok := strings.CutPrefix(strings.TrimSpace(s), "listening ")
		if !ok {
			return nil, errors.Join(fmt.Errorf("%s server: did not start (said %q)", impl, s), c.stop())
		}
		c.addr = addr
	case <-time.After(15 * time.Second):
		return nil, errors.Join(fmt.Errorf("%s server: no address in 15 s", impl), c.stop())
	case <-ctx.Done():
		return nil, errors.Join(ctx.Err(), c.stop())
	}
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// call sends one command and returns its one-line answer.
func (c *child) call(cmd string) (string, error) {
	if _, err := fmt.Fprintln(c.in, cmd); err != nil {
		return "", err
	}
	s, err := c.out.ReadString('\n')
	if err != nil {
		return "", err
	}
	s = strings.TrimSpace(s)
	if msg, ok := strings.CutPrefix(s, "error: "); ok {
		return "", fmt.Errorf("server: %s: %s", cmd, msg)
	}
	return s, nil
}

func (c *child) stats() (runtimeStats, error) {
	var st runtimeStats
	s, err := c.call("stats")
	if err == nil {
		err = json.Unmarshal([]byte(s), &st)
	}
	return st, err
}

// stop closes the server's standard input, which makes it shut down, and
// waits for it; it kills the process (by its own PID) if it does not exit in
// time.
func (c *child) stop() error {
	c.in.Close()
	select {
	case err := <-c.done:
		return err
	case <-time.After(20 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
		return fmt.Errorf("server %d did not exit in 20 s; killed", c.pid())
	}
}
