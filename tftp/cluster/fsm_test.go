package cluster

import (
	"encoding/json"
	"log/slog"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/tftp"
)

func beginRecord(t testing.TB, f *fsm, r Record) {
	t.Helper()
	b := []byte(`{"op":"begin","record":` + mustJSON(t, r) + `}`)
	if err, _ := f.Apply(&raft.Log{Data: b}).(error); err != nil {
		t.Fatal(err)
	}
}

// A checkpoint entry moves its transfer's record forward, and only its own
// transfer's, never back.
func TestProgressEntry(t *testing.T) {
	f := newFSM(nil, slog.New(slog.DiscardHandler))
	client := netip.MustParseAddrPort("[2001:db8::7]:40000")
	rec := Record{State: tftp.TransferState{ID: 1 << 40, Op: tftp.OpRRQ, Client: client, Filename: "f", Mode: "netascii", Size: 1 << 30}}
	beginRecord(t, f, rec)
	step := func(id, block uint64, off int64, na uint8) {
		r := rec
		r.State.ID, r.State.Block, r.State.Offset, r.State.Netascii = id, block, off, na
		r.Updated = time.Unix(1700000000, 5)
		if err, _ := f.Apply(&raft.Log{Data: encodeProgress(&r)}).(error); err != nil {
			t.Fatal(err)
		}
	}
	got := func() tftp.TransferState { return f.state().Transfers[0].State }
	step(1<<40, 70000, 70000*512+3, 2)
	if st := got(); st.Block != 70000 || st.Offset != 70000*512+3 || st.Netascii != 2 || f.state().Transfers[0].Updated.UnixNano() != time.Unix(1700000000, 5).UnixNano() {
		t.Fatalf("after a checkpoint: %+v", st)
	}
	step(1<<40, 69999, 1, 0) // older: ignored
	step(7, 90000, 2, 0)     // another transfer of the same client: ignored
	if st := got(); st.Block != 70000 || st.Offset != 70000*512+3 {
		t.Fatalf("an older or foreign checkpoint moved the record: %+v", st)
	}
	// Truncations of a valid entry are refused with an error, not applied.
	r := rec
	r.State.Block = 80000
	full := encodeProgress(&r)
	for n := 1; n < len(full); n++ {
		if err, _ := f.Apply(&raft.Log{Data: full[:n]}).(error); err == nil {
			t.Fatalf("a checkpoint entry cut to %d of %d bytes was accepted", n, len(full))
		}
	}
	if got().Block != 70000 {
		t.Fatal("a truncated entry moved the record")
	}
}

// FuzzApplyEntry feeds the state machine arbitrary log entries: each is
// applied or refused with an error, never a panic. Seeds: testdata/fuzz.
func FuzzApplyEntry(f *testing.F) {
	rec := Record{State: tftp.TransferState{ID: 3, Op: tftp.OpRRQ, Client: netip.MustParseAddrPort("127.0.0.1:1"), Filename: "f"}}
	rec.State.Block = 9
	f.Add(encodeProgress(&rec))
	other := rec
	other.State.Client, other.State.Block = netip.MustParseAddrPort("[::1]:69"), 70000
	f.Add(encodeProgressBatch([]Record{rec, other}))
	f.Add(encodeData("127.0.0.1:1", 0, []byte("data")))
	f.Add([]byte(`{"op":"end","id":"127.0.0.1:1"}`))
	f.Add([]byte(`{"op":"member","member":{"id":"n1","raft":"a","http":"b"}}`))
	next := other
	next.State.ID, next.State.Filename, next.State.Options, next.SHA256 = 4, "g", []byte("\x00\x06blksize\x001468\x00"), "00ff"
	for _, b := range []*batch{
		{begins: []Record{next}, progress: []Record{rec}, ends: []ended{{key: rec.Key(), id: 3}}},
		{ends: []ended{{key: rec.Key()}}},
		{begins: []Record{rec, next}},
	} {
		e, err := b.encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(e)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fsm := newFSM(nil, slog.New(slog.DiscardHandler))
		beginRecord(t, fsm, rec)
		err, _ := fsm.Apply(&raft.Log{Data: b}).(error)
		if len(b) > 0 && b[0] == batchTag {
			// A batch that decodes applies, and its begins encode back
			// to what was decoded.
			d, derr := decodeBatch(b)
			if (derr == nil) != (err == nil) {
				t.Fatalf("decode: %v, apply: %v", derr, err)
			}
			if derr == nil {
				again, err := (&batch{begins: d.begins}).encode()
				if err != nil {
					t.Fatal(err)
				}
				d2, err := decodeBatch(again)
				if err != nil || !reflect.DeepEqual(d2.begins, d.begins) {
					t.Fatalf("begins do not round-trip: %v\n%+v\n%+v", err, d.begins, d2)
				}
			}
		}
	})
}

func mustJSON(t testing.TB, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
