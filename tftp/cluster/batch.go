package cluster

import (
	"encoding/binary"
	"encoding/json"
	"time"

	"github.com/hashicorp/raft"
)

// Coalesced checkpoints. In a boot storm, 200 transfers each checkpointing
// every 20 ms would be 10,000 raft entries a second, each with its own log
// index, append and apply; instead the replicator takes every checkpoint
// waiting when it next goes to raft and sends them as one entry:
// progressBatchTag, the count as a uvarint, then per checkpoint the key's
// length (1 byte) and key, the transfer's ID, block, offset, netascii
// state and time as varints (the body of a progressTag entry). An entry is
// applied whole or, malformed, not at all.
const progressBatchTag = 0xD9

// maxBatch bounds the checkpoints of one entry (a few dozen bytes each).
const maxBatch = 1024

// progress is a decoded checkpoint.
type progress struct {
	key       string
	id, block uint64
	off, ns   int64
	netascii  uint8
}

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

// encodeProgressBatch builds the log entry of several checkpoints.
func encodeProgressBatch(recs []Record) []byte {
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(recs)*(2+48+4*binary.MaxVarintLen64))
	b = append(b, progressBatchTag)
	b = binary.AppendUvarint(b, uint64(len(recs)))
	for i := range recs {
		b = appendProgressBody(b, &recs[i])
	}
	return b
}

// parseProgressBody decodes one checkpoint body from the front of b and
// returns the rest.
func parseProgressBody(b []byte) (p progress, rest []byte, err error) {
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return p, nil, errBadProgress
	}
	k := 1 + int(b[0]) // int: a byte sum would wrap
	p.key = string(b[1:k])
	b = b[k:]
	bad := false
	uvarint := func() uint64 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			bad = true
			return 0
		}
		b = b[n:]
		return v
	}
	varint := func() int64 { // zig-zag, as binary.AppendVarint wrote it
		u := uvarint()
		return int64(u>>1) ^ -int64(u&1)
	}
	p.id, p.block, p.off = uvarint(), uvarint(), varint()
	if bad || len(b) < 1 {
		return p, nil, errBadProgress
	}
	p.netascii = b[0]
	b = b[1:]
	p.ns = varint()
	if bad || p.netascii > 2 {
		return p, nil, errBadProgress
	}
	return p, b, nil
}

// applyProgressBatch applies a progressBatchTag entry: every checkpoint
// in it, or, when any part is malformed, none.
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

// moveLocked moves a transfer's record to a later checkpoint; a
// checkpoint of another transfer of the same client (an older ID) or an
// earlier block is ignored. f.mu is held.
func (f *fsm) moveLocked(p *progress) {
	if r, ok := f.transfers[p.key]; ok && r.State.ID == p.id && p.block >= r.State.Block {
		r.State.Block, r.State.Offset, r.State.Netascii, r.Updated = p.block, p.off, p.netascii, time.Unix(0, p.ns)
		f.transfers[p.key] = r
	}
}

// progressBatchAsync starts committing several checkpoints as one entry
// and returns at once; nil when the node does not lead.
func (n *Node) progressBatchAsync(recs []Record) raft.ApplyFuture {
	if !n.IsLeader() {
		return nil
	}
	return n.raft.Apply(encodeProgressBatch(recs), 5*time.Second)
}

// ended is a transfer's end waiting to be replicated. It names the
// transfer's ID besides its key (the client's address): a client's next
// transfer may come from the same address and port (an ephemeral port
// used again, which a boot storm of many sockets hits), and begins
// synchronously while the end of the earlier one is still queued; an end
// by key alone would then remove the new transfer's record, and a new
// leader would not resume it.
type ended struct {
	key string
	id  uint64
}

// endTransferAsync starts removing the record of transfer id under key,
// if it is still that transfer's, and returns at once; nil when the node
// does not lead.
func (n *Node) endTransferAsync(key string, id uint64) raft.ApplyFuture {
	if !n.IsLeader() {
		return nil
	}
	b, err := json.Marshal(command{Op: opEnd, ID: key, Xfer: id})
	if err != nil {
		return nil
	}
	return n.raft.Apply(b, 5*time.Second)
}
