package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
)

// start runs raftkv with args until stop, and waits until its stdout
// matches ready; it returns the submatches.
func start(t *testing.T, ready *regexp.Regexp, args ...string) (match []string, stdout *testutil.SyncBuffer, stop func() error) {
	t.Helper()
	match, stdout, _, stop = testutil.Start(t, run, ready, 20*time.Second, args...)
	return match, stdout, stop
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-version"}, &out, io.Discard); err != nil || !strings.HasPrefix(out.String(), "raftkv ") {
		t.Fatalf("-version: %q, %v", out.String(), err)
	}
	if err := run(context.Background(), []string{"bogus"}, io.Discard, io.Discard); err == nil {
		t.Fatal("an unknown command did not fail")
	}
	if err := run(context.Background(), []string{"load", "-nodes", ""}, io.Discard, io.Discard); err == nil {
		t.Fatal("load without nodes did not fail")
	}
}

var nodesRE = regexp.MustCompile(`nodes: (\S+)\n`)

// TestClusterAndLoad runs `raftkv cluster`, a short `raftkv load`
// against it, reads a node's metrics, and stops the cluster.
func TestClusterAndLoad(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	m, _, stop := start(t, nodesRE, "cluster", "-n", "3", "-data", dir, "-heartbeat", "300ms")
	addrs := strings.Split(m[1], ",")
	if len(addrs) != 3 {
		t.Fatalf("nodes %q", m[1])
	}
	var out testutil.SyncBuffer
	err := run(context.Background(), []string{"load", "-nodes", m[1], "-users", "8", "-ramp", "500ms",
		"-duration", "2s", "-keys", "20", "-progress", "off"}, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("load:\n%s", out.String())
	for _, want := range []string{"| time | users | ops/s |", "| **total** | 8 |", "failures: none"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("load output lacks %q", want)
		}
	}

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("http://" + addrs[0] + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`ioactor_raftkv_requests_total{op="put",result=`, `ioactor_raftkv_raft_state{state="Leader"}`,
		"ioactor_raft_transport_rpc_duration_seconds", "go_goroutines"} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("cluster stop: %v", err)
	}

	// A restart finds the same nodes (same ports) and their data.
	m2, _, stop2 := start(t, nodesRE, "cluster", "-n", "3", "-data", dir, "-heartbeat", "300ms")
	if m2[1] != m[1] {
		t.Errorf("restarted cluster on %s, was %s", m2[1], m[1])
	}
	if err := stop2(); err != nil {
		t.Fatalf("cluster stop: %v", err)
	}
}

var nodeRE = regexp.MustCompile(`http (\S+) raft (\S+)`)

// TestNodeJoin runs two `raftkv node` processes' worth of run: the
// second joins the first; a write through either is read through the
// other; both stop on cancellation.
func TestNodeJoin(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	a, _, stopA := start(t, nodeRE, "node", "-id", "a", "-data", dir+"/a", "-raft", "127.0.0.1:0", "-http", "127.0.0.1:0", "-heartbeat", "300ms")
	b, _, stopB := start(t, nodeRE, "node", "-id", "b", "-data", dir+"/b", "-raft", "127.0.0.1:0", "-http", "127.0.0.1:0", "-heartbeat", "300ms", "-join", a[1])
	c := &testCluster{t: t, tr: &http.Transport{}}
	c.client = &http.Client{Transport: c.tr}
	defer c.tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// b learns a's HTTP address from the replicated member list: retry
	// until it has.
	for {
		_, err := c.put(ctx, b[1], "x", "1")
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if v, err := c.get(ctx, a[1], "x", ""); err != nil || v != "1" {
		t.Fatalf("GET x via a: %q, %v", v, err)
	}
	// b (a follower) stops first: its handover is a no-op.
	if err := stopB(); err != nil {
		t.Fatal(err)
	}
	if err := stopA(); err != nil {
		t.Fatal(err)
	}
}

func TestHelpAndVersion(t *testing.T) {
	testutil.CheckHelp(t, "raftkv", run, [][]string{{"-h"}, {"node", "-h"}, {"cluster", "-h"}, {"load", "-h"}})
}
