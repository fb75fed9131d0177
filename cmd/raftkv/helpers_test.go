package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// testLogger discards logs unless RAFTKV_TEST_LOG is set (then they go to
// stderr: a goroutine that logs after its test ended must not panic).
func testLogger() *slog.Logger {
	if os.Getenv("RAFTKV_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testCluster is a cluster of in-process nodes on loopback, with bbolt
// stores in the test's temporary directory. A node is killed by closing
// it and restarted from its directory on the same addresses.
type testCluster struct {
	t      testing.TB
	mu     sync.Mutex
	cfgs   map[string]Config
	nodes  map[string]*Node // nil while killed
	ids    []string
	tr     *http.Transport
	client *http.Client
}

func testConfig(t testing.TB, id string) Config {
	return Config{
		ID:                id,
		DataDir:           filepath.Join(t.TempDir(), id),
		RaftAddr:          "127.0.0.1:0",
		HTTPAddr:          "127.0.0.1:0",
		Logger:            testLogger(),
		HeartbeatTimeout:  300 * time.Millisecond,
		SnapshotThreshold: 256, // exercise snapshots and log compaction
		RequestTimeout:    2 * time.Second,
		RaftTimeout:       time.Second,
		// A registry per node, kept across restarts: the node and its
		// transport must unregister when they close.
		Registry: prometheus.NewRegistry(),
	}
}

// newTestCluster starts n nodes: the first bootstraps, the others join
// through it, and waits until every node's address is replicated. Each
// node's Config goes through the options.
func newTestCluster(t testing.TB, n int, options ...func(*Config)) *testCluster {
	t.Helper()
	c := &testCluster{t: t, cfgs: make(map[string]Config), nodes: make(map[string]*Node)}
	c.tr = &http.Transport{MaxIdleConnsPerHost: 64}
	c.client = &http.Client{Transport: c.tr}
	t.Cleanup(c.close)
	var first string
	for i := range n {
		id := string(rune('a' + i))
		cfg := testConfig(t, id)
		cfg.Join = first
		for _, o := range options {
			o(&cfg)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		node, err := Start(ctx, cfg)
		cancel()
		if err != nil {
			t.Fatalf("start %s: %v", id, err)
		}
		// A restart comes back on the same addresses, without joining.
		cfg.RaftAddr, cfg.HTTPAddr, cfg.Join = node.RaftAddr(), node.HTTPAddr(), ""
		c.mu.Lock()
		c.cfgs[id], c.nodes[id] = cfg, node
		c.ids = append(c.ids, id)
		c.mu.Unlock()
		if i == 0 {
			first = node.HTTPAddr()
			c.waitLeader(10 * time.Second)
		}
	}
	c.waitMembers(10 * time.Second)
	return c
}

func (c *testCluster) addr(id string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfgs[id].HTTPAddr
}

// waitLeader waits until a live node leads and has applied a command of
// its term, and returns it.
func (c *testCluster) waitLeader(timeout time.Duration) *Node {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for _, n := range c.nodes {
			if n != nil && n.IsLeader() {
				if t, _, _ := n.fsm.state(); t == n.raft.CurrentTerm() {
					c.mu.Unlock()
					return n
				}
			}
		}
		c.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatalf("no leader after %v", timeout)
	return nil
}

// waitMembers waits until every live node knows every node's address.
func (c *testCluster) waitMembers(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		ok := true
		for _, n := range c.nodes {
			if n == nil {
				continue
			}
			ms := n.fsm.memberList()
			for id, cfg := range c.cfgs {
				ok = ok && ms[id] == cfg.HTTPAddr
			}
		}
		c.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("members not replicated after %v", timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill closes a node as a crash would (no handover, no drain).
func (c *testCluster) kill(id string) {
	c.t.Helper()
	c.mu.Lock()
	n := c.nodes[id]
	c.nodes[id] = nil
	c.mu.Unlock()
	if n == nil {
		return
	}
	if err := n.Close(); err != nil {
		c.t.Errorf("kill %s: %v", id, err)
	}
}

// restart starts a killed node again from its data directory.
func (c *testCluster) restart(id string) {
	c.t.Helper()
	c.mu.Lock()
	cfg := c.cfgs[id]
	c.mu.Unlock()
	var n *Node
	var err error
	// The port was just released; retry briefly should another socket
	// still hold it.
	for attempt := range 50 {
		if n, err = Start(context.Background(), cfg); err == nil {
			break
		}
		c.t.Logf("restart %s, attempt %d: %v", id, attempt, err)
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatalf("restart %s: %v", id, err)
	}
	c.mu.Lock()
	c.nodes[id] = n
	c.mu.Unlock()
}

func (c *testCluster) close() {
	c.mu.Lock()
	nodes := c.nodes
	c.nodes = map[string]*Node{}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for id, n := range nodes {
		if n != nil {
			wg.Go(func() {
				if err := n.Close(); err != nil {
					c.t.Errorf("close %s: %v", id, err)
				}
			})
		}
	}
	wg.Wait()
	c.tr.CloseIdleConnections()
}

// put writes key=value through node addr.
func (c *testCluster) put(ctx context.Context, addr, key, value string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+addr+"/kv/"+key, strings.NewReader(value))
	if err != nil {
		return nil, err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return resp, fmt.Errorf("PUT %s via %s: %s", key, addr, resp.Status)
	}
	return resp, nil
}

var errNotFound = errors.New("not found")

// get reads key through node addr; query is "" or "?stale=1".
func (c *testCluster) get(ctx context.Context, addr, key, query string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/kv/"+key+query, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return string(b), nil
	case http.StatusNotFound:
		return "", errNotFound
	}
	return "", fmt.Errorf("GET %s via %s: %s: %s", key, addr, resp.Status, strings.TrimSpace(string(b)))
}
