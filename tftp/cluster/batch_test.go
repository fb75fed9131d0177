package cluster

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/tftp"
)

// encodeProgressBatch builds a progressBatchTag entry, as an earlier
// version wrote them (a log may still hold some).
func encodeProgressBatch(recs []Record) []byte {
	b := []byte{progressBatchTag}
	b = binary.AppendUvarint(b, uint64(len(recs)))
	for i := range recs {
		b = appendProgressBody(b, &recs[i])
	}
	return b
}

// A progressBatchTag entry (an earlier version's) moves every transfer it
// names forward, by the same rules as a single checkpoint; a malformed one
// moves none.
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
	reg := prometheus.NewRegistry()
	n, _, r := leadingReplicator(t, t.TempDir(), newServeMetrics(reg))
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

// A batchTag entry carries begins, checkpoints and ends: the records
// arrive whole, every field as it was; the entry applies its begins, then
// its checkpoints, then its ends, so that one entry may end a client's
// transfer and begin its next from the same port, or carry a transfer's
// last checkpoint and its end. A malformed entry applies nothing.
func TestBatchEntry(t *testing.T) {
	f := newFSM(nil, slog.New(slog.DiscardHandler))
	at := func(ns int64) time.Time { return time.Unix(1700000000, ns) }
	client := func(port uint16) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1"), port)
	}
	full := Record{State: tftp.TransferState{ID: 1 << 50, Op: tftp.OpRRQ, Client: client(1), Server: netip.MustParseAddrPort("192.0.2.1:69"),
		Filename: "boot/grubx64.efi", Mode: "octet", Negotiated: tftp.Negotiated{BlockSize: 1468, WindowSize: 4, Timeout: time.Second, TSize: 1 << 20},
		Options: []byte("\x00\x06blksize\x001468\x00"), Rollover: tftp.RolloverRefuse, Size: 1 << 20, Block: 3, Offset: 3 * 1468, Netascii: 0, Started: at(7)},
		SHA256: "ab" + string(make([]byte, 62)), Updated: at(8)}
	up := Record{State: tftp.TransferState{ID: 2, Op: tftp.OpWRQ, Client: client(2), Filename: "up", Mode: "netascii", Netascii: 1}, Updated: at(9)}
	early := Record{State: tftp.TransferState{ID: 3, Op: tftp.OpRRQ, Client: client(3), Filename: "stage1", Mode: "octet"}, Updated: at(10)}
	apply := func(b *batch) error {
		t.Helper()
		e, err := b.encode()
		if err != nil {
			t.Fatal(err)
		}
		err, _ = f.Apply(&raft.Log{Data: e}).(error)
		return err
	}
	if err := apply(&batch{begins: []Record{full, up, early}}); err != nil {
		t.Fatal(err)
	}
	got := map[netip.AddrPort]Record{}
	for _, r := range f.state().Transfers {
		got[r.State.Client] = r
	}
	for _, want := range []Record{full, up, early} {
		if !reflect.DeepEqual(got[want.State.Client], want) {
			t.Errorf("begun:\n got %+v\nwant %+v", got[want.State.Client], want)
		}
	}
	// One entry: client 3's next transfer begins from the same port as
	// the one that ended (its end is queued first); client 1's transfer
	// moves on; the upload's last checkpoint and its end.
	next := early
	next.State.ID, next.State.Filename = 4, "stage2"
	moved, last := full, up
	moved.State.Block, moved.State.Offset, moved.Updated = 700, 700*1468, at(11)
	last.State.Block = 40
	e := &batch{begins: []Record{next}, progress: []Record{moved, last}, ends: []ended{{early.Key(), 3}, {up.Key(), 2}}}
	entry, err := e.encode()
	if err != nil {
		t.Fatal(err)
	}
	// Every truncation, and a byte more, are refused and change nothing.
	before := f.state()
	for n := 1; n < len(entry); n++ {
		if err, _ := f.Apply(&raft.Log{Data: entry[:n]}).(error); err == nil {
			t.Fatalf("a batch cut to %d of %d bytes was accepted", n, len(entry))
		}
	}
	if err, _ := f.Apply(&raft.Log{Data: append(entry[:len(entry):len(entry)], 0)}).(error); err == nil {
		t.Fatal("trailing bytes accepted")
	}
	if !reflect.DeepEqual(f.state(), before) {
		t.Fatal("a malformed batch changed the state")
	}
	if err := apply(e); err != nil {
		t.Fatal(err)
	}
	got = map[netip.AddrPort]Record{}
	for _, r := range f.state().Transfers {
		got[r.State.Client] = r
	}
	if len(got) != 2 || !reflect.DeepEqual(got[next.State.Client], next) || !reflect.DeepEqual(got[moved.State.Client], moved) {
		t.Fatalf("after the entry: %+v\nwant client 3's next transfer and client 1's at block 700", f.state().Transfers)
	}
	// An end by key alone (ID 0) removes whatever the key holds.
	if err := apply(&batch{ends: []ended{{key: next.Key()}}}); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.transfers[next.Key()]; ok {
		t.Fatal("an end without an ID left the record")
	}
	// Counts over maxBatch, or a begin whose state does not parse, are
	// malformed.
	for _, b := range [][]byte{
		{batchTag, 0x81, 0x10, 0, 0},
		{batchTag, 0, 0, 0x81, 0x10},
		{batchTag, 1, 0, 0, 2, 9, 9, 0, 0},
	} {
		if err, _ := f.Apply(&raft.Log{Data: b}).(error); err == nil {
			t.Errorf("%x accepted", b)
		}
	}
}

// Begins that arrive while an entry with begins commits wait for it and
// go together (group commit): 200 transfers beginning at once, as in a
// boot storm, take a handful of entries, not 200, and each Begin returns
// only once its record is applied. Their ends, queued together, go in
// one or two entries, and after a flush no record is left: a new leader
// resumes none of them.
func TestBeginsCommitTogether(t *testing.T) {
	leakcheck.Check(t)
	n, _, r := leadingReplicator(t, t.TempDir(), newServeMetrics(nil))
	const transfers = 200
	states := make([]tftp.TransferState, transfers)
	for i := range states {
		states[i] = tftp.TransferState{ID: uint64(i + 1), Op: tftp.OpWRQ, Filename: "f", Mode: "octet",
			Client: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(1000+i))}
	}
	index0 := n.raft.LastIndex()
	errs := make(chan error, transfers)
	for i := range states {
		go func() {
			if err := r.Begin(states[i]); err != nil {
				errs <- err
				return
			}
			n.fsm.mu.RLock()
			rec, ok := n.fsm.transfers[states[i].Client.String()]
			n.fsm.mu.RUnlock()
			if !ok || rec.State.ID != states[i].ID {
				errs <- fmt.Errorf("%v: Begin returned before its record was applied", states[i].Client)
				return
			}
			errs <- nil
		}()
	}
	for range transfers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	entries := n.raft.LastIndex() - index0
	t.Logf("%d begins in %d entries", transfers, entries)
	if entries > transfers/4 {
		t.Errorf("%d begins took %d entries: they did not commit together", transfers, entries)
	}
	index0 = n.raft.LastIndex()
	for _, st := range states {
		st.Block = 9
		r.Progress(st)
		r.End(st)
	}
	if !r.flush(10 * time.Second) {
		t.Fatal("flush timed out")
	}
	if e := n.raft.LastIndex() - index0; e > 2 {
		t.Errorf("%d ends took %d entries, want 1 or 2", transfers, e)
	}
	if left := n.Transfers(); len(left) != 0 {
		t.Fatalf("%d records left after every end committed: a new leader would resume them", len(left))
	}
}
