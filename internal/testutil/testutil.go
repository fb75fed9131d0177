// Package testutil holds the scaffolding the commands' tests share: a
// buffer safe for concurrent use, and running a command's run function in
// the test's process until its output says it is ready.
package testutil

import (
	"bytes"
	"context"
	"io"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/cli"
)

// SyncBuffer is a bytes.Buffer safe for a command's goroutines and the
// test that reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// RunFunc is a command's main body: it runs with args until ctx ends.
type RunFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) error

// Start runs run with args in a goroutine and waits, at most timeout, until
// its stdout matches ready; it returns the submatches, the outputs, and
// stop, which cancels the command and returns its error (also called when
// the test ends). The test fails if the command stops or is not ready in
// time.
func Start(t testing.TB, run RunFunc, ready *regexp.Regexp, timeout time.Duration, args ...string) (match []string, stdout, stderr *SyncBuffer, stop func() error) {
	t.Helper()
	stdout, stderr = &SyncBuffer{}, &SyncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, stdout, stderr) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() { stop() })
	deadline := time.Now().Add(timeout)
	for {
		if m := ready.FindStringSubmatch(stdout.String()); m != nil {
			return m, stdout, stderr, stop
		}
		select {
		case err := <-done:
			done <- err // for stop
			t.Fatalf("%v stopped: %v\n%s", args, err, stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v not ready after %v:\n%s\n%s", args, timeout, stdout, stderr)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// WaitFor polls cond every 10 ms and fails the test if it is not true
// within 15 s; what names the condition in the failure.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// CheckHelp checks a command's habits (package cli): each of helpArgs
// prints a usage to stdout, nothing to stderr, and exits 0; -version prints
// "name " and the module path and exits 0; an unknown flag exits 2 with
// the usage on stderr.
func CheckHelp(t *testing.T, name string, run RunFunc, helpArgs [][]string) {
	t.Helper()
	for _, args := range helpArgs {
		var out, errOut bytes.Buffer
		err := run(context.Background(), args, &out, &errOut)
		if code := cli.ExitCode(name, err, &errOut); code != 0 || !strings.Contains(strings.ToLower(out.String()), "usage") || errOut.Len() != 0 {
			t.Errorf("%s %q: exit %d, stdout %q, stderr %q", name, args, code, out.String(), errOut.String())
		}
	}
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"-version"}, &out, &errOut)
	if code := cli.ExitCode(name, err, &errOut); code != 0 || !strings.HasPrefix(out.String(), name+" github.com/ioactor/ioactor ") {
		t.Errorf("%s -version: exit %d, %q", name, code, out.String())
	}
	out.Reset()
	errOut.Reset()
	bad := append(append([]string(nil), helpArgs[len(helpArgs)-1][:len(helpArgs[len(helpArgs)-1])-1]...), "-no-such-flag")
	err = run(context.Background(), bad, &out, &errOut)
	if code := cli.ExitCode(name, err, &errOut); code != 2 || !strings.Contains(strings.ToLower(errOut.String()), "usage") {
		t.Errorf("%s %q: exit %d, stderr %q", name, bad, code, errOut.String())
	}
}
