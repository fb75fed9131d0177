package raft

import (
	"sync"
	"sync/atomic"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// writer is the bridge from goroutines that produce frames (raft's callers,
// a server connection's dispatcher) to the connection actor that owns the
// socket. Producers append encoded frames to out under mu and kick the
// actor only when it is idle; the actor swaps out for its spare buffer and
// hands it to the tcp connection as one Write, ack-paced: while that write
// is in the kernel's hands the next batch accumulates. Two buffers, no
// allocation in steady state, one actor message per batch.
//
// While the actor is idle a producer writes its frames itself (sendLocked).
//
// Raw chunks (snapshot data) are queued behind the frames and written from
// the producer's own buffer, without a copy; the producer learns through
// chunk.done that the buffer is free again.
type writer struct {
	// direct writes frames from the producer's goroutine while the actor
	// is idle (see sendLocked); set before the writer is shared.
	direct *tcp.DirectWriter

	mu     sync.Mutex
	out    []byte      // frames waiting for the next write
	raws   []*rawChunk // raw data waiting, after out
	kicked bool        // a kick is queued, or the actor is busy writing
	closed error       // set once: every later enqueue fails with it
	// writing: the bytes handed to the tcp connection and not yet acked
	// (set by the actor; read by pending).
	writing atomic.Int64

	// Owned by the actor.
	spare []byte    // the other buffer, free
	wbuf  []byte    // the buffer being written
	wraw  *rawChunk // the raw chunk being written
	cmd   tcp.Write // reused: one write is pending at a time
}

// rawChunk is a buffer of raw bytes to write; done receives nil once the
// bytes are in the kernel, or the error that ended the connection.
type rawChunk struct {
	data []byte
	done chan error
}

type kickMsg struct{}

type writeAck struct{}

// maxSpare bounds the buffer kept between batches.
const maxSpare = 4 << 20

// kickLocked marks the writer busy and reports whether the caller must
// tell the actor (mu held).
func (w *writer) kickLocked() bool {
	if w.kicked {
		return false
	}
	w.kicked = true
	return true
}

// sendLocked sends the frames in out (mu held). With direct set, while the
// actor is idle, the producer writes them to the socket itself, and the
// actor is told (the result is true: the caller sends kickMsg after
// unlocking) only for what the socket did not take at once: a lone request
// or answer then costs one write(2) and no wake-up of the loop, as a
// blocking net.Conn write would. Producers pass direct false when more
// frames are about to follow (a busy pipeline, a dispatcher with answers
// still due): the actor then batches them into fewer writes, which costs
// less CPU than a write(2) each.
func (w *writer) sendLocked(m *metrics, direct bool) (kick bool) {
	if w.kicked {
		return false
	}
	if direct && w.direct != nil && len(w.raws) == 0 {
		if n, ok := w.direct.TryWrite(w.out); ok {
			m.bytesOut.Add(uint64(n))
			if n == len(w.out) {
				w.out = w.out[:0]
				return false
			}
			w.out = w.out[:copy(w.out, w.out[n:])]
		}
	}
	w.kicked = true
	return true
}

// enqueueRaw queues a raw chunk; while the actor is idle the producer
// writes what the socket takes at once itself, as sendLocked does.
func (w *writer) enqueueRaw(ref netio.Ref, r *rawChunk, m *metrics) error {
	w.mu.Lock()
	if w.closed != nil {
		err := w.closed
		w.mu.Unlock()
		return err
	}
	if !w.kicked && w.direct != nil && len(w.out) == 0 && len(w.raws) == 0 {
		if n, ok := w.direct.TryWrite(r.data); ok {
			m.bytesOut.Add(uint64(n))
			if n == len(r.data) {
				w.mu.Unlock()
				r.done <- nil
				return nil
			}
			r.data = r.data[n:]
		}
	}
	w.raws = append(w.raws, r)
	kick := w.kickLocked()
	w.mu.Unlock()
	if kick {
		ref.Tell(kickMsg{})
	}
	return nil
}

// pump starts the next write if none is pending (actor only). It reports
// whether a write was started.
func (w *writer) pump(ctx *netio.Context, conn netio.Ref, m *metrics) bool {
	if conn.IsZero() || w.wbuf != nil || w.wraw != nil {
		return false
	}
	w.mu.Lock()
	switch {
	case len(w.out) > 0:
		w.wbuf = w.out
		w.out = w.spare[:0]
		w.spare = nil
	case len(w.raws) > 0:
		w.wraw = w.raws[0]
		w.raws[0] = nil
		w.raws = w.raws[1:]
		if len(w.raws) == 0 {
			w.raws = nil
		}
	default:
		w.kicked = false
		w.mu.Unlock()
		return false
	}
	w.mu.Unlock()
	if w.wbuf != nil {
		w.cmd = tcp.Write{Data: w.wbuf, Ack: writeAck{}}
	} else {
		w.cmd = tcp.Write{Data: w.wraw.data, Ack: writeAck{}}
	}
	w.writing.Store(int64(len(w.cmd.Data)))
	m.bytesOut.Add(uint64(len(w.cmd.Data)))
	ctx.Tell(conn, &w.cmd)
	return true
}

// acked frees what the pending write held (actor only).
func (w *writer) acked() {
	w.cmd = tcp.Write{}
	w.writing.Store(0)
	if w.wbuf != nil {
		if cap(w.wbuf) <= maxSpare {
			w.spare = w.wbuf[:0]
		}
		w.wbuf = nil
	}
	if w.wraw != nil {
		w.wraw.done <- nil
		w.wraw = nil
	}
}

// pending returns the bytes of output the writer holds: queued frames and
// the write not yet acked (any goroutine; raw chunks are their producers'
// buffers, bounded by them).
func (w *writer) pending() int {
	w.mu.Lock()
	n := len(w.out)
	w.mu.Unlock()
	return n + int(w.writing.Load())
}

// idle reports whether nothing is being written or waiting (actor only).
func (w *writer) idle() bool {
	if w.wbuf != nil || w.wraw != nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.out) == 0 && len(w.raws) == 0
}

// closeLocked marks the writer closed and returns the raw chunks that will
// never be written (mu held).
func (w *writer) closeLocked(err error) []*rawChunk {
	w.closed = err
	raws := w.raws
	w.raws = nil
	w.out = nil
	return raws
}

// release fails the chunk being written, after the actor stopped.
func (w *writer) release(err error) {
	if w.wraw != nil {
		w.wraw.done <- err
		w.wraw = nil
	}
	w.wbuf = nil
	w.cmd = tcp.Write{}
}
