package cluster

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/raftnode"
	"github.com/ioactor/ioactor/tftp"
)

// Record is the replicated identity and progress of one transfer: enough
// for another node to finish it from the same address and port. Transfers
// are keyed by the client's address: in single-port mode it is what tells
// them apart.
type Record struct {
	State tftp.TransferState `json:"state"`
	// SHA256 is the file's digest when a download started: a node whose
	// file differs refuses to resume it rather than send mixed bytes.
	SHA256  string    `json:"sha256,omitempty"`
	Updated time.Time `json:"updated"`
}

// Key is the record's key: the client's address.
func (r *Record) Key() string { return r.State.Client.String() }

// Member is a node's advertised addresses.
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft"`
	HTTPAddr string `json:"http"`
}

type opKind string

const (
	opBegin  opKind = "begin"
	opEnd    opKind = "end"
	opMember opKind = "member"
	opCommit opKind = "commit" // an upload is complete: every node renames it into place
)

// An upload's bytes travel as binary log entries: dataTag, then the
// transfer id's length (1 byte) and id, the offset (8 bytes), then the data.
// Begins, checkpoints and ends, the most frequent entries, are binary too:
// batchTag entries (batch.go), or, from a single [Node.Progress],
// progressTag, the key's length (1 byte) and key, then the transfer's ID,
// block, offset, netascii state and time as varints. Every other entry is
// a JSON command (begin and end commands are an earlier version's).
const (
	dataTag     = 0xD7
	progressTag = 0xD8
)

type command struct {
	Op     opKind  `json:"op"`
	Record *Record `json:"record,omitempty"`
	ID     string  `json:"id,omitempty"`
	// Xfer, on an end, is the transfer's ID: the end then removes the
	// record only if it is that transfer's (see batch.go's ended).
	// Begins and ends are batchTag entries now; these are for logs of
	// earlier versions.
	Xfer   uint64  `json:"xfer,omitempty"`
	Member *Member `json:"member,omitempty"`
}

// staged is an upload being replicated into this node's root.
type staged struct {
	up   *tftp.Upload
	size int64
	sum  hash.Hash
	err  error // the first write error; the commit then fails on this node
}

// fsm is the replicated state: live transfers and member addresses. It is
// small by construction: finished transfers are removed.
type fsm struct {
	mu        sync.RWMutex
	transfers map[string]Record
	members   map[string]Member
	fs        *tftp.FS // this node's root, for replicated uploads
	uploads   map[string]*staged
	log       *slog.Logger
	// onBegin, if set, is called (under the lock; it must not block) when
	// a transfer's record is applied.
	onBegin func(Record)
}

func newFSM(fsys *tftp.FS, log *slog.Logger) *fsm {
	return &fsm{transfers: make(map[string]Record), members: make(map[string]Member), fs: fsys, uploads: make(map[string]*staged), log: log}
}

// encodeData builds the log entry for a chunk of an upload.
func encodeData(id string, off int64, data []byte) []byte {
	b := make([]byte, 0, 10+len(id)+len(data))
	b = append(b, dataTag, byte(len(id)))
	b = append(b, id...)
	b = binary.BigEndian.AppendUint64(b, uint64(off))
	return append(b, data...)
}

// encodeProgress builds the log entry of a checkpoint.
func encodeProgress(r *Record) []byte {
	b := make([]byte, 0, 2+len(r.Key())+4*binary.MaxVarintLen64+1)
	return appendProgressBody(append(b, progressTag), r)
}

var errBadProgress = errors.New("cluster: malformed checkpoint entry")

