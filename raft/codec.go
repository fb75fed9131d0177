package raft

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	hraft "github.com/hashicorp/raft"
)

// The wire encoding of the RPC bodies. Every message is a sequence of
// fields in declaration order:
//
//   - unsigned integers as uvarints, signed ones as zig-zag varints;
//   - byte slices as uvarint(len+1) then the bytes, uvarint 0 meaning nil, so
//     nil and empty survive the trip;
//   - booleans packed into one flags byte per message;
//   - log entries as a count (nil-aware like byte slices), then per entry the
//     index and term as deltas from the previous entry (wrapping, so any
//     value round-trips), the type byte, data, extensions and AppendedAt;
//   - times as a tag byte: 0 the zero time, 1 absolute (varint seconds,
//     uvarint nanoseconds), 2 a varint nanosecond delta from the previous
//     entry's time.
//
// Encoders append to a caller's buffer and never allocate beyond its growth.
// Decoders never use reflection; with alias set, decoded byte slices point
// into the input (the frame buffer is then owned by the decoded message).

const (
	timeZero  = 0
	timeAbs   = 1
	timeDelta = 2
)

func putUvarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }
func putVarint(b []byte, v int64) []byte   { return binary.AppendVarint(b, v) }

func putBytes(b, v []byte) []byte {
	if v == nil {
		return append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(v))+1)
	return append(b, v...)
}

func putHeader(b []byte, h *hraft.RPCHeader) []byte {
	b = putVarint(b, int64(h.ProtocolVersion))
	b = putBytes(b, h.ID)
	return putBytes(b, h.Addr)
}

func boolBit(v bool, bit byte) byte {
	if v {
		return bit
	}
	return 0
}

func appendAppendEntriesRequest(b []byte, r *hraft.AppendEntriesRequest) []byte {
	b = putHeader(b, &r.RPCHeader)
	b = putUvarint(b, r.Term)
	//lint:ignore SA1019 raft v1.8 still falls back to Leader when RPCHeader.Addr is empty (older senders): the wire keeps it
	b = putBytes(b, r.Leader)
	b = putUvarint(b, r.PrevLogEntry)
	b = putUvarint(b, r.PrevLogTerm)
	b = putUvarint(b, r.LeaderCommitIndex)
	if r.Entries == nil {
		return append(b, 0)
	}
	b = putUvarint(b, uint64(len(r.Entries))+1)
	var prevIdx, prevTerm uint64
	var prevAt time.Time
	for _, e := range r.Entries {
		if e == nil {
			e = &hraft.Log{} // raft never sends nil entries; encode as zero
		}
		b = putUvarint(b, e.Index-prevIdx)
		b = putUvarint(b, e.Term-prevTerm)
		prevIdx, prevTerm = e.Index, e.Term
		b = append(b, byte(e.Type))
		b = putBytes(b, e.Data)
		b = putBytes(b, e.Extensions)
		b = putTime(b, e.AppendedAt, prevAt)
		prevAt = e.AppendedAt
	}
	return b
}

func putTime(b []byte, t, prev time.Time) []byte {
	if t.IsZero() {
		return append(b, timeZero)
	}
	if !prev.IsZero() {
		// Wall clock only: with monotonic readings on both, Sub and Equal
		// would use those instead.
		t, prev = t.Round(0), prev.Round(0)
		d := t.Sub(prev)
		if prev.Add(d).Equal(t) {
			b = append(b, timeDelta)
			return putVarint(b, int64(d))
		}
	}
	b = append(b, timeAbs)
	b = putVarint(b, t.Unix())
	return putUvarint(b, uint64(t.Nanosecond()))
}

func appendAppendEntriesResponse(b []byte, r *hraft.AppendEntriesResponse) []byte {
	b = putHeader(b, &r.RPCHeader)
	b = putUvarint(b, r.Term)
	b = putUvarint(b, r.LastLog)
	return append(b, boolBit(r.Success, 1)|boolBit(r.NoRetryBackoff, 2))
}

