package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"sort"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/raftnode"
)

// Command kinds of the replicated log.
const (
	opPut    byte = 1 // key, value
	opNoop   byte = 2 // a new leader's first command: marks its term applied
	opMember byte = 3 // key: node ID, value: its HTTP address
)

// errMalformed is the FSM's answer to a log entry it cannot decode.
var errMalformed = errors.New("raftkv: malformed command")

// encodeCommand lays out a command as op, uvarint key length, key, value.
func encodeCommand(op byte, key string, value []byte) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(key)+len(value))
	b = append(b, op)
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	return append(b, value...)
}

func decodeCommand(b []byte) (op byte, key string, value []byte, err error) {
	if len(b) < 2 {
		return 0, "", nil, errMalformed
	}
	op = b[0]
	n, k := binary.Uvarint(b[1:])
	if k <= 0 || n > uint64(len(b)-1-k) {
		return 0, "", nil, errMalformed
	}
	rest := b[1+k:]
	return op, string(rest[:n]), rest[n:], nil
}

// fsm is the replicated state: the key-value map and the members' HTTP
// addresses. raft's FSM goroutine applies; HTTP handlers read.
type fsm struct {
	mu      sync.RWMutex
	kv      map[string]string
	members map[string]string // node ID → HTTP address
	// term is the term of the last command applied. A leader whose FSM
	// has applied a command of its own term has applied every entry
	// committed before its term (see node.readLinearizable).
	term   uint64
	index  uint64
	termCh chan struct{} // closed and replaced when term grows
}

func newFSM() *fsm {
	return &fsm{kv: make(map[string]string), members: make(map[string]string), termCh: make(chan struct{})}
}

var _ raftnode.FSM = (*fsm)(nil)

// Apply applies one committed command; it returns nil or an error.
func (f *fsm) Apply(l *raft.Log) any {
	op, key, value, err := decodeCommand(l.Data)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index = l.Index
	if l.Term > f.term {
		f.term = l.Term
		close(f.termCh)
		f.termCh = make(chan struct{})
	}
	if err != nil {
		return err
	}
	switch op {
	case opPut:
		f.kv[key] = string(value)
	case opNoop:
	case opMember:
		f.members[key] = string(value)
	default:
		return fmt.Errorf("%w: op %d", errMalformed, op)
	}
	return nil
}

// get reads a key from the local state.
func (f *fsm) get(key string) (string, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	v, ok := f.kv[key]
	return v, ok
}

// MemberCommand encodes the command that records m's HTTP address
// (raftnode.FSM).
func (f *fsm) MemberCommand(m raftnode.Member) ([]byte, error) {
	return encodeCommand(opMember, m.ID, []byte(m.HTTPAddr)), nil
}

// MemberHTTP returns the HTTP address recorded for the node id
// (raftnode.FSM).
func (f *fsm) MemberHTTP(id string) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.members[id]
}

func (f *fsm) memberList() map[string]string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return maps.Clone(f.members)
}

// state returns the applied term and index and the number of keys.
func (f *fsm) state() (term, index uint64, keys int) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.term, f.index, len(f.kv)
}

// waitTerm waits until a command of term t or later has been applied and
// returns the applied term.
func (f *fsm) waitTerm(ctx context.Context, t uint64) (uint64, error) {
	for {
		f.mu.RLock()
		term, ch := f.term, f.termCh
		f.mu.RUnlock()
		if term >= t {
			return term, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return term, ctx.Err()
		}
	}
}

// Snapshot copies the state; Persist writes the copy out.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &snapshot{term: f.term, index: f.index, kv: maps.Clone(f.kv), members: maps.Clone(f.members)}, nil
}

// Restore replaces the state with a snapshot's.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, err := readSnapshot(bufio.NewReader(rc))
	if err != nil {
		return fmt.Errorf("raftkv: restore snapshot: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.kv, f.members, f.index = s.kv, s.members, s.index
	if s.term > f.term {
		f.term = s.term
		close(f.termCh)
		f.termCh = make(chan struct{})
	}
	return nil
}

// snapshot is a copy of the FSM. Its encoding: "rkv1", uvarint term,
// uvarint index, then two maps (kv, members), each a uvarint count and
// count pairs of uvarint-length-prefixed strings.
type snapshot struct {
	term, index uint64
	kv, members map[string]string
}

const snapshotMagic = "rkv1"

// Persist writes the snapshot to sink.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriterSize(sink, 64<<10)
	err := s.write(w)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("raftkv: persist snapshot: %w", err)
	}
	return sink.Close()
}

// Release is a no-op: the snapshot is a private copy.
func (s *snapshot) Release() {}

func (s *snapshot) write(w *bufio.Writer) error {
	var buf [binary.MaxVarintLen64]byte
	uv := func(v uint64) { w.Write(binary.AppendUvarint(buf[:0], v)) }
	str := func(v string) { uv(uint64(len(v))); w.WriteString(v) }
	w.WriteString(snapshotMagic)
	uv(s.term)
	uv(s.index)
	for _, m := range []map[string]string{s.kv, s.members} {
		uv(uint64(len(m)))
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys) // deterministic snapshots
		for _, k := range keys {
			str(k)
			str(m[k])
		}
	}
	// bufio.Writer keeps the first error; Flush returns it.
	return nil
}

// maxSnapshotString bounds one key or value read from a snapshot.
const maxSnapshotString = 64 << 20

func readSnapshot(r *bufio.Reader) (*snapshot, error) {
	magic := make([]byte, len(snapshotMagic))
	if _, err := io.ReadFull(r, magic); err != nil {
		return nil, err
	}
	if string(magic) != snapshotMagic {
		return nil, fmt.Errorf("%w: bad magic %q", errMalformed, magic)
	}
	s := &snapshot{}
	var err error
	if s.term, err = binary.ReadUvarint(r); err != nil {
		return nil, err
	}
	if s.index, err = binary.ReadUvarint(r); err != nil {
		return nil, err
	}
	str := func() (string, error) {
		n, err := binary.ReadUvarint(r)
		if err != nil {
			return "", err
		}
		if n > maxSnapshotString {
			return "", fmt.Errorf("%w: string of %d bytes", errMalformed, n)
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return "", err
		}
		return string(b), nil
	}
	readMap := func() (map[string]string, error) {
		n, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, err
		}
		m := make(map[string]string, min(n, 1<<16))
		for range n {
			k, err := str()
			if err != nil {
				return nil, err
			}
			v, err := str()
			if err != nil {
				return nil, err
			}
			m[k] = v
		}
		return m, nil
	}
	if s.kv, err = readMap(); err != nil {
		return nil, err
	}
	if s.members, err = readMap(); err != nil {
		return nil, err
	}
	return s, nil
}