// applyProgress moves a transfer's record to a later checkpoint (see
// moveLocked).
func (f *fsm) applyProgress(b []byte) error {
	if len(b) < 1 {
		return errBadProgress
	}
	p, rest, err := parseProgressBody(b[1:])
	if err != nil {
		return err
	}
	if len(rest) != 0 {
		return errBadProgress
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.moveLocked(&p)
	return nil
}

func (f *fsm) applyData(b []byte) error {
	if len(b) < 2 || len(b) < 2+int(b[1])+8 {
		return errors.New("cluster: truncated upload entry")
	}
	k := 2 + int(b[1]) // int: a byte sum would wrap
	id := string(b[2:k])
	off := int64(binary.BigEndian.Uint64(b[k:]))
	data := b[k+8:]
	f.mu.Lock()
	defer f.mu.Unlock()
	st := f.uploads[id]
	if st == nil {
		r, ok := f.transfers[id]
		if !ok || f.fs == nil {
			return nil // the upload ended already
		}
		st = &staged{sum: sha256.New()}
		st.up, st.err = f.fs.Create(r.State.Filename)
		f.uploads[id] = st
	}
	if st.err != nil {
		return nil
	}
	if off != st.size {
		st.err = fmt.Errorf("cluster: upload %s: chunk at %d, expected %d", id, off, st.size)
		return nil
	}
	if _, err := st.up.Write(data); err != nil {
		st.err = err
		return nil
	}
	st.sum.Write(data)
	st.size += int64(len(data))
	return nil
}

// commitUpload renames a fully replicated upload into place on this node,
// after checking its size and digest against the leader's.
func (f *fsm) commitUpload(r *Record) error {
	id := r.Key()
	st := f.uploads[id]
	delete(f.uploads, id)
	if st == nil && r.State.Size == 0 && f.fs != nil {
		st = &staged{sum: sha256.New()}
		st.up, st.err = f.fs.Create(r.State.Filename)
	}
	if st == nil {
		return fmt.Errorf("cluster: commit of upload %s with no data", id)
	}
	err := st.err
	if err == nil && (st.size != r.State.Size || hex.EncodeToString(st.sum.Sum(nil)) != r.SHA256) {
		err = fmt.Errorf("cluster: upload from %s: replicated %d bytes, digest differs from the leader's (%d bytes)", id, st.size, r.State.Size)
	}
	if err == nil {
		err = st.up.Commit()
	}
	if err != nil {
		if st.up != nil {
			st.up.Abort()
		}
		f.log.Error("cluster: replicated upload not committed on this node", "file", r.State.Filename, "err", err)
		return err
	}
	return nil
}

func (f *fsm) Apply(l *raft.Log) any {
	if len(l.Data) > 0 {
		switch l.Data[0] {
		case dataTag:
			return f.applyData(l.Data)
		case progressTag:
			return f.applyProgress(l.Data)
		case progressBatchTag:
			return f.applyProgressBatch(l.Data)
		case batchTag:
			return f.applyBatch(l.Data)
		}
	}
	var c command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return fmt.Errorf("cluster: bad log entry %d: %w", l.Index, err)
	}
	switch {
	case (c.Op == opBegin || c.Op == opCommit) && c.Record == nil:
		return fmt.Errorf("cluster: log entry %d: %q without a record", l.Index, c.Op)
	case c.Op == opMember && c.Member == nil:
		return fmt.Errorf("cluster: log entry %d: %q without a member", l.Index, c.Op)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch c.Op {
	case opBegin:
		f.beginLocked(*c.Record)
	case opEnd:
		f.endLocked(c.ID, c.Xfer)
	case opCommit:
		delete(f.transfers, c.Record.Key())
		return f.commitUpload(c.Record)
	case opMember:
		f.members[c.Member.ID] = *c.Member
	default:
		return fmt.Errorf("cluster: unknown op %q at log entry %d", c.Op, l.Index)
	}
	return nil
}

// MemberCommand encodes the entry that records m (raftnode.FSM).
func (f *fsm) MemberCommand(m raftnode.Member) ([]byte, error) {
	return json.Marshal(command{Op: opMember, Member: &Member{ID: m.ID, RaftAddr: m.RaftAddr, HTTPAddr: m.HTTPAddr}})
}

// MemberHTTP returns the HTTP address recorded for the member id
// (raftnode.FSM).
func (f *fsm) MemberHTTP(id string) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.members[id].HTTPAddr
}

type snapshot struct {
	Transfers []Record `json:"transfers"`
	Members   []Member `json:"members"`
}

func (f *fsm) state() snapshot {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var s snapshot
	for _, r := range f.transfers {
		s.Transfers = append(s.Transfers, r)
	}
	for _, m := range f.members {
		s.Members = append(s.Members, m)
	}
	sort.Slice(s.Transfers, func(i, j int) bool { return s.Transfers[i].Key() < s.Transfers[j].Key() })
	sort.Slice(s.Members, func(i, j int) bool { return s.Members[i].ID < s.Members[j].ID })
	return s
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) { return f.state(), nil }

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var s snapshot
	if err := json.NewDecoder(rc).Decode(&s); err != nil {
		return fmt.Errorf("cluster: restore snapshot: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	// Uploads in progress are not in snapshots: a node restored from one
	// drops them, and their clients see the upload fail.
	for id, st := range f.uploads {
		if st.up != nil {
			st.up.Abort()
		}
		delete(f.uploads, id)
	}
	f.transfers = make(map[string]Record, len(s.Transfers))
	for _, r := range s.Transfers {
		if r.State.Op != tftp.OpWRQ {
			f.transfers[r.Key()] = r
		}
	}
	f.members = make(map[string]Member, len(s.Members))
	for _, m := range s.Members {
		f.members[m.ID] = m
	}
	return nil
}

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s); err != nil {
		sink.Cancel()
		return fmt.Errorf("cluster: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (snapshot) Release() {}
