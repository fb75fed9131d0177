package cluster

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
	"github.com/ioactor/ioactor/tftp"
)

// A batch entry moves every transfer it names forward, by the same rules
// as a single checkpoint; a malformed one moves none.
func TestProgressBatchEntry(t *testing.T) {
	f := newFSM(nil, slog.New(slog.DiscardHandler))
	var recs []Record
	for i := range 300 {
		r := Record{State: tftp.TransferState{ID: uint64(i + 1), Op: tftp.OpRRQ, Filename: "f", Mode: "octet",
			Client: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(1000+i))}}
		beginRecord(t, f, r)
		r.State.Block, r.State.Offset, r.Updated = uint64(10*i+5), int64(512*(10*i+5)), time.Unix(1700000000, int64(i))
		recs = append(recs, r)
	}
	recs[7].State.ID = 999                                                                                       // another transfer of that client: ignored
	recs[8].State.Block = 0                                                                                      // earlier than the record: ignored
	recs = append(recs, Record{State: tftp.TransferState{ID: 1, Client: netip.MustParseAddrPort("10.9.9.9:1")}}) // unknown: ignored
	entry := encodeProgressBatch(recs)
	// Every truncation is refused and moves nothing.
	for n := 1; n < len(entry); n++ {
		if err, _ := f.Apply(&raft.Log{Data: entry[:n]}).(error); err == nil {
			t.Fatalf("a batch cut to %d of %d bytes was accepted", n, len(entry))
		}
	}
	for _, r := range f.state().Transfers {
		if r.State.Block != 0 {
			t.Fatalf("a truncated batch moved %v", r.State.Client)
		}
	}
	if err, _ := f.Apply(&raft.Log{Data: entry}).(error); err != nil {
		t.Fatal(err)
	}
	got := map[netip.AddrPort]Record{}
	for _, r := range f.state().Transfers {
		got[r.State.Client] = r
	}
	if len(got) != 300 {
		t.Fatalf("%d transfers, want 300", len(got))
	}
	for i, want := range recs[:300] {
		r := got[want.State.Client]
		if i == 7 {
			if r.State.Block != 0 {
				t.Errorf("transfer %d moved to %d by a foreign or older checkpoint", i, r.State.Block)
			}
			continue
		}
		if r.State.Block != want.State.Block || r.State.Offset != want.State.Offset || !r.Updated.Equal(want.Updated) {
			t.Errorf("transfer %d: %+v at %v, want block %d offset %d", i, r.State, r.Updated, want.State.Block, want.State.Offset)
		}
	}
	// An earlier checkpoint does not move a record back.
	back := recs[9]
	back.State.Block = 1
	if err, _ := f.Apply(&raft.Log{Data: encodeProgressBatch([]Record{back})}).(error); err != nil {
		t.Fatal(err)
	}
	for _, r := range f.state().Transfers {
		if r.State.Client == back.State.Client && r.State.Block != recs[9].State.Block {
			t.Errorf("an earlier checkpoint moved a record back to %d", r.State.Block)
		}
	}
	// A count over the bound, or bytes after the last checkpoint, are
	// malformed.
	if err, _ := f.Apply(&raft.Log{Data: append(entry, 0)}).(error); err == nil {
		t.Error("trailing bytes accepted")
	}
	if err, _ := f.Apply(&raft.Log{Data: []byte{progressBatchTag, 0x81, 0x10}}).(error); err == nil {
		t.Error("a count over maxBatch accepted")
	}
}

// The end of a transfer removes its record only: not that of the client's
// next transfer from the same address and port, begun before the end was
// applied. An end without an ID (an older log) removes by key.
func TestEndOfAnEarlierTransferKeepsTheNextOne(t *testing.T) {
	f := newFSM(nil, slog.New(slog.DiscardHandler))
	client := netip.MustParseAddrPort("127.0.0.1:40000")
	beginRecord(t, f, Record{State: tftp.TransferState{ID: 1, Op: tftp.OpRRQ, Client: client, Filename: "stage1"}})
	beginRecord(t, f, Record{State: tftp.TransferState{ID: 2, Op: tftp.OpRRQ, Client: client, Filename: "stage2"}})
	end := func(b string) {
		t.Helper()
		if err, _ := f.Apply(&raft.Log{Data: []byte(b)}).(error); err != nil {
			t.Fatal(err)
		}
	}
	end(`{"op":"end","id":"127.0.0.1:40000","xfer":1}`)
	if tr := f.state().Transfers; len(tr) != 1 || tr[0].State.ID != 2 {
		t.Fatalf("the end of transfer 1 left %+v", tr)
	}
	end(`{"op":"end","id":"127.0.0.1:40000","xfer":2}`)
	if tr := f.state().Transfers; len(tr) != 0 {
		t.Fatalf("the end of transfer 2 left %+v", tr)
	}
	beginRecord(t, f, Record{State: tftp.TransferState{ID: 3, Op: tftp.OpRRQ, Client: client, Filename: "f"}})
	end(`{"op":"end","id":"127.0.0.1:40000"}`)
	if tr := f.state().Transfers; len(tr) != 0 {
		t.Fatalf("an end without an ID left %+v", tr)
	}
}