func appendRequestVoteRequest(b []byte, r *hraft.RequestVoteRequest) []byte {
	b = putHeader(b, &r.RPCHeader)
	b = putUvarint(b, r.Term)
	//lint:ignore SA1019 raft v1.8 still falls back to Candidate when RPCHeader.Addr is empty (older senders): the wire keeps it
	b = putBytes(b, r.Candidate)
	b = putUvarint(b, r.LastLogIndex)
	b = putUvarint(b, r.LastLogTerm)
	return append(b, boolBit(r.LeadershipTransfer, 1))
}

func appendRequestVoteResponse(b []byte, r *hraft.RequestVoteResponse) []byte {
	b = putHeader(b, &r.RPCHeader)
	b = putUvarint(b, r.Term)
	b = putBytes(b, r.Peers)
	return append(b, boolBit(r.Granted, 1))
}

func appendRequestPreVoteRequest(b []byte, r *hraft.RequestPreVoteRequest) []byte {
	b = putHeader(b, &r.RPCHeader)
	b = putUvarint(b, r.Term)
	b = putUvarint(b, r.LastLogIndex)
	return putUvarint(b, r.LastLogTerm)
}

func appendRequestPreVoteResponse(b []byte, r *hraft.RequestPreVoteResponse) []byte {
	b = putHeader(b, &r.RPCHeader)
	b = putUvarint(b, r.Term)
	return append(b, boolBit(r.Granted, 1))
}

func appendInstallSnapshotRequest(b []byte, r *hraft.InstallSnapshotRequest) []byte {
	b = putHeader(b, &r.RPCHeader)
	b = putVarint(b, int64(r.SnapshotVersion))
	b = putUvarint(b, r.Term)
	b = putBytes(b, r.Leader)
	b = putUvarint(b, r.LastLogIndex)
	b = putUvarint(b, r.LastLogTerm)
	b = putBytes(b, r.Peers)
	b = putBytes(b, r.Configuration)
	b = putUvarint(b, r.ConfigurationIndex)
	return putVarint(b, r.Size)
}

func appendInstallSnapshotResponse(b []byte, r *hraft.InstallSnapshotResponse) []byte {
	b = putHeader(b, &r.RPCHeader)
	b = putUvarint(b, r.Term)
	return append(b, boolBit(r.Success, 1))
}

func appendTimeoutNowRequest(b []byte, r *hraft.TimeoutNowRequest) []byte {
	return putHeader(b, &r.RPCHeader)
}

func appendTimeoutNowResponse(b []byte, r *hraft.TimeoutNowResponse) []byte {
	return putHeader(b, &r.RPCHeader)
}

// decoder reads fields from b. The first error sticks; every read after it
// returns a zero value, so a decode function checks d.err once at the end.
type decoder struct {
	b     []byte
	off   int
	err   error
	alias bool // byte slices alias b instead of being copied
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: bad %s at offset %d", ErrMalformed, what, d.off)
	}
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.off += n
	return v
}

// int decodes a varint that must fit a Go int (ProtocolVersion and
// SnapshotVersion are ints).
func (d *decoder) int(what string) int {
	v := d.varint(what)
	if v < math.MinInt || v > math.MaxInt {
		d.fail(what)
		return 0
	}
	return int(v)
}

func (d *decoder) byte1(what string) byte {
	if d.err != nil {
		return 0
	}
	if d.off >= len(d.b) {
		d.fail(what)
		return 0
	}
	v := d.b[d.off]
	d.off++
	return v
}

// flags reads a flags byte whose bits above mask must be clear.
func (d *decoder) flags(what string, mask byte) byte {
	v := d.byte1(what)
	if v&^mask != 0 {
		d.fail(what)
		return 0
	}
	return v
}

func (d *decoder) bytes(what string) []byte {
	n := d.uvarint(what)
	if d.err != nil || n == 0 {
		return nil
	}
	n--
	if n > uint64(len(d.b)-d.off) {
		d.fail(what)
		return nil
	}
	v := d.b[d.off : d.off+int(n) : d.off+int(n)]
	d.off += int(n)
	if !d.alias {
		v = append(make([]byte, 0, len(v)), v...)
	}
	return v
}

