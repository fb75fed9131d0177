package raft

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

// setFSM records the ids of the commands it applied. Each command is an
// 8-byte id and a payload.
type setFSM struct {
	mu   sync.Mutex
	seen map[uint64]struct{}
}

func newSetFSM() *setFSM { return &setFSM{seen: make(map[uint64]struct{})} }

func (f *setFSM) Apply(l *hraft.Log) any {
	if l.Type != hraft.LogCommand || len(l.Data) < 8 {
		return nil
	}
	f.mu.Lock()
	f.seen[binary.BigEndian.Uint64(l.Data)] = struct{}{}
	f.mu.Unlock()
	return nil
}

func (f *setFSM) Snapshot() (hraft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ids := make([]byte, 0, 8*len(f.seen))
	for id := range f.seen {
		ids = binary.BigEndian.AppendUint64(ids, id)
	}
	return setSnapshot(ids), nil
}

func (f *setFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	seen := make(map[uint64]struct{}, len(b)/8)
	for i := 0; i+8 <= len(b); i += 8 {
		seen[binary.BigEndian.Uint64(b[i:])] = struct{}{}
	}
	f.mu.Lock()
	f.seen = seen
	f.mu.Unlock()
	return nil
}

// missing returns how many of ids the FSM lacks.
func (f *setFSM) missing(ids []uint64) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, id := range ids {
		if _, ok := f.seen[id]; !ok {
			n++
		}
	}
	return n
}

type setSnapshot []byte

func (s setSnapshot) Persist(sink hraft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s setSnapshot) Release() {}

// node is one member of a test cluster; its stores outlive restarts.
type node struct {
	id     hraft.ServerID
	addr   string
	logs   *hraft.InmemStore
	stable *hraft.InmemStore
	snaps  *hraft.InmemSnapshotStore

	trans *Transport
	raft  *hraft.Raft
	fsm   *setFSM
}

func raftConfig(id hraft.ServerID) *hraft.Config {
	c := hraft.DefaultConfig()
	c.LocalID = id
	c.HeartbeatTimeout = 300 * time.Millisecond
	c.ElectionTimeout = 300 * time.Millisecond
	c.LeaderLeaseTimeout = 300 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.MaxAppendEntries = 256
	c.TrailingLogs = 1024
	c.SnapshotThreshold = 4096
	c.SnapshotInterval = 250 * time.Millisecond
	c.Logger = hclog.New(&hclog.LoggerOptions{Level: hclog.Error, Output: io.Discard})
	return c
}

func (n *node) start(t *testing.T) {
	t.Helper()
	tr, err := New(Config{BindAddr: n.addr, Logger: quietLog, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	n.trans, n.addr, n.fsm = tr, string(tr.LocalAddr()), newSetFSM()
	r, err := hraft.NewRaft(raftConfig(n.id), n.fsm, n.logs, n.stable, n.snaps, tr)
	if err != nil {
		tr.Close()
		t.Fatal(err)
	}
	n.raft = r
}

func (n *node) stop(t *testing.T) {
	t.Helper()
	if n.raft == nil {
		return
	}
	if err := n.raft.Shutdown().Error(); err != nil {
		t.Error(err)
	}
	if err := n.trans.Close(); err != nil {
		t.Error(err)
	}
	n.raft, n.trans = nil, nil
}

func startCluster(t *testing.T, size int) []*node {
	t.Helper()
	nodes := make([]*node, size)
	var servers []hraft.Server
	for i := range nodes {
		n := &node{id: hraft.ServerID(fmt.Sprint("node", i)), addr: "127.0.0.1:0",
			logs: hraft.NewInmemStore(), stable: hraft.NewInmemStore(), snaps: hraft.NewInmemSnapshotStore()}
		n.start(t)
		nodes[i] = n
		servers = append(servers, hraft.Server{ID: n.id, Address: n.trans.LocalAddr()})
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			n.stop(t)
		}
	})
	if err := nodes[0].raft.BootstrapCluster(hraft.Configuration{Servers: servers}).Error(); err != nil {
		t.Fatal(err)
	}
	return nodes
}

