package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ioactor/ioactor/internal/wire"
)

// Coalesced entries. In a boot storm, 200 transfers each checkpointing
// every 20 ms would be 10,000 raft entries a second, and each transfer's
// begin and end two more; every entry is appended and fsynced on every
// node and applied by every state machine. Instead the replicator sends
// whatever is waiting when it next goes to raft as one batchTag entry:
//
//	batchTag
//	begins, checkpoints, ends: three counts, uvarints (each ≤ maxBatch)
//	each begin: the record's state (uvarint length, then
//	  tftp.TransferState.MarshalBinary), its digest (uvarint length and
//	  the hex string) and its time (varint, ns since the epoch)
//	each checkpoint: the key's length (1 byte) and key, the transfer's ID,
//	  block, offset, netascii state (1 byte) and time as varints
//	each end: the key's length (1 byte) and key, the transfer's ID as a
//	  uvarint (0: whatever transfer the key holds)
//
// An entry is applied whole or, malformed, not at all: its begins first,
// then its checkpoints, then its ends. Begins cannot wait (a transfer
// sends nothing before its begin committed: see [replicator]); the
// checkpoints and ends waiting go with them, or, when no begin comes, in
// an entry at most every batchGap.
//
// The entries of earlier versions are still applied (a log may hold
// them): progressTag (one checkpoint), progressBatchTag (checkpoints
// only: the count, then the checkpoint bodies) and the JSON begin and
// end commands.
const (
	progressBatchTag = 0xD9
	batchTag         = 0xDA
)

// maxBatch bounds each of an entry's three lists (a checkpoint or an end
// is a few dozen bytes, a begin about a hundred plus the file name and
// OACK).
const maxBatch = 1024

// progress is a decoded checkpoint.
type progress struct {
	key       string
	id, block uint64
	off, ns   int64
	netascii  uint8
}

// ended is a transfer's end waiting to be replicated. It names the
// transfer's ID besides its key (the client's address): a client's next
// transfer may come from the same address and port (an ephemeral port
// used again, which a boot storm of many sockets hits), and begins
// while the end of the earlier one is still queued; an end by key alone
// would then remove the new transfer's record, and a new leader would not
// resume it.
type ended struct {
	key string
	id  uint64
}

// batch is what one batchTag entry carries.
type batch struct {
	begins   []Record
	progress []Record
	ends     []ended
}

func (b *batch) empty() bool { return len(b.begins) == 0 && len(b.progress) == 0 && len(b.ends) == 0 }

var errBadBatch = errors.New("cluster: malformed batch entry")

func appendProgressBody(b []byte, r *Record) []byte {
	key := r.Key()
	b = append(b, byte(len(key)))
	b = append(b, key...)
	b = binary.AppendUvarint(b, r.State.ID)
	b = binary.AppendUvarint(b, r.State.Block)
	b = binary.AppendVarint(b, r.State.Offset)
	b = append(b, r.State.Netascii)
	return binary.AppendVarint(b, r.Updated.UnixNano())
}

// encode builds the batchTag entry; it fails only on a state that does
// not encode (an invalid address).
func (b *batch) encode() ([]byte, error) {
	out := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(b.begins)*160+len(b.progress)*(2+48+4*binary.MaxVarintLen64)+len(b.ends)*(2+48+binary.MaxVarintLen64))
	out = append(out, batchTag)
	out = binary.AppendUvarint(out, uint64(len(b.begins)))
	out = binary.AppendUvarint(out, uint64(len(b.progress)))
	out = binary.AppendUvarint(out, uint64(len(b.ends)))
	for i := range b.begins {
		r := &b.begins[i]
		st, err := r.State.MarshalBinary()
		if err != nil {
			return nil, err
		}
		out = binary.AppendUvarint(out, uint64(len(st)))
		out = append(out, st...)
		out = binary.AppendUvarint(out, uint64(len(r.SHA256)))
		out = append(out, r.SHA256...)
		out = binary.AppendVarint(out, r.Updated.UnixNano())
	}
	for i := range b.progress {
		out = appendProgressBody(out, &b.progress[i])
	}
	for _, e := range b.ends {
		out = append(out, byte(len(e.key)))
		out = append(out, e.key...)
		out = binary.AppendUvarint(out, e.id)
	}
	return out, nil
}

// decoded is a parsed batchTag entry.
type decoded struct {
	begins   []Record
	progress []progress
	ends     []ended
}

