package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

// followers returns the live nodes that do not lead.
func (c *testCluster) followers() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*Node
	for _, id := range c.ids {
		if n := c.nodes[id]; n != nil && !n.IsLeader() {
			out = append(out, n)
		}
	}
	return out
}

func TestClusterWritesThroughFollowerAndStaleReads(t *testing.T) {
	leakcheck.Check(t)
	c := newTestCluster(t, 3)
	leader := c.waitLeader(10 * time.Second)
	fs := c.followers()
	if len(fs) != 2 {
		t.Fatalf("%d followers, want 2", len(fs))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// A write through a follower is forwarded and lands on the leader.
	resp, err := c.put(ctx, fs[0].HTTPAddr(), "k1", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Header.Get(hdrNode); got != leader.cfg.ID {
		t.Errorf("write answered by %q, want the leader %q", got, leader.cfg.ID)
	}
	if v, ok := leader.fsm.get("k1"); !ok || v != "v1" {
		t.Fatalf("leader has k1=%q (%v) right after the write was acknowledged", v, ok)
	}
	// Linearizable reads through every node see it at once.
	for _, id := range c.ids {
		if v, err := c.get(ctx, c.addr(id), "k1", ""); err != nil || v != "v1" {
			t.Errorf("GET k1 via %s = %q, %v", id, v, err)
		}
	}
	// A stale read on the other follower sees it eventually.
	deadline := time.Now().Add(5 * time.Second)
	for {
		v, err := c.get(ctx, fs[1].HTTPAddr(), "k1", "?stale=1")
		if err == nil && v == "v1" {
			break
		}
		if err != nil && !errors.Is(err, errNotFound) {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("stale read on %s still %q, %v", fs[1].cfg.ID, v, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A missing key is a 404 everywhere.
	if _, err := c.get(ctx, fs[1].HTTPAddr(), "nope", ""); !errors.Is(err, errNotFound) {
		t.Errorf("GET of a missing key: %v, want not found", err)
	}

	// Status tells who leads.
	st := fs[1].Status()
	if st.LeaderID != leader.cfg.ID || st.LeaderHTTP != leader.HTTPAddr() || len(st.Voters) != 3 {
		t.Errorf("status %+v", st)
	}
}

func TestHandoverOnShutdown(t *testing.T) {
	leakcheck.Check(t)
	c := newTestCluster(t, 3)
	old := c.waitLeader(10 * time.Second)
	start := time.Now()
	if err := old.Handover(); err != nil {
		t.Fatalf("handover: %v", err)
	}
	if old.IsLeader() {
		t.Fatal("still the leader after a handover")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := old.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	c.mu.Lock()
	c.nodes[old.cfg.ID] = nil
	c.mu.Unlock()
	next := c.waitLeader(10 * time.Second)
	t.Logf("leader %s → %s in %v", old.cfg.ID, next.cfg.ID, time.Since(start))
	if next == old {
		t.Fatal("the old leader leads")
	}
	// The cluster of two still takes writes, through either node.
	for _, n := range c.followers() {
		if _, err := c.put(ctx, n.HTTPAddr(), "after", "handover"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.put(ctx, next.HTTPAddr(), "after", "handover"); err != nil {
		t.Fatal(err)
	}
}

// TestForwardFailures: a follower whose leader's HTTP endpoint refuses
// connections answers 502 with X-Raftkv-Not-Applied; one whose leader
// does not answer gives up after the request timeout with 504.
func TestForwardFailures(t *testing.T) {
	leakcheck.Check(t)
	c := newTestCluster(t, 3, func(cfg *Config) { cfg.RequestTimeout = 300 * time.Millisecond })
	leader := c.waitLeader(10 * time.Second)
	f := c.followers()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	leader.srv.Close() // raft keeps leading; its HTTP endpoint is gone
	resp, err := c.put(ctx, f.HTTPAddr(), "k", "v")
	if resp == nil || resp.StatusCode != http.StatusBadGateway || resp.Header.Get(hdrNotApplied) == "" {
		t.Fatalf("PUT via a follower of an unreachable leader: %v, %v", resp, err)
	}

	// A listener on the leader's HTTP address that never answers.
	ln, err := net.Listen("tcp", leader.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var held []net.Conn
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, conn)
		}
	}()
	start := time.Now()
	resp, err = c.put(ctx, f.HTTPAddr(), "k", "v")
	if resp == nil || resp.StatusCode != http.StatusGatewayTimeout || resp.Header.Get(hdrNotApplied) != "" {
		t.Fatalf("PUT via a follower of a silent leader: %v, %v", resp, err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the forward gave up after %v, want about 300ms", d)
	}
	if _, err := c.get(ctx, f.HTTPAddr(), "k", ""); err == nil || !strings.Contains(err.Error(), "504") {
		t.Errorf("GET via a follower of a silent leader: %v", err)
	}
	ln.Close()
	<-acceptDone
	for _, conn := range held {
		conn.Close()
	}
}
