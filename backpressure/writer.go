package backpressure

import (
	"errors"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// ErrOverflow is returned by Write when the buffered data would exceed the
// maximum watermark; the caller should drop the connection.
var ErrOverflow = errors.New("backpressure: buffer overrun")

// Watermarks bound a writer's buffer. Zero fields take the defaults: Low 64
// KiB, High 512 KiB, Max 4 MiB.
type Watermarks struct {
	// Low: reading resumes once the buffer falls below it.
	Low int
	// High: reading is suspended once the buffer rises above it.
	High int
	// Max: Write fails with ErrOverflow above it.
	Max int
}

func (w Watermarks) withDefaults() Watermarks {
	if w.Low <= 0 {
		w.Low = 64 << 10
	}
	if w.High <= 0 {
		w.High = 512 << 10
	}
	if w.Max <= 0 {
		w.Max = 4 << 20
	}
	return w
}

// readGate suspends and resumes reading on a connection by watermarks.
type readGate struct {
	conn      netio.Ref
	wm        Watermarks
	suspended bool
}

// check is called on every write and ack: small enough to inline, the
// rare change of state in toggle.
func (g *readGate) check(ctx *netio.Context, buffered int) {
	if g.suspended && buffered < g.wm.Low || !g.suspended && buffered > g.wm.High {
		g.toggle(ctx)
	}
}

func (g *readGate) toggle(ctx *netio.Context) {
	g.suspended = !g.suspended
	if g.suspended {
		ctx.Tell(g.conn, tcp.SuspendReading{})
		return
	}
	ctx.Tell(g.conn, tcp.ResumeReading{})
}

// Suspended reports whether the writer has suspended reading.
func (g *readGate) Suspended() bool { return g.suspended }

// AckWriter is the ACK-paced writer: at most one write in flight.
type AckWriter struct {
	readGate
	buf      []byte // waiting
	spare    []byte // the buffer in flight (owned by the connection until the ack), then free
	inflight int    // bytes in flight
	busy     bool   // a write is in flight
	cmd      tcp.Write
	written  int64
}

type ackOf struct{ w *AckWriter }

// NewAckWriter returns an ACK-paced writer for conn.
func NewAckWriter(conn netio.Ref, wm Watermarks) *AckWriter {
	w := &AckWriter{}
	w.init(conn, wm)
	return w
}

// init sets up a writer in place (the echo handlers hold theirs by value:
// one allocation, and one place in memory touched per message).
func (w *AckWriter) init(conn netio.Ref, wm Watermarks) {
	w.readGate = readGate{conn: conn, wm: wm.withDefaults()}
	w.cmd.Ack = ackOf{w}
}

// Write queues a copy of data and sends it as soon as no write is in
// flight. It suspends reading above the high watermark and fails with
// ErrOverflow above the maximum.
func (w *AckWriter) Write(ctx *netio.Context, data []byte) error {
	if w.Buffered()+len(data) > w.wm.Max {
		return ErrOverflow
	}
	w.buf = append(w.buf, data...)
	if !w.busy {
		w.send(ctx)
	}
	w.check(ctx, w.Buffered())
	return nil
}

// WriteReceived is Write for the data of r, a tcp.Received from the
// writer's connection being handled now: when nothing is in flight and the
// connection is on this actor's loop, the data goes to the connection as a
// transient write, without a copy (the connection copies only what the
// kernel does not take at once), by r.Write: within the connection's read,
// with no message in between. Otherwise it is queued like Write.
func (w *AckWriter) WriteReceived(ctx *netio.Context, r tcp.Received) error {
	data := r.Data()
	if w.busy || len(w.buf) > 0 || ctx.Loop() == nil || ctx.Loop() != w.conn.Loop() {
		return w.Write(ctx, data)
	}
	w.cmd.Data, w.cmd.Transient = data, true
	w.busy, w.inflight = true, len(data)
	r.Write(ctx, &w.cmd)
	w.check(ctx, w.Buffered())
	return nil
}

func (w *AckWriter) send(ctx *netio.Context) {
	if len(w.buf) == 0 {
		return
	}
	w.spare, w.buf = w.buf, w.spare[:0]
	w.cmd.Data, w.cmd.Transient = w.spare, false
	w.busy, w.inflight = true, len(w.spare)
	ctx.Tell(w.conn, &w.cmd)
}

// Handle consumes the writer's acks and reports whether msg was one.
func (w *AckWriter) Handle(ctx *netio.Context, msg any) bool {
	a, ok := msg.(ackOf)
	if !ok || a.w != w {
		return false
	}
	w.written += int64(w.inflight)
	w.busy, w.inflight = false, 0
	w.cmd.Data = nil
	w.send(ctx)
	w.check(ctx, w.Buffered())
	return true
}

// Buffered is the number of bytes queued or in flight.
func (w *AckWriter) Buffered() int { return len(w.buf) + w.inflight }

// Idle reports whether every byte written has been acknowledged.
func (w *AckWriter) Idle() bool { return !w.busy && len(w.buf) == 0 }

// Written is the number of bytes acknowledged so far.
func (w *AckWriter) Written() int64 { return w.written }

// NackWriter is the NACK-based writer with write suspending.
type NackWriter struct {
	readGate
	// AckedWrites is how many writes stay ACK-paced after a resume before the
	// writer goes optimistic again; zero means 10, as in Akka's example.
	AckedWrites int

	pending  []*chunk // sent or waiting, in order, not yet acknowledged
	next     int      // pending[:next] have been sent since the last resume
	stored   int
	free     []*chunk
	resuming bool // waiting for WritingResumed
	toAck    int  // ACK-paced writes left before going optimistic
	written  int64
	resumes  int
}

// Resumes is the number of times the writer was NACKed and had to resume.
func (w *NackWriter) Resumes() int { return w.resumes }

type chunk struct {
	w   *NackWriter
	cmd tcp.Write
	buf []byte
}

// NewNackWriter returns a NACK-based writer for conn (register the
// connection with UseResumeWriting).
func NewNackWriter(conn netio.Ref, wm Watermarks) *NackWriter {
	return &NackWriter{readGate: readGate{conn: conn, wm: wm.withDefaults()}}
}

// Write queues a copy of data and, unless the writer is waiting for a resume
// or pacing itself, sends it at once.
func (w *NackWriter) Write(ctx *netio.Context, data []byte) error {
	if w.stored+len(data) > w.wm.Max {
		return ErrOverflow
	}
	c := w.alloc()
	c.buf = append(c.buf[:0], data...)
	c.cmd.Data = c.buf
	w.pending = append(w.pending, c)
	w.stored += len(data)
	w.pump(ctx)
	w.check(ctx, w.stored)
	return nil
}

// pump sends what the current mode allows: nothing while waiting for
// WritingResumed, one write at a time while ACK-paced, everything otherwise.
func (w *NackWriter) pump(ctx *netio.Context) {
	switch {
	case w.resuming:
	case w.toAck > 0:
		if w.next == 0 {
			w.sendUpTo(ctx, min(1, len(w.pending)))
		}
	default:
		w.sendUpTo(ctx, len(w.pending))
	}
}

func (w *NackWriter) alloc() *chunk {
	if n := len(w.free); n > 0 {
		c := w.free[n-1]
		w.free = w.free[:n-1]
		return c
	}
	c := &chunk{w: w}
	c.cmd.Ack = c
	return c
}

func (w *NackWriter) sendUpTo(ctx *netio.Context, n int) {
	for ; w.next < n; w.next++ {
		ctx.Tell(w.conn, &w.pending[w.next].cmd)
	}
}

// Handle consumes the writer's acks, NACKs and WritingResumed, and reports
// whether msg was one of them.
func (w *NackWriter) Handle(ctx *netio.Context, msg any) bool {
	switch m := msg.(type) {
	case *chunk:
		if m.w != w {
			return false
		}
		w.acknowledge(ctx, m)
		return true
	case tcp.CommandFailed:
		wr, ok := m.Cmd.(*tcp.Write)
		if !ok {
			return false
		}
		c, ok := wr.Ack.(*chunk)
		if !ok || c.w != w {
			return false
		}
		if !w.resuming {
			// Everything from the failed chunk on will be resent.
			w.resuming = true
			for i, p := range w.pending {
				if p == c {
					w.next = i
					break
				}
			}
			w.resumes++
			ctx.Tell(w.conn, tcp.ResumeWriting{})
		}
		return true
	case tcp.WritingResumed:
		if !w.resuming {
			return false
		}
		w.resuming = false
		w.toAck = w.ackedWrites()
		w.pump(ctx)
		return true
	}
	return false
}

func (w *NackWriter) ackedWrites() int {
	if w.AckedWrites > 0 {
		return w.AckedWrites
	}
	return 10
}

func (w *NackWriter) acknowledge(ctx *netio.Context, c *chunk) {
	if len(w.pending) == 0 || w.pending[0] != c {
		return // cannot happen: acks come in order
	}
	w.stored -= len(c.buf)
	w.written += int64(len(c.buf))
	copy(w.pending, w.pending[1:])
	w.pending[len(w.pending)-1] = nil
	w.pending = w.pending[:len(w.pending)-1]
	w.next--
	c.cmd.Data = nil
	w.free = append(w.free, c)
	w.check(ctx, w.stored)
	if w.resuming {
		return // acks of writes accepted before the NACK
	}
	if w.toAck > 0 {
		w.toAck--
	}
	w.pump(ctx)
}

// Buffered is the number of bytes not yet acknowledged.
func (w *NackWriter) Buffered() int { return w.stored }

// Idle reports whether every byte written has been acknowledged.
func (w *NackWriter) Idle() bool { return len(w.pending) == 0 }

// Written is the number of bytes acknowledged so far.
func (w *NackWriter) Written() int64 { return w.written }

// PullReader asks its connection (in pull mode) for one chunk at a time.
type PullReader struct{ Conn netio.Ref }

// Next asks for the next chunk: one more Received.
func (r PullReader) Next(ctx *netio.Context) { ctx.Tell(r.Conn, tcp.ResumeReading{}) }