// waitLeader returns the live node that leads, once exactly one does.
func waitLeader(t *testing.T, nodes []*node, within time.Duration) *node {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		var leaders []*node
		for _, n := range nodes {
			if n.raft != nil && n.raft.State() == hraft.Leader {
				leaders = append(leaders, n)
			}
		}
		if len(leaders) == 1 {
			return leaders[0]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no single leader within %v", within)
	return nil
}

// writer applies commands with unique ids through whoever leads, and keeps
// the ids whose Apply succeeded: the acknowledged writes.
type loadWriter struct {
	t       *testing.T
	nodes   []*node
	nextID  atomic.Uint64
	mu      sync.Mutex
	acked   []uint64
	retries atomic.Int64
}

func (w *loadWriter) leader() *node {
	for _, n := range w.nodes {
		if r := n.raft; r != nil && r.State() == hraft.Leader {
			return n
		}
	}
	return nil
}

// write applies count commands from conc goroutines.
func (w *loadWriter) write(count, conc int) {
	var wg sync.WaitGroup
	var left atomic.Int64
	left.Store(int64(count))
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []uint64
			defer func() {
				w.mu.Lock()
				w.acked = append(w.acked, mine...)
				w.mu.Unlock()
			}()
			for left.Add(-1) >= 0 {
				id := w.nextID.Add(1)
				data := make([]byte, 128) // raft keeps it: never reuse
				binary.BigEndian.PutUint64(data, id)
				deadline := time.Now().Add(20 * time.Second)
				for {
					n := w.leader()
					if n != nil {
						if err := n.raft.Apply(data, 5*time.Second).Error(); err == nil {
							mine = append(mine, id)
							break
						}
					}
					if time.Now().After(deadline) {
						w.t.Errorf("write %d: no leader accepted it for 20s", id)
						return
					}
					w.retries.Add(1)
					time.Sleep(5 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
}

func (w *loadWriter) ackedIDs() []uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]uint64(nil), w.acked...)
}

// waitConverged waits until n's FSM holds every acknowledged write.
func waitConverged(t *testing.T, n *node, ids []uint64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		m := n.fsm.missing(ids)
		if m == 0 {
			return
		}
		if time.Now().After(deadline) {
			if os.Getenv("RAFT_DEBUG") != "" {
				fmt.Fprintf(os.Stderr, "%s stats: %v\n", n.id, n.raft.Stats())
				pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
			}
			t.Fatalf("%s lacks %d of %d acknowledged writes after %v", n.id, m, len(ids), within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestClusterReplicatesSurvivesLeaderKillAndRejoin(t *testing.T) {
	leakcheck.Check(t)
	entries, more := 100_000, 20_000
	if raceEnabled {
		entries, more = 10_000, 5_000 // the race detector slows raft ~10×
	}
	nodes := startCluster(t, 3)
	leader := waitLeader(t, nodes, 10*time.Second)
	t.Logf("leader %s", leader.id)

	w := &loadWriter{t: t, nodes: nodes}
	start := time.Now()
	w.write(entries, 128)
	d := time.Since(start)
	acked := w.ackedIDs()
	if len(acked) != entries {
		t.Fatalf("%d of %d writes acknowledged", len(acked), entries)
	}
	t.Logf("%d entries in %v (%.0f/s, %d retries)", entries, d.Round(time.Millisecond), float64(entries)/d.Seconds(), w.retries.Load())
	for _, n := range nodes {
		waitConverged(t, n, acked, 20*time.Second)
	}

	// Kill the leader: raft and transport.
	old := w.leader()
	if old == nil {
		t.Fatal("no leader")
	}
	killed := time.Now()
	old.stop(t)
	next := waitLeader(t, nodes, 10*time.Second)
	t.Logf("killed %s; %s leads after %v", old.id, next.id, time.Since(killed).Round(time.Millisecond))
	if next == old {
		t.Fatal("the dead node leads")
	}
	if err := next.raft.Barrier(5 * time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if m := next.fsm.missing(acked); m != 0 {
		t.Fatalf("the new leader lost %d acknowledged writes", m)
	}

	// Keep writing while it is down: the leader snapshots and compacts, so
	// the returning node needs InstallSnapshot.
	w.write(more, 64)
	acked = w.ackedIDs()
	// Snapshot now rather than wait for raft's timer: the log the returning
	// node misses is then compacted away (TrailingLogs 1024 < more).
	if err := w.leader().raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}

	old.start(t)
	rejoin := time.Now()
	waitConverged(t, old, acked, 30*time.Second)
	t.Logf("%s rejoined and caught up on %d writes in %v", old.id, len(acked), time.Since(rejoin).Round(time.Millisecond))
	if n := old.trans.m.served[kindInstallSnapshot].Load(); n == 0 {
		t.Error("the returning node caught up without InstallSnapshot: the test no longer covers it")
	}
	for _, n := range nodes {
		if n.raft != nil {
			waitConverged(t, n, acked, 10*time.Second)
		}
	}
	if l := waitLeader(t, nodes, 10*time.Second); l == nil {
		t.Fatal("no leader at the end")
	}
}
