package cluster

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startNode(t *testing.T, dir, id, join string) *Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := StartNode(ctx, NodeConfig{ID: id, DataDir: filepath.Join(dir, id), RaftAddr: freeAddr(t), HTTPAddr: freeAddr(t), Join: join, Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() { // the owner must drain leadership changes
		for range n.Leadership() {
		}
	}()
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func leaderOf(nodes []*Node) *Node {
	for _, n := range nodes {
		if n != nil && n.IsLeader() {
			return n
		}
	}
	return nil
}

func TestThreeNodesReplicateTransfersAndSurviveTheLeader(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	a := startNode(t, dir, "a", "")
	waitFor(t, "a to lead", a.IsLeader)
	b := startNode(t, dir, "b", a.HTTPAddr())
	c := startNode(t, dir, "c", b.HTTPAddr()) // joining through a follower works too
	nodes := []*Node{a, b, c}
	defer func() {
		for _, n := range nodes {
			if n != nil {
				n.Close()
			}
		}
	}()
	waitFor(t, "three voters", func() bool { return len(a.Status().Voters) == 3 })

	rec := Record{ID: "t1", Client: netip.MustParseAddrPort("127.0.0.1:40000"), Op: "read", File: "f", BlockSize: 512, WindowSize: 1, Started: time.Now()}
	if err := a.Begin(rec); err != nil {
		t.Fatal(err)
	}
	rec.Block, rec.Offset = 70000, 70000*512
	if err := a.Progress(rec); err != nil {
		t.Fatal(err)
	}
	if err := b.Begin(rec); err == nil {
		t.Fatal("a follower accepted Begin")
	}
	a.Close()
	nodes[0] = nil
	waitFor(t, "a new leader", func() bool { return leaderOf(nodes) != nil })
	l := leaderOf(nodes)
	if err := l.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	got := l.Transfers()
	if len(got) != 1 || got[0].Block != 70000 || got[0].Offset != 70000*512 || got[0].Client != rec.Client {
		t.Fatalf("new leader sees %+v", got)
	}
	if err := l.End("t1"); err != nil {
		t.Fatal(err)
	}
	if n := len(l.Transfers()); n != 0 {
		t.Fatalf("%d transfers after End", n)
	}
	// The old leader comes back from its data directory and catches up.
	a2, err := StartNode(context.Background(), NodeConfig{ID: "a", DataDir: filepath.Join(dir, "a"), RaftAddr: string(a.trans.LocalAddr()), HTTPAddr: freeAddr(t), Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range a2.Leadership() {
		}
	}()
	nodes[0] = a2
	waitFor(t, "a to catch up", func() bool { return a2.Status().Leader != "" && len(a2.Transfers()) == 0 })
}
