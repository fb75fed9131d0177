// Package leakcheck lets tests assert that they leave no goroutine and no file
// descriptor behind.
package leakcheck

import (
	"os"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"
)

// Check records the process's goroutines and open descriptors now and, at
// the end of the test, fails it if any new goroutine or descriptor is still
// there after a grace period. Call it first in a test, before anything the
// test starts; tests using it must not run in parallel.
func Check(t testing.TB) {
	t.Helper()
	fds := openFDs()
	gs := goroutines()
	t.Cleanup(func() {
		if t.Failed() {
			return
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			extraG := diff(goroutines(), gs)
			extraFD := diff(openFDs(), fds)
			if len(extraG) == 0 && len(extraFD) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("leaked %d goroutines and %d descriptors:\n%s\nfds: %v", len(extraG), len(extraFD), strings.Join(extraG, "\n\n"), extraFD)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// openFDs lists /proc/self/fd entries with their targets.
func openFDs() []string {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the descriptor ReadDir itself used
		}
		out = append(out, e.Name()+"->"+target)
	}
	return out
}

// goroutines returns the stacks of the goroutines that are not the runtime's
// or the testing package's, keyed by their creation site.
func goroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "testing.tRunner") || strings.Contains(g, "testing.(*T).Run") ||
			strings.Contains(g, "testing.(*M).") || strings.Contains(g, "runtime.goexit") && strings.Count(g, "\n") <= 2 ||
			strings.Contains(g, "signal.signal_recv") || strings.Contains(g, "leakcheck.goroutines") ||
			strings.Contains(g, "testing.runFuzzing") || strings.Contains(g, "runtime/trace") {
			continue
		}
		// Identify a goroutine by its id line removed: "goroutine N [state]:".
		if i := strings.Index(g, "\n"); i >= 0 {
			out = append(out, strings.TrimSpace(g))
		}
	}
	sort.Strings(out)
	return out
}

// diff returns the entries of now whose goroutine id or fd is not in before.
func diff(now, before []string) []string {
	seen := make(map[string]bool, len(before))
	for _, b := range before {
		seen[key(b)] = true
	}
	var extra []string
	for _, n := range now {
		if !seen[key(n)] {
			extra = append(extra, n)
		}
	}
	return extra
}

func key(s string) string {
	if i := strings.Index(s, " ["); i >= 0 && strings.HasPrefix(s, "goroutine ") {
		return s[:i]
	}
	return s
}
