package tcp

import (
	"net/netip"
	"time"

	"github.com/ioactor/ioactor/netio"
)

// Commands are accepted both as values and as pointers: a pointer lets a hot
// path reuse one command value with no allocation per message. A connection
// copies what it needs when it processes the command; Write.Data is the
// exception, see [Write].

// Bind asks the manager for a listening socket.
type Bind struct {
	// Handler receives Bound or CommandFailed, then one Connected per accepted
	// connection. Zero means the sender of Bind; a Bind with neither (told
	// from outside any actor without a Handler) is refused with a logged
	// warning, since nobody would hear from the listener. The listener
	// watches the handler and unbinds when it stops.
	Handler netio.Ref
	// LocalAddr to listen on; port 0 picks a free port (reported in Bound).
	LocalAddr netip.AddrPort
	// Backlog is listen(2)'s backlog; zero means 1024.
	Backlog int
	// Options are applied to the listening socket before bind(2). Accepted
	// connections get TCP_NODELAY unless ConnOptions turn it off.
	Options []netio.SocketOption
	// ConnOptions are applied to each accepted connection.
	ConnOptions []netio.SocketOption
	// PullMode starts the listener with accepting suspended (send
	// ResumeAccepting) and every accepted connection in pull mode.
	PullMode bool
	// RegisterTimeout closes an accepted connection that gets no Register in
	// time; zero means 5 s, negative means never.
	RegisterTimeout time.Duration
}

// Bound tells the handler the listener is ready.
type Bound struct {
	// Socket is the listening actor (also the sender of Bound): send it
	// Unbind and ResumeAccepting.
	Socket netio.Ref
	// LocalAddr is the address actually bound (port 0 resolved).
	LocalAddr netip.AddrPort
}

// ResumeAccepting lets a pull-mode listener accept BatchSize more
// connections before it waits again.
type ResumeAccepting struct{ BatchSize int }

// Unbind closes the listening socket; live connections stay. Answered with
// Unbound.
type Unbind struct{}

// Unbound confirms Unbind.
type Unbound struct{}

// Connect asks the manager for an outgoing connection.
type Connect struct {
	// Handler receives Connected or CommandFailed. Zero means the sender;
	// with neither, the Connect is refused as a Bind is.
	Handler netio.Ref
	// RemoteAddr is the peer.
	RemoteAddr netip.AddrPort
	// LocalAddr, if valid, is bound before connecting.
	LocalAddr netip.AddrPort
	Options   []netio.SocketOption
	// Timeout bounds the connection attempt; zero means none.
	Timeout  time.Duration
	PullMode bool
	// RegisterTimeout as in Bind.
	RegisterTimeout time.Duration
}

// Connected announces a new connection; its sender is the connection actor,
// also given as Socket. The connection reads nothing until it gets Register.
type Connected struct {
	Socket     netio.Ref
	LocalAddr  netip.AddrPort
	RemoteAddr netip.AddrPort
}

// Register activates a connection: Handler (zero: the sender) receives its
// events and is watched, the connection closing when it stops.
type Register struct {
	Handler netio.Ref
	// KeepOpenOnPeerClosed keeps the connection half-open after the peer's
	// FIN: the handler gets PeerClosed and may still write until it closes.
	KeepOpenOnPeerClosed bool
	// UseResumeWriting: after a write fails because one was pending, every
	// later write fails too until ResumeWriting (Akka's NACK-with-suspend).
	// Akka defaults it to true; Go's zero value is false (plain NACK).
	UseResumeWriting bool
	// Direct, when not nil, is attached to the connection: goroutines may
	// write through it while the connection has no write pending (see
	// [DirectWriter]).
	Direct *DirectWriter
}

// WriteCommand is Write, WriteFile or CompoundWrite.
type WriteCommand interface{ writeCommand() }

// Write sends Data. The connection takes Data as it is, without a copy: the
// caller must not modify it until the write completed (the Ack arrives), or,
// without an Ack, at all. Ack (nil for none) is sent back to the sender of the
// Write (or the handler) once the last byte is in the kernel's send buffer.
type Write struct {
	Data []byte
	Ack  any
	// Transient says Data stays valid only until the loop finishes its
	// current queue drain, as Received.Data of a connection on the same loop
	// does: the connection writes at once what the kernel takes and copies
	// the rest, so echoing received bytes needs no copy in the common case.
	// Send a Transient write only from an actor on the connection's loop.
	Transient bool
}

// WriteFile sends Count bytes of the file at Path from Offset with sendfile(2);
// Count < 0 means to the end of the file.
type WriteFile struct {
	Path          string
	Offset, Count int64
	Ack           any
}