func (d *decoder) header(h *hraft.RPCHeader) {
	h.ProtocolVersion = hraft.ProtocolVersion(d.int("protocol version"))
	h.ID = d.bytes("header id")
	h.Addr = d.bytes("header addr")
}

func (d *decoder) time(prev time.Time) time.Time {
	switch d.byte1("time tag") {
	case timeZero:
		return time.Time{}
	case timeAbs:
		sec := d.varint("time seconds")
		nsec := d.uvarint("time nanoseconds")
		if nsec >= 1e9 {
			d.fail("time nanoseconds")
			return time.Time{}
		}
		t := time.Unix(sec, int64(nsec))
		if t.IsZero() {
			d.fail("time") // the zero time has its own tag
		}
		return t
	case timeDelta:
		dn := d.varint("time delta")
		if prev.IsZero() {
			d.fail("time delta")
			return time.Time{}
		}
		t := prev.Add(time.Duration(dn))
		if t.IsZero() || !prev.Add(t.Sub(prev)).Equal(t) || t.Sub(prev) != time.Duration(dn) {
			d.fail("time delta") // not what an encoder would produce
		}
		return t
	default:
		d.fail("time tag")
		return time.Time{}
	}
}

// end checks that every byte was used.
func (d *decoder) end() error {
	if d.err == nil && d.off != len(d.b) {
		d.err = fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(d.b)-d.off)
	}
	return d.err
}

// minEntrySize is the smallest encoding of one log entry: index, term, type,
// data, extensions and time tag, one byte each.
const minEntrySize = 6

func decodeAppendEntriesRequest(b []byte, r *hraft.AppendEntriesRequest, alias bool) error {
	d := decoder{b: b, alias: alias}
	d.header(&r.RPCHeader)
	r.Term = d.uvarint("term")
	//lint:ignore SA1019 raft v1.8 still falls back to Leader when RPCHeader.Addr is empty (older senders): the wire keeps it
	r.Leader = d.bytes("leader")
	r.PrevLogEntry = d.uvarint("prev log entry")
	r.PrevLogTerm = d.uvarint("prev log term")
	r.LeaderCommitIndex = d.uvarint("leader commit index")
	n := d.uvarint("entry count")
	r.Entries = nil
	if d.err != nil || n == 0 {
		return d.end()
	}
	n--
	if n > uint64(len(b)-d.off)/minEntrySize {
		d.fail("entry count")
		return d.err
	}
	logs := make([]hraft.Log, n)
	r.Entries = make([]*hraft.Log, n)
	var prevIdx, prevTerm uint64
	var prevAt time.Time
	for i := range logs {
		e := &logs[i]
		e.Index = prevIdx + d.uvarint("entry index")
		e.Term = prevTerm + d.uvarint("entry term")
		prevIdx, prevTerm = e.Index, e.Term
		e.Type = hraft.LogType(d.byte1("entry type"))
		e.Data = d.bytes("entry data")
		e.Extensions = d.bytes("entry extensions")
		e.AppendedAt = d.time(prevAt)
		prevAt = e.AppendedAt
		r.Entries[i] = e
		if d.err != nil {
			return d.err
		}
	}
	return d.end()
}

func decodeAppendEntriesResponse(b []byte, r *hraft.AppendEntriesResponse) error {
	d := decoder{b: b}
	d.header(&r.RPCHeader)
	r.Term = d.uvarint("term")
	r.LastLog = d.uvarint("last log")
	f := d.flags("flags", 3)
	r.Success, r.NoRetryBackoff = f&1 != 0, f&2 != 0
	return d.end()
}

func decodeRequestVoteRequest(b []byte, r *hraft.RequestVoteRequest, alias bool) error {
	d := decoder{b: b, alias: alias}
	d.header(&r.RPCHeader)
	r.Term = d.uvarint("term")
	//lint:ignore SA1019 raft v1.8 still falls back to Candidate when RPCHeader.Addr is empty (older senders): the wire keeps it
	r.Candidate = d.bytes("candidate")
	r.LastLogIndex = d.uvarint("last log index")
	r.LastLogTerm = d.uvarint("last log term")
	r.LeadershipTransfer = d.flags("flags", 1) != 0
	return d.end()
}