// TestStalledFollowsTheUsualCommitTime: a checkpoint stalls past 50 ms
// when commits are fast, and only past 4 times the usual commit time when
// they are slow (a boot storm on a busy machine).
func TestStalledFollowsTheUsualCommitTime(t *testing.T) {
	epoch := time.Now()
	r := &replicator{epoch: epoch}
	stalledAfter := func(d time.Duration) bool {
		r.waiting.Store(1) // sent at the epoch
		defer r.waiting.Store(0)
		return r.Stalled(epoch.Add(d))
	}
	if r.Stalled(epoch.Add(time.Hour)) {
		t.Fatal("stalled with nothing committing")
	}
	for range 50 {
		r.committed(2 * time.Millisecond)
	}
	if stalledAfter(45*time.Millisecond) || !stalledAfter(55*time.Millisecond) {
		t.Fatalf("fast commits: hold after %v, want 50 ms", r.holdAfter())
	}
	for range 50 {
		r.committed(30 * time.Millisecond)
	}
	if h := r.holdAfter(); h < 115*time.Millisecond || h > 120*time.Millisecond {
		t.Fatalf("30 ms commits: hold after %v, want about 120 ms", h)
	}
	if stalledAfter(100*time.Millisecond) || !stalledAfter(125*time.Millisecond) {
		t.Fatalf("slow commits: hold after %v", r.holdAfter())
	}
}

// TestCheckpointEntriesArePaced: a stream of checkpoints from 200
// transfers, as in a boot storm, goes to raft at most one entry per
// batchGap, and after a flush every transfer's newest checkpoint is
// committed.
func TestCheckpointEntriesArePaced(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	n := startNode(t, dir, "a", "")
	defer n.Close()
	testutil.WaitFor(t, "a to lead", n.IsLeader)
	fsys, err := tftp.NewFS(tftp.FSConfig{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	reg := prometheus.NewRegistry()
	r := newReplicator(n, fsys, newServeMetrics(reg))
	defer r.close()
	const transfers = 200
	states := make([]tftp.TransferState, transfers)
	for i := range states {
		states[i] = tftp.TransferState{ID: uint64(i + 1), Op: tftp.OpWRQ, Filename: "f", Mode: "octet",
			Client: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(1000+i))}
		if err := r.Begin(states[i]); err != nil {
			t.Fatal(err)
		}
	}
	const run = 500 * time.Millisecond
	start := time.Now()
	for time.Since(start) < run {
		for i := range states {
			states[i].Block++
			r.Progress(states[i])
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(start)
	if !r.flush(10 * time.Second) {
		t.Fatal("flush timed out")
	}
	var entries float64
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "ioactor_tftp_cluster_checkpoint_batch_size" {
			entries = float64(mf.GetMetric()[0].GetHistogram().GetSampleCount())
		}
	}
	if max := float64(took/batchGap) + 2; entries > max {
		t.Errorf("%v of checkpoints went as %v entries, want at most %v (one per %v)", took, entries, max, batchGap)
	}
	if entries < 2 {
		t.Errorf("%v entries: the checkpoints did not go to raft while they came", entries)
	}
	got := map[netip.AddrPort]uint64{}
	for _, rec := range n.Transfers() {
		got[rec.State.Client] = rec.State.Block
	}
	for _, st := range states {
		if got[st.Client] != st.Block {
			t.Errorf("%v: committed block %d, want the newest checkpoint %d", st.Client, got[st.Client], st.Block)
		}
	}
}
