package raft

import (
	"encoding/binary"
	"fmt"
)

// Framing. A connection starts with the client's 8-byte preamble; after it
// both directions carry frames:
//
//	uint32 big-endian N   length of what follows, 2 ≤ N ≤ MaxFrameSize
//	byte   kind           an RPC kind, or kindResponse
//	uvarint id            the request's id, echoed by its response
//	body                  the codec encoding of the message
//
// A response body starts with a flags byte (respError: an error string
// follows; respPayload: the response message follows, after the error if
// both). An InstallSnapshot request frame is followed by exactly Size raw
// bytes of snapshot data; its connection carries nothing else.

// rpcKind names an RPC on the wire and in metrics.
type rpcKind uint8

const (
	kindAppendEntries rpcKind = iota + 1
	kindRequestVote
	kindInstallSnapshot
	kindTimeoutNow
	kindRequestPreVote
	kindHeartbeat         // an AppendEntries sent as a heartbeat (metrics only; AppendEntries on the wire)
	kindResponse  rpcKind = 0x80
)

const numKinds = int(kindHeartbeat) + 1

var kindNames = [numKinds]string{
	kindAppendEntries:   "append_entries",
	kindRequestVote:     "request_vote",
	kindInstallSnapshot: "install_snapshot",
	kindTimeoutNow:      "timeout_now",
	kindRequestPreVote:  "request_pre_vote",
	kindHeartbeat:       "heartbeat",
}

