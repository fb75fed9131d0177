package cluster

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
	"github.com/ioactor/ioactor/tftp"
)

// leadingReplicator starts a one-node cluster, waits for it to lead, and
// gives it a replicator over an FS on root; the replicator, the FS and the
// node close in that order when the test ends.
func leadingReplicator(t *testing.T, root string, m *serveMetrics) (*Node, *tftp.FS, *replicator) {
	t.Helper()
	n := startNode(t, t.TempDir(), "a", "")
	t.Cleanup(func() { n.Close() })
	testutil.WaitFor(t, "a to lead", n.IsLeader)
	fsys, err := tftp.NewFS(tftp.FSConfig{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	r := newReplicator(n, fsys, m)
	t.Cleanup(r.close)
	return n, fsys, r
}

func startNode(t *testing.T, dir, id, join string) *Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	root := filepath.Join(dir, id, "root")
	os.MkdirAll(root, 0o755)
	fsys, err := tftp.NewFS(tftp.FSConfig{Root: root, AllowWrite: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	n, err := StartNode(ctx, NodeConfig{ID: id, DataDir: filepath.Join(dir, id), RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Join: join, Fast: true, Tune: relaxedTimers, FS: fsys})
	if err != nil {
		t.Fatal(err)
	}
	go func() { // the owner must drain leadership changes
		for range n.Leadership() {
		}
	}()
	return n
}

// relaxedTimers are raft's timers for tests that check what the cluster
// replicates, not how fast it fails over: a leader on a loaded machine
// running -race may not hear from its followers for 200 ms and more (1.2 s
// was seen at a load average of 26 on 2 cores), and must not step down in
// the middle of the test for it.
func relaxedTimers(rc *raft.Config) {
	rc.HeartbeatTimeout = 3 * time.Second
	rc.ElectionTimeout = 3 * time.Second
	rc.LeaderLeaseTimeout = 3 * time.Second
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
	testutil.WaitFor(t, "a to lead", a.IsLeader)
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
	testutil.WaitFor(t, "three voters", func() bool { return len(a.Status().Voters) == 3 })

	rec := Record{State: tftp.TransferState{ID: 1, Client: netip.MustParseAddrPort("127.0.0.1:40000"), Op: tftp.OpRRQ, Filename: "f", Started: time.Now()}}
	if err := a.Begin(rec); err != nil {
		t.Fatal(err)
	}
	rec.State.Block, rec.State.Offset = 70000, 70000*512
	if err := a.Progress(rec); err != nil {
		t.Fatal(err)
	}
	if err := b.Begin(rec); err == nil {
		t.Fatal("a follower accepted Begin")
	}

	// An upload replicated in chunks appears, whole, in every node's root.
	data := bytes.Repeat([]byte("replicated upload "), 100000)
	up := Record{State: tftp.TransferState{ID: 2, Client: netip.MustParseAddrPort("127.0.0.1:40001"), Op: tftp.OpWRQ, Filename: "up.bin", Started: time.Now()}}
	if err := a.Begin(up); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += 256 << 10 {
		if err := a.UploadData(up.Key(), int64(off), data[off:min(off+256<<10, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	sum := sha256.Sum256(data)
	up.State.Size, up.SHA256 = int64(len(data)), hex.EncodeToString(sum[:])
	if err := a.CommitUpload(up); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		path := filepath.Join(dir, id, "root", "up.bin")
		testutil.WaitFor(t, "the upload on "+id, func() bool {
			got, err := os.ReadFile(path)
			return err == nil && bytes.Equal(got, data)
		})
	}
	// An upload that ends without a commit leaves nothing anywhere.
	partial := Record{State: tftp.TransferState{ID: 3, Client: netip.MustParseAddrPort("127.0.0.1:40002"), Op: tftp.OpWRQ, Filename: "partial.bin"}}
	if err := a.Begin(partial); err != nil {
		t.Fatal(err)
	}
	a.UploadData(partial.Key(), 0, data[:1000])
	if err := a.End(partial.Key()); err != nil {
		t.Fatal(err)
	}
	if err := a.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b", "c"} {
		testutil.WaitFor(t, "node "+id+" to drop the abandoned upload", func() bool {
			ents, _ := os.ReadDir(filepath.Join(dir, id, "root"))
			return len(ents) == 1 // up.bin only: no partial.bin, no temporary file
		})
	}
	a.Close()
	nodes[0] = nil
	testutil.WaitFor(t, "a new leader", func() bool { return leaderOf(nodes) != nil })
	l := leaderOf(nodes)
	if err := l.Barrier(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	got := l.Transfers()
	if len(got) != 1 || got[0].State.Block != 70000 || got[0].State.Offset != 70000*512 || got[0].State.Client != rec.State.Client {
		t.Fatalf("new leader sees %+v", got)
	}
	if err := l.End(rec.Key()); err != nil {
		t.Fatal(err)
	}
	if n := len(l.Transfers()); n != 0 {
		t.Fatalf("%d transfers after End", n)
	}
	// The old leader comes back from its data directory and catches up.
	a2, err := StartNode(context.Background(), NodeConfig{ID: "a", DataDir: filepath.Join(dir, "a"), RaftAddr: a.rn.RaftAddr(), HTTPAddr: "127.0.0.1:0", Fast: true, Tune: relaxedTimers})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range a2.Leadership() {
		}
	}()
	nodes[0] = a2
	testutil.WaitFor(t, "a to catch up", func() bool { return a2.Status().Leader != "" && len(a2.Transfers()) == 0 })
}