// CompoundWrite sends its parts in order as one write command (writev(2) for
// runs of Writes); each part's Ack is sent as soon as that part completes.
type CompoundWrite []WriteCommand

func (Write) writeCommand()         {}
func (WriteFile) writeCommand()     {}
func (CompoundWrite) writeCommand() {}

// ResumeWriting asks for WritingResumed once the write pending when a
// CommandFailed happened has completed.
type ResumeWriting struct{}

// WritingResumed answers ResumeWriting.
type WritingResumed struct{}

// SuspendReading turns reading off at the socket (EPOLLIN off): the kernel's
// receive buffer fills and the TCP window closes.
type SuspendReading struct{}

// ResumeReading turns reading back on; in pull mode it asks for one more
// Received.
type ResumeReading struct{}

// Close flushes pending writes, sends FIN and closes; answered with Closed.
type Close struct{}

// ConfirmedClose flushes pending writes, sends FIN, keeps reading until the
// peer's FIN, then closes; answered with ConfirmedClosed.
type ConfirmedClose struct{}

// Abort drops pending writes and resets the connection (RST); answered with
// Aborted.
type Abort struct{}

// Received carries bytes read from the socket; match it as a value, like
// every other event (case tcp.Received). It is one pointer wide, so the
// connection hands it over with no allocation.
//
// For a handler on the connection's loop, Data is valid only until the
// handler's Receive returns (it aliases the loop's read buffer): copy what
// you keep. A handler on another loop gets a copy it owns.
type Received struct{ s *recvState }

// recvState is what a Received points to: a connection's own (reused for
// every read) or a copy's.
type recvState struct {
	data []byte
	c    *conn     // the connection whose read this is; nil for a copy
	conn netio.Ref // where Write sends; zero for NewReceived
}

// NewReceived makes a Received carrying data, for code that produces the
// event itself (a protocol layer in front of a handler, a test). Its Write
// sends to the sender of the message being handled.
func NewReceived(data []byte) Received { return Received{&recvState{data: data}} }

// Data is the bytes read; nil for the zero Received.
func (r Received) Data() []byte {
	if r.s == nil {
		return nil
	}
	return r.s.data
}

// Write sends w to the connection r came from, like ctx.Tell(conn, w), with
// one difference: called by the connection's handler while it handles r, as
// a direct call from the connection (a handler on the connection's loop,
// idle, with nothing queued for it), it adds w to the connection's current
// write instead of queueing a message. Everything the handler writes so
// during that Receive goes to the kernel in one sendto(2) or writev(2) as
// soon as its Receive returns, before any other command it sent.
//
// The semantics are a Write's: the first Write of the batch is refused
// ([CommandFailed], ErrWritePending) when a write is pending, as a Write
// told to the connection would be; the ones after it join it (they cannot
// find the first one pending: it has not been tried yet); each ack arrives
// once its bytes are in the kernel. w (and w.Data) must stay unchanged
// until its ack, as for a Write sent as a message; with w.Transient the
// connection copies only what the kernel does not take.
//
// Otherwise (a handler on another loop, a Received kept from an earlier
// message, a command of the handler still queued for the connection) it is
// exactly ctx.Tell(conn, w). Call it with the caller's own Context.
func (r Received) Write(ctx *netio.Context, w *Write) {
	s := r.s
	if s == nil {
		ctx.Reply(w)
		return
	}
	// The loop test first: only the connection's own goroutine may look at
	// its state.
	if c := s.c; c != nil && ctx.Loop() == s.conn.Loop() && c.delivering && ctx.Self() == c.handler && !ctx.HasQueued(s.conn) {
		c.batch(w)
		return
	}
	if s.conn.IsZero() {
		ctx.Reply(w)
		return
	}
	ctx.Tell(s.conn, w)
}

// CommandFailed answers a command that could not be carried out: a write
// while another is pending, a bind or connect that failed.
type CommandFailed struct {
	Cmd   any
	Cause error
}

// ConnectionClosed is implemented by every close event.
type ConnectionClosed interface{ connectionClosed() }

// Closed answers Close.
type Closed struct{}

// ConfirmedClosed answers ConfirmedClose.
type ConfirmedClosed struct{}

// Aborted answers Abort.
type Aborted struct{}

// PeerClosed reports the peer's FIN.
type PeerClosed struct{}

// ErrorClosed reports a connection closed by an error (reset by the peer, a
// failed write, the handler's death).
type ErrorClosed struct{ Cause error }

func (Closed) connectionClosed()          {}
func (ConfirmedClosed) connectionClosed() {}
func (Aborted) connectionClosed()         {}
func (PeerClosed) connectionClosed()      {}
func (ErrorClosed) connectionClosed()     {}