func (k rpcKind) String() string {
	if int(k) < numKinds && kindNames[k] != "" {
		return kindNames[k]
	}
	if k == kindResponse {
		return "response"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

const (
	respError   = 1
	respPayload = 2
)

// preamble opens every connection: a magic and a version byte.
var preamble = [8]byte{'i', 'o', 'r', 'a', 'f', 't', 0, 1}

const frameHeaderLen = 4

// beginFrame appends a frame header with a placeholder length and returns
// the buffer and the frame's start offset.
func beginFrame(b []byte, kind rpcKind, id uint64) ([]byte, int) {
	start := len(b)
	b = append(b, 0, 0, 0, 0, byte(kind))
	return binary.AppendUvarint(b, id), start
}

// endFrame patches the length of the frame that starts at start. A frame
// longer than max is cut off again and reported.
func endFrame(b []byte, start, max int) ([]byte, error) {
	n := len(b) - start - frameHeaderLen
	if n > max {
		return b[:start], fmt.Errorf("%w: %d bytes, the maximum is %d", ErrFrameTooLarge, n, max)
	}
	binary.BigEndian.PutUint32(b[start:], uint32(n))
	return b, nil
}

// frameReader reassembles frames from a byte stream. Frames that arrive
// whole in one read are handed out in place (valid only until the next
// feed); a frame split across reads is assembled in buf, a fresh buffer when
// fresh is set (so that the frame may be kept), else a reused one.
type frameReader struct {
	max   int
	fresh bool
	// bud, when set, is charged for the reassembly buffer as it grows
	// (held is what this reader holds of it); a frame the budget cannot
	// take fails with ErrOverloaded.
	bud  *budget
	held int

	// alias: with fresh, a whole frame of at least aliasMin bytes in a
	// read is handed out in place, owned, instead of copied; the reader
	// then sets aliased, and the caller must not reuse the bytes it fed
	// (the dispatcher reads the socket into the rest of its buffer, then
	// into a new one). raft keeps an append's entries (Log.Data aliases the
	// frame) in its log store, so a follower's frames are its log's memory.
	alias, aliased bool

	hdr  [frameHeaderLen]byte
	hdrN int
	buf  []byte // the frame body being assembled
	need int    // bytes of body still missing; 0 when reading a header
}

// frame is one frame's content after the length: kind, id, body.
type frame struct {
	kind   rpcKind
	id     uint64
	body   []byte
	whole  []byte // kind+id+body, the storage the body aliases
	charge int    // bytes of the reader's budget the owned frame carries
}

// feed consumes p and calls fn for each complete frame; it returns the
// number of bytes of p consumed, which is less than len(p) only when fn
// returns stop (the rest is for the caller, e.g. raw snapshot data), and the
// first framing error.
func (r *frameReader) feed(p []byte, fn func(f frame, owned bool) (stop bool, err error)) (int, error) {
	used := 0
	for used < len(p) {
		if r.need == 0 {
			// Reading a header: fast path when all four bytes are here.
			var n uint32
			if r.hdrN == 0 && len(p)-used >= frameHeaderLen {
				n = binary.BigEndian.Uint32(p[used:])
				used += frameHeaderLen
			} else {
				k := copy(r.hdr[r.hdrN:], p[used:])
				r.hdrN += k
				used += k
				if r.hdrN < frameHeaderLen {
					return used, nil
				}
				r.hdrN = 0
				n = binary.BigEndian.Uint32(r.hdr[:])
			}
			if n < 2 {
				return used, fmt.Errorf("%w: frame length %d", ErrMalformed, n)
			}
			if uint64(n) > uint64(r.max) {
				return used, fmt.Errorf("%w: frame length %d, the maximum is %d", ErrFrameTooLarge, n, r.max)
			}
			if len(p)-used >= int(n) {
				// Whole frame in this read.
				body := p[used : used+int(n) : used+int(n)]
				used += int(n)
				owned := false
				if r.fresh {
					if r.bud != nil && !r.bud.take(len(body)) {
						return used, fmt.Errorf("%w: %d bytes of frames buffered by all connections, the maximum is %d", ErrOverloaded, r.bud.used.Load(), r.bud.max)
					}
					if r.alias && len(body) >= aliasMin {
						r.aliased = true
					} else {
						body = append(make([]byte, 0, len(body)), body...)
					}
					owned = true
				}
				f, err := parseFrame(body)
				if err != nil {
					if owned && r.bud != nil {
						r.bud.give(len(body))
					}
					return used, err
				}
				if owned && r.bud != nil {
					f.charge = len(body)
				}
				stop, err := fn(f, owned)
				if err != nil || stop {
					return used, err
				}
				continue
			}
			// The buffer grows as bytes arrive, never ahead of them from
			// the announced length: a length costs nothing until the
			// bytes behind it came.
			if r.fresh {
				r.buf = nil
			}
			r.buf = r.buf[:0]
			r.need = int(n)
			if r.fresh && r.need <= spareAhead && used < len(p) {
				// Part of it is here: room for all of it at once, as
				// spare makes, not grown and copied again.
				if err := r.grow(r.need); err != nil {
					return used, err
				}
			}
		}
		k := min(r.need, len(p)-used)
		if err := r.grow(k); err != nil {
			return used, err
		}
		r.buf = append(r.buf, p[used:used+k]...)
		used += k
		r.need -= k
		if r.need > 0 {
			return used, nil
		}
		stop, err := r.complete(fn)
		if err != nil || stop {
			return used, err
		}
	}
	return used, nil
}

// complete hands the frame assembled in buf to fn.
func (r *frameReader) complete(fn func(f frame, owned bool) (stop bool, err error)) (bool, error) {
	body := r.buf
	charge := 0
	if r.fresh {
		// The frame carries its charge to its owner.
		r.buf = nil
		charge, r.held = r.held, 0
	}
	f, err := parseFrame(body)
	if err != nil {
		if r.bud != nil {
			r.bud.give(charge)
		}
		return false, err
	}
	f.charge = charge
	return fn(f, r.fresh)
}

// spare returns room for up to max bytes of the frame body in progress, to
// read the socket into directly (then filled), growing the buffer as feed
// would; nil when no body is in progress. A reader of large frames (a
// follower's appends) then copies each byte once, from the kernel, instead
// of twice.
func (r *frameReader) spare(max int) ([]byte, error) {
	if r.need == 0 {
		return nil, nil
	}
	k := min(r.need, max)
	// Part of the frame is here and the rest is being read: up to
	// spareAhead, make room for all of it at once (charged to the budget
	// like any growth), rather than doubling and copying what came.
	if r.need <= spareAhead {
		k = r.need
	}
	if err := r.grow(k); err != nil {
		return nil, err
	}
	return r.buf[len(r.buf) : len(r.buf)+min(k, max)], nil
}

// aliasMin is the smallest frame handed out in place (alias): a smaller
// one is copied, so that it does not keep a whole read buffer alive.
const aliasMin = 2 << 10

// spareAhead bounds the room spare makes ahead of the bytes that came.
const spareAhead = 1 << 20

// filled takes n bytes read into spare's room, and hands the frame to fn
// if it is complete.
func (r *frameReader) filled(n int, fn func(f frame, owned bool) (stop bool, err error)) error {
	r.buf = r.buf[:len(r.buf)+n]
	r.need -= n
	if r.need > 0 {
		return nil
	}
	_, err := r.complete(fn)
	return err
}

// shrink drops a large reassembly buffer between frames.
func (r *frameReader) shrink() {
	if r.need == 0 && cap(r.buf) > 1<<20 {
		r.buf = nil
		r.release()
	}
}

// minGrow is the first capacity of a reassembly buffer.
const minGrow = 16 << 10

// grow makes room for k more bytes of the frame in progress (r.need of
// which are still missing), doubling, and charges the budget.
func (r *frameReader) grow(k int) error {
	if len(r.buf)+k <= cap(r.buf) {
		return nil
	}
	total := len(r.buf) + r.need // the whole frame body
	c := min(max(2*cap(r.buf), len(r.buf)+k, minGrow), total)
	if r.bud != nil && !r.bud.take(c-r.held) {
		return fmt.Errorf("%w: %d bytes of frames buffered by all connections, the maximum is %d", ErrOverloaded, r.bud.used.Load(), r.bud.max)
	}
	if r.bud != nil {
		r.held = c
	}
	nb := make([]byte, len(r.buf), c)
	copy(nb, r.buf)
	r.buf = nb
	return nil
}

// release gives back what the reader holds of the budget (the buffer was
// handed over or dropped).
func (r *frameReader) release() {
	if r.bud != nil && r.held > 0 {
		r.bud.give(r.held)
		r.held = 0
	}
}

// partial reports whether a frame is half read.
func (r *frameReader) partial() bool { return r.need > 0 || r.hdrN > 0 }

func parseFrame(b []byte) (frame, error) {
	kind := rpcKind(b[0])
	id, n := binary.Uvarint(b[1:])
	if n <= 0 {
		return frame{}, fmt.Errorf("%w: bad frame id", ErrMalformed)
	}
	return frame{kind: kind, id: id, body: b[1+n:], whole: b}, nil
}
