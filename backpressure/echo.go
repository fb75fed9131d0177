package backpressure

import (
	"fmt"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// Flow names one of the three back-pressure flows.
type Flow string

// The flows.
const (
	FlowAck  Flow = "ack"
	FlowNack Flow = "nack"
	FlowPull Flow = "pull"
)

// ParseFlow checks a flow name.
func ParseFlow(s string) (Flow, error) {
	switch f := Flow(s); f {
	case FlowAck, FlowNack, FlowPull:
		return f, nil
	}
	return "", fmt.Errorf("backpressure: unknown flow %q (want ack, nack or pull)", s)
}

// closer closes the connection once the peer has closed and every echoed
// byte is in the kernel, and stops the handler when the connection is gone.
type closer struct {
	conn    netio.Ref
	closing bool
}

// handleClose reacts to close events; idle reports whether all data is out.
func (c *closer) handleClose(ctx *netio.Context, msg any, idle bool) bool {
	switch msg.(type) {
	case tcp.PeerClosed:
		c.closing = true
		c.closeIfDone(ctx, idle)
		return true
	case tcp.ConnectionClosed:
		ctx.Stop()
		return true
	}
	return false
}

func (c *closer) closeIfDone(ctx *netio.Context, idle bool) {
	if c.closing && idle {
		ctx.Tell(c.conn, tcp.Close{})
		c.closing = false
	}
}

func overrun(ctx *netio.Context, conn netio.Ref) {
	ctx.Logger().Warn("backpressure: dropping connection (buffer overrun)", "conn", conn)
	ctx.Tell(conn, tcp.Abort{})
	ctx.Stop()
}

// NewAckEcho returns the ACK-based echo handler of Akka's chapter. Register
// it with KeepOpenOnPeerClosed so it can finish echoing after the peer's FIN.
// Received bytes go out without a copy when nothing is in flight.
func NewAckEcho(conn netio.Ref, wm Watermarks) netio.Actor {
	e := &ackEcho{closer: closer{conn: conn}}
	e.w.init(conn, wm)
	return e
}

// ackEcho is the ACK echo. It holds its writer and its actor's runtime
// state by value, so a message touches one handler object (with a thousand
// connections, each pointer followed is a likely cache miss).
type ackEcho struct {
	netio.ActorCell
	closer
	w AckWriter
}

func (e *ackEcho) Receive(ctx *netio.Context, msg any) { e.receive(ctx, msg, &e.w) }

func (w *AckWriter) echo(ctx *netio.Context, r tcp.Received) error { return w.WriteReceived(ctx, r) }

// NewNackEcho returns the NACK-with-suspend echo handler of Akka's chapter.
// Register it with KeepOpenOnPeerClosed and UseResumeWriting.
func NewNackEcho(conn netio.Ref, wm Watermarks) netio.Actor {
	return &nackEcho{closer: closer{conn: conn}, w: NewNackWriter(conn, wm)}
}

type nackEcho struct {
	netio.ActorCell
	closer
	w *NackWriter
}

func (e *nackEcho) Receive(ctx *netio.Context, msg any) { e.receive(ctx, msg, e.w) }

func (w *NackWriter) echo(ctx *netio.Context, r tcp.Received) error { return w.Write(ctx, r.Data()) }

// echoWriter is what the ACK and NACK echoes need of their writer.
type echoWriter interface {
	echo(ctx *netio.Context, r tcp.Received) error
	Handle(ctx *netio.Context, msg any) bool
	Idle() bool
}

// receive is the ACK and NACK echoes' Receive: Received data goes back
// through w, then come w's own messages, then the close events.
func (c *closer) receive(ctx *netio.Context, msg any, w echoWriter) {
	if r, ok := msg.(tcp.Received); ok { // the most frequent message first
		if err := w.echo(ctx, r); err != nil {
			overrun(ctx, c.conn)
		}
		return
	}
	if w.Handle(ctx, msg) {
		if c.closing {
			c.closeIfDone(ctx, w.Idle())
		}
		return
	}
	c.handleClose(ctx, msg, w.Idle())
}

// NewPullEcho returns the pull-mode echo handler of Akka's chapter: it asks
// for the next chunk only once the previous one has been written, so it
// buffers at most one chunk. The connection must be in pull mode.
func NewPullEcho(conn netio.Ref) netio.Actor {
	e := &pullEcho{closer: closer{conn: conn}, r: PullReader{Conn: conn}}
	e.w.init(conn, Watermarks{})
	return e
}

type pullEcho struct {
	netio.ActorCell
	closer
	r PullReader
	w AckWriter
}

func (e *pullEcho) PreStart(ctx *netio.Context) { e.r.Next(ctx) }

func (e *pullEcho) Receive(ctx *netio.Context, msg any) {
	if e.w.Handle(ctx, msg) {
		if e.w.Idle() {
			e.r.Next(ctx)
		}
		e.closeIfDone(ctx, e.w.Idle())
		return
	}
	if r, ok := msg.(tcp.Received); ok {
		e.w.WriteReceived(ctx, r) // one chunk at a time: never above the maximum
		return
	}
	e.handleClose(ctx, msg, e.w.Idle())
}

// EchoServer is a listener handler that serves every accepted connection
// with the echo handler of Flow. Send tcp.Bind{Handler: ref, PullMode:
// Flow == FlowPull} to the manager, where ref runs the EchoServer.
type EchoServer struct {
	Flow       Flow
	Watermarks Watermarks
	// OnBound, if set, is called (on the loop) with the Bound event or the
	// bind failure.
	OnBound func(tcp.Bound, error)

	listener netio.Ref
}

// Receive handles the listener's events.
func (s *EchoServer) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case tcp.Bound:
		s.listener = m.Socket
		if s.Flow == FlowPull {
			ctx.Tell(m.Socket, tcp.ResumeAccepting{BatchSize: 64})
		}
		if s.OnBound != nil {
			s.OnBound(m, nil)
		}
	case tcp.CommandFailed:
		if s.OnBound != nil {
			s.OnBound(tcp.Bound{}, m.Cause)
		}
		ctx.Stop()
	case tcp.Connected:
		var h netio.Actor
		reg := tcp.Register{KeepOpenOnPeerClosed: true}
		switch s.Flow {
		case FlowNack:
			h = NewNackEcho(m.Socket, s.Watermarks)
			reg.UseResumeWriting = true
		case FlowPull:
			h = NewPullEcho(m.Socket)
			ctx.Tell(s.listener, tcp.ResumeAccepting{BatchSize: 1})
		default:
			h = NewAckEcho(m.Socket, s.Watermarks)
		}
		reg.Handler = ctx.SpawnOn(m.Socket.Loop(), h)
		ctx.Tell(m.Socket, reg)
	}
}