// decodeBatch parses a batchTag entry (b[0] is the tag).
func decodeBatch(b []byte) (*decoded, error) {
	d := wire.Reader{B: b[1:]}
	nb, np, ne := d.Uvarint(), d.Uvarint(), d.Uvarint()
	if d.Bad || nb > maxBatch || np > maxBatch || ne > maxBatch {
		return nil, errBadBatch
	}
	out := &decoded{begins: make([]Record, 0, nb), progress: make([]progress, 0, np), ends: make([]ended, 0, ne)}
	for range nb {
		var r Record
		st := d.Bytes()
		sum := d.Bytes()
		ns := d.Varint()
		if d.Bad {
			return nil, errBadBatch
		}
		if err := r.State.UnmarshalBinary(st); err != nil {
			return nil, errBadBatch
		}
		r.SHA256, r.Updated = string(sum), time.Unix(0, ns)
		out.begins = append(out.begins, r)
	}
	for range np {
		p, rest, err := parseProgressBody(d.B)
		if err != nil {
			return nil, errBadBatch
		}
		out.progress = append(out.progress, p)
		d.B = rest
	}
	for range ne {
		key := d.Short()
		id := d.Uvarint()
		if d.Bad {
			return nil, errBadBatch
		}
		out.ends = append(out.ends, ended{key: key, id: id})
	}
	if len(d.B) != 0 {
		return nil, errBadBatch
	}
	return out, nil
}

// parseProgressBody decodes one checkpoint body from the front of b and
// returns the rest.
func parseProgressBody(b []byte) (p progress, rest []byte, err error) {
	d := wire.Reader{B: b}
	p.key = d.Short()
	p.id, p.block, p.off = d.Uvarint(), d.Uvarint(), d.Varint()
	p.netascii = d.Byte()
	p.ns = d.Varint()
	if d.Bad || p.netascii > 2 {
		return p, nil, errBadProgress
	}
	return p, d.B, nil
}

// applyBatch applies a batchTag entry: its begins, checkpoints and ends
// in that order, or, when any part is malformed, nothing.
func (f *fsm) applyBatch(b []byte) error {
	d, err := decodeBatch(b)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range d.begins {
		f.beginLocked(r)
	}
	for i := range d.progress {
		f.moveLocked(&d.progress[i])
	}
	for _, e := range d.ends {
		f.endLocked(e.key, e.id)
	}
	return nil
}

// applyProgressBatch applies a progressBatchTag entry (an earlier
// version's): every checkpoint in it, or, when any part is malformed,
// none.
func (f *fsm) applyProgressBatch(b []byte) error {
	if len(b) < 1 {
		return errBadProgress
	}
	n, k := binary.Uvarint(b[1:])
	if k <= 0 || n > maxBatch {
		return errBadProgress
	}
	b = b[1+k:]
	ps := make([]progress, 0, n)
	for range n {
		p, rest, err := parseProgressBody(b)
		if err != nil {
			return err
		}
		ps = append(ps, p)
		b = rest
	}
	if len(b) != 0 {
		return errBadProgress
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range ps {
		f.moveLocked(&ps[i])
	}
	return nil
}

// beginLocked records a transfer that began. f.mu is held.
func (f *fsm) beginLocked(r Record) {
	f.transfers[r.Key()] = r
	if f.onBegin != nil {
		f.onBegin(r)
	}
}

// moveLocked moves a transfer's record to a later checkpoint; a
// checkpoint of another transfer of the same client (an older ID) or an
// earlier block is ignored. f.mu is held.
func (f *fsm) moveLocked(p *progress) {
	if r, ok := f.transfers[p.key]; ok && r.State.ID == p.id && p.block >= r.State.Block {
		r.State.Block, r.State.Offset, r.State.Netascii, r.Updated = p.block, p.off, p.netascii, time.Unix(0, p.ns)
		f.transfers[p.key] = r
	}
}

// endLocked removes the record under key if it is transfer id's (id 0:
// whichever it is), and discards that transfer's upload. f.mu is held.
func (f *fsm) endLocked(key string, id uint64) {
	if r, ok := f.transfers[key]; ok && id != 0 && r.State.ID != id {
		return // the end of an earlier transfer from the same address and port
	}
	delete(f.transfers, key)
	if st := f.uploads[key]; st != nil {
		delete(f.uploads, key)
		if st.up != nil {
			st.up.Abort()
		}
	}
}

// batchAsync starts committing b as one entry and returns at once:
// ErrNotLeader when the node does not lead.
func (n *Node) batchAsync(b *batch) (raft.ApplyFuture, error) {
	if !n.IsLeader() {
		return nil, ErrNotLeader
	}
	e, err := b.encode()
	if err != nil {
		return nil, fmt.Errorf("cluster: encode a batch entry: %w", err)
	}
	return n.raft.Apply(e, 5*time.Second), nil
}
