package tftp

import (
	"fmt"
	"time"
)

// receiver is the receiving side of a transfer, the server of a WRQ or the
// client of an RRQ, as a pure state machine: DATA and timeouts go in, with
// the time; the ACK to send comes out of emit. The caller delivers the
// payloads data accepts, in order, and emits the ACK after it has stored
// them (the server commits an upload before the last ACK).
//
// With a window (RFC 7440) it acknowledges every windowsize blocks, at the
// last block, and once when it sees a gap (a block ahead of the one it
// expects, which it drops). Duplicates of blocks it has, which mean the
// sender missed its ACK, are acknowledged again once per window's worth.
// A timeout acknowledges again with back-off until the retries run out.
// After the last block it dallies: a retransmitted last block gets the last
// ACK again.
type receiver struct {
	bs, window int
	roll       Rollover

	next     uint64 // the block expected
	sinceAck int    // blocks accepted since the last ACK
	dups     int    // duplicates since the last progress
	gapAcked bool   // a gap has been acknowledged since the last progress
	received int64  // payload bytes accepted

	first   []byte // what acknowledges block 0: ACK 0 or the OACK
	ackBuf  [4]byte
	outBuf  [4]byte // the ACK emitted: stable while ackBuf changes
	ack     []byte
	ackFor  uint64 // the block ack acknowledges
	pending bool
	sent    bool   // an ack has been emitted
	sentFor uint64 // the block the last emitted ack acknowledged
	resends uint64 // acks emitted again for the same block

	rto        rto
	retries    int
	maxRetries int
	// firstRetries bounds the retries until heard: see sender.
	firstRetries int
	heard        bool // a DATA came from the sender
	deadline     time.Time
	expires      time.Time
	dally        time.Duration

	phase phase
	err   error
}

type receiverConfig struct {
	blockSize, window int
	roll              Rollover
	// first acknowledges block 0: the OACK of a server, or nil for ACK 0.
	// A client that got an OACK passes nil and calls ackFirst; one that got
	// DATA 1 at once just passes it to data.
	first []byte
	// next is the block expected first: 1, or a checkpoint's block + 1.
	next       uint64
	rto        rto
	maxRetries int
	// firstRetries, when limitFirst, bounds the retransmissions of
	// the first acknowledgement until the sender answers.
	firstRetries int
	limitFirst   bool
	expires      time.Time
	// dally is how long to linger after the last block, re-acknowledging
	// it if the sender did not get the ACK.
	dally time.Duration
}

func newReceiver(c receiverConfig) *receiver {
	r := &receiver{
		bs: c.blockSize, window: max(c.window, 1), roll: c.roll, next: max(c.next, 1),
		rto: c.rto, maxRetries: c.maxRetries, expires: c.expires, dally: c.dally,
		first: c.first, firstRetries: firstRetries(c.limitFirst, c.firstRetries, c.maxRetries),
	}
	r.setAck(r.next - 1)
	r.pending = false
	return r
}

// ackFirst queues the acknowledgment of block 0 (the OACK or ACK 0) to be
// emitted.
func (r *receiver) ackFirst() {
	r.setAck(r.next - 1)
}

func (r *receiver) setAck(i uint64) {
	r.ackFor = i
	if i == 0 && r.first != nil {
		r.ack = r.first
	} else {
		w := r.roll.wire(i)
		r.ackBuf = [4]byte{0, byte(OpACK), byte(w >> 8), byte(w)}
		r.ack = r.ackBuf[:]
	}
	r.pending = true
	r.sinceAck = 0
}

func (r *receiver) fail(err error) event {
	r.phase, r.err, r.pending = phaseFailed, err, false
	return evFailed
}

// recvResult says what to do with a DATA payload.
type recvResult uint8

const (
	recvIgnore  recvResult = iota // drop it (an ACK may be pending)
	recvDeliver                   // store it
	recvLast                      // store it: it is the last block
	recvFailed                    // the transfer failed; see err
)

