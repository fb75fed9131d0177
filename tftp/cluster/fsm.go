package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Record is the replicated identity and progress of one transfer: enough for
// another node to finish it from the same address and port.
type Record struct {
	ID     string         `json:"id"`
	Client netip.AddrPort `json:"client"`
	Op     string         `json:"op"` // "read" or "write"
	File   string         `json:"file"`
	Mode   string         `json:"mode"`
	Size   int64          `json:"size"`
	SHA256 string         `json:"sha256,omitempty"`

	BlockSize  int           `json:"blksize"`
	WindowSize int           `json:"windowsize"`
	Timeout    time.Duration `json:"timeout,omitempty"`
	OACK       bool          `json:"oack,omitempty"` // options were acknowledged

	// Progress: Block is the absolute number of blocks the client has
	// acknowledged (it does not wrap at 65536, so the rollover epoch is
	// Block>>16); Offset is the file offset of the next byte to send and
	// Netascii the encoder state there.
	Block    uint64 `json:"block"`
	Offset   int64  `json:"offset"`
	Netascii []byte `json:"netascii,omitempty"`

	Started time.Time `json:"started"`
	Updated time.Time `json:"updated"`
}

// Member is a node's advertised addresses.
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft"`
	HTTPAddr string `json:"http"`
}

type opKind string

const (
	opBegin    opKind = "begin"
	opProgress opKind = "progress"
	opEnd      opKind = "end"
	opMember   opKind = "member"
)

type command struct {
	Op     opKind  `json:"op"`
	Record *Record `json:"record,omitempty"`
	ID     string  `json:"id,omitempty"`
	Member *Member `json:"member,omitempty"`
}

// fsm is the replicated state: live transfers and member addresses. It is
// small by construction: finished transfers are removed.
type fsm struct {
	mu        sync.RWMutex
	transfers map[string]Record
	members   map[string]Member
}

func newFSM() *fsm {
	return &fsm{transfers: make(map[string]Record), members: make(map[string]Member)}
}

func (f *fsm) Apply(l *raft.Log) any {
	var c command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return fmt.Errorf("cluster: bad log entry %d: %w", l.Index, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch c.Op {
	case opBegin:
		f.transfers[c.Record.ID] = *c.Record
	case opProgress:
		if r, ok := f.transfers[c.Record.ID]; ok && c.Record.Block >= r.Block {
			r.Block, r.Offset, r.Netascii, r.Updated = c.Record.Block, c.Record.Offset, c.Record.Netascii, c.Record.Updated
			f.transfers[r.ID] = r
		}
	case opEnd:
		delete(f.transfers, c.ID)
	case opMember:
		f.members[c.Member.ID] = *c.Member
	default:
		return fmt.Errorf("cluster: unknown op %q at log entry %d", c.Op, l.Index)
	}
	return nil
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
	sort.Slice(s.Transfers, func(i, j int) bool { return s.Transfers[i].ID < s.Transfers[j].ID })
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
	f.transfers = make(map[string]Record, len(s.Transfers))
	for _, r := range s.Transfers {
		f.transfers[r.ID] = r
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
