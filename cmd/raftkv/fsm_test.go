package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"maps"
	"testing"

	"github.com/hashicorp/raft"
)

func TestCommandRoundTrip(t *testing.T) {
	for _, c := range []struct {
		op         byte
		key, value string
	}{{opPut, "k", "v"}, {opPut, "key with spaces", ""}, {opNoop, "", ""}, {opMember, "a", "127.0.0.1:1"}} {
		op, k, v, err := decodeCommand(encodeCommand(c.op, c.key, []byte(c.value)))
		if err != nil || op != c.op || k != c.key || string(v) != c.value {
			t.Errorf("%+v: got %d %q %q %v", c, op, k, v, err)
		}
	}
	for _, b := range [][]byte{nil, {opPut}, {opPut, 5, 'a'}, {opPut, 0x80}} {
		if _, _, _, err := decodeCommand(b); !errors.Is(err, errMalformed) {
			t.Errorf("decode %v: %v, want errMalformed", b, err)
		}
	}
}

type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { return nil }

func TestFSMApplySnapshotRestore(t *testing.T) {
	f := newFSM()
	apply := func(term, index uint64, cmd []byte) any {
		return f.Apply(&raft.Log{Term: term, Index: index, Type: raft.LogCommand, Data: cmd})
	}
	if r := apply(1, 1, encodeCommand(opPut, "a", []byte("1"))); r != nil {
		t.Fatal(r)
	}
	apply(1, 2, encodeCommand(opMember, "n1", []byte("127.0.0.1:8000")))
	apply(2, 3, encodeCommand(opNoop, "", nil))
	apply(2, 4, encodeCommand(opPut, "b", []byte("")))
	if err, _ := apply(2, 5, []byte{99, 0}).(error); !errors.Is(err, errMalformed) {
		t.Errorf("unknown op: %v", err)
	}
	if term, index, keys := f.state(); term != 2 || index != 5 || keys != 2 {
		t.Errorf("state %d %d %d", term, index, keys)
	}

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := newFSM()
	if err := g.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(f.kv, g.kv) || !maps.Equal(f.members, g.members) || f.term != g.term || f.index != g.index {
		t.Errorf("restored %+v, want %+v", g, f)
	}
	// Every truncation is an error, not a panic or a partial state.
	for i := range sink.Len() {
		if _, err := readSnapshot(bufio.NewReader(bytes.NewReader(sink.Bytes()[:i]))); err == nil {
			t.Fatalf("snapshot truncated to %d bytes accepted", i)
		}
	}
}