// data handles a DATA packet with wire block number w and n payload bytes.
func (r *receiver) data(now time.Time, w uint16, n int) recvResult {
	switch r.phase {
	case phaseFailed:
		return recvIgnore
	case phaseDone:
		r.heard = true
		if _, ok := r.roll.index(w, r.next-1, 1); ok {
			r.pending = true // the sender missed the last ACK
		}
		return recvIgnore
	}
	r.heard = true
	if !r.expires.IsZero() && !now.Before(r.expires) {
		r.fail(errTransferDeadline)
		return recvFailed
	}
	if _, ok := r.roll.index(w, r.next, 1); ok {
		if n > r.bs {
			r.fail(fmt.Errorf("%w DATA: %d bytes in a %d-byte block", ErrMalformed, n, r.bs))
			return recvFailed
		}
		if r.roll.exceeds(r.next) {
			r.fail(errTooManyBlocks)
			return recvFailed
		}
		r.next++
		r.received += int64(n)
		r.retries, r.dups, r.gapAcked = 0, 0, false
		r.rto.progress()
		r.deadline = now.Add(r.rto.wait())
		r.sinceAck++
		if n < r.bs {
			r.setAck(r.next - 1)
			r.phase = phaseDone
			r.deadline = now.Add(r.dally)
			return recvLast
		}
		if r.sinceAck >= r.window {
			r.setAck(r.next - 1)
		}
		return recvDeliver
	}
	if _, ok := r.roll.index(w, r.next+1, 1<<15); ok {
		if !r.gapAcked {
			r.gapAcked = true
			r.setAck(r.next - 1)
		}
		return recvIgnore
	}
	// A block we have: the sender missed an ACK, or the network
	// duplicated the block.
	if r.dups%r.window == 0 {
		r.setAck(r.next - 1)
	}
	r.dups++
	return recvIgnore
}

// timeout handles the timer. While running, it acknowledges again; once
// done, the end of the dally returns evDone.
func (r *receiver) timeout(now time.Time) event {
	switch r.phase {
	case phaseFailed:
		return evNone
	case phaseDone:
		if now.Before(r.deadline) {
			return evNone
		}
		return evDone
	}
	if !r.expires.IsZero() && !now.Before(r.expires) {
		return r.fail(errTransferDeadline)
	}
	if now.Before(r.deadline) || r.pending {
		return evNone
	}
	r.retries++
	limit := r.maxRetries
	if !r.heard {
		limit = r.firstRetries
	}
	if r.retries > limit {
		return r.fail(fmt.Errorf("%w after %d retransmissions", ErrTimeout, limit))
	}
	r.rto.expired()
	r.setAck(r.next - 1)
	return evProgress
}

// emit returns the ACK (or OACK) to send now, or nil. It stays valid until
// the next call of emit, whatever data and timeout do meanwhile: a driver
// may hand it to a socket that sends it later.
func (r *receiver) emit(now time.Time) []byte {
	if !r.pending || r.phase == phaseFailed {
		return nil
	}
	r.pending = false
	if r.sent && r.sentFor == r.ackFor {
		r.resends++
	}
	r.sent, r.sentFor = true, r.ackFor
	if r.phase == phaseRunning {
		r.deadline = now.Add(r.rto.wait())
	}
	if len(r.ack) == 4 && &r.ack[0] == &r.ackBuf[0] {
		r.outBuf = r.ackBuf
		return r.outBuf[:]
	}
	return r.ack
}

// nextDeadline returns when timeout should be called next.
func (r *receiver) nextDeadline() time.Time {
	if r.phase == phaseRunning && !r.expires.IsZero() && r.expires.Before(r.deadline) {
		return r.expires
	}
	return r.deadline
}

// checkpoint returns the last block received.
func (r *receiver) checkpoint() uint64 { return r.next - 1 }