func decodeRequestVoteResponse(b []byte, r *hraft.RequestVoteResponse) error {
	d := decoder{b: b}
	d.header(&r.RPCHeader)
	r.Term = d.uvarint("term")
	r.Peers = d.bytes("peers")
	r.Granted = d.flags("flags", 1) != 0
	return d.end()
}

func decodeRequestPreVoteRequest(b []byte, r *hraft.RequestPreVoteRequest, alias bool) error {
	d := decoder{b: b, alias: alias}
	d.header(&r.RPCHeader)
	r.Term = d.uvarint("term")
	r.LastLogIndex = d.uvarint("last log index")
	r.LastLogTerm = d.uvarint("last log term")
	return d.end()
}

func decodeRequestPreVoteResponse(b []byte, r *hraft.RequestPreVoteResponse) error {
	d := decoder{b: b}
	d.header(&r.RPCHeader)
	r.Term = d.uvarint("term")
	r.Granted = d.flags("flags", 1) != 0
	return d.end()
}

func decodeInstallSnapshotRequest(b []byte, r *hraft.InstallSnapshotRequest, alias bool) error {
	d := decoder{b: b, alias: alias}
	d.header(&r.RPCHeader)
	r.SnapshotVersion = hraft.SnapshotVersion(d.int("snapshot version"))
	r.Term = d.uvarint("term")
	r.Leader = d.bytes("leader")
	r.LastLogIndex = d.uvarint("last log index")
	r.LastLogTerm = d.uvarint("last log term")
	r.Peers = d.bytes("peers")
	r.Configuration = d.bytes("configuration")
	r.ConfigurationIndex = d.uvarint("configuration index")
	r.Size = d.varint("size")
	if r.Size < 0 {
		d.fail("size")
	}
	return d.end()
}

func decodeInstallSnapshotResponse(b []byte, r *hraft.InstallSnapshotResponse) error {
	d := decoder{b: b}
	d.header(&r.RPCHeader)
	r.Term = d.uvarint("term")
	r.Success = d.flags("flags", 1) != 0
	return d.end()
}

func decodeTimeoutNowRequest(b []byte, r *hraft.TimeoutNowRequest, alias bool) error {
	d := decoder{b: b, alias: alias}
	d.header(&r.RPCHeader)
	return d.end()
}

func decodeTimeoutNowResponse(b []byte, r *hraft.TimeoutNowResponse) error {
	d := decoder{b: b}
	d.header(&r.RPCHeader)
	return d.end()
}

// isHeartbeat reports whether an AppendEntries request is a heartbeat, with
// the same test as raft.NetworkTransport.
func isHeartbeat(r *hraft.AppendEntriesRequest) bool {
	leader := r.Addr
	if len(leader) == 0 {
		//lint:ignore SA1019 raft v1.8 still falls back to Leader when RPCHeader.Addr is empty (older senders): the wire keeps it
		leader = r.Leader
	}
	return r.Term != 0 && leader != nil && r.PrevLogEntry == 0 && r.PrevLogTerm == 0 &&
		len(r.Entries) == 0 && r.LeaderCommitIndex == 0
}

// EncodeAppendEntries appends the wire encoding of an AppendEntries request
// body (no framing) to dst. It is exported for benchmarks and tools; the
// transport uses it internally.
func EncodeAppendEntries(dst []byte, r *hraft.AppendEntriesRequest) []byte {
	return appendAppendEntriesRequest(dst, r)
}

// DecodeAppendEntries decodes what EncodeAppendEntries produced into r. The
// entries' Data and Extensions, and the byte fields, alias b: b must not be
// modified while r is in use. Bad input fails with an error wrapping
// ErrMalformed.
func DecodeAppendEntries(b []byte, r *hraft.AppendEntriesRequest) error {
	return decodeAppendEntriesRequest(b, r, true)
}
