package tftp

import (
	"net/netip"
	"time"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/udp"
)

// transferActor runs one transfer on a UDP socket of its own, bound to a
// fresh port: the server's transfer ID (RFC 1350). The socket lives on the
// actor's loop, so datagrams reach the transfer without a copy, and closes
// when the actor stops.
//
//	binding ──Bound──► running (xfer) ──xfer.finish──► stopped
//	   └──CommandFailed──────────────────────────────► stopped
type transferActor struct {
	srv    *Server
	req    Request
	client netip.AddrPort
	ent    *entry     // the listener's; only its atomics are shared
	listen netip.Addr // the server port's address: transfer ports use it too

	ctx   *netio.Context
	x     *xfer
	sock  netio.Ref
	bind  udp.Bind
	sm    udp.SendMany
	timer *netio.Timer
	armed time.Time
	done  bool
}

func (a *transferActor) PreStart(ctx *netio.Context) {
	a.ctx = ctx
	a.x = a.srv.newXfer(a, a.req, a.client, &a.ent.stage, &a.ent.peerEnded, a.srv.m.shard(ctx.Loop().ID()))
	a.sm = udp.SendMany{Target: a.client, Ack: &a.x.sentTok}
	a.bind = udp.Bind{
		Handler: ctx.Self(), LocalAddr: netip.AddrPortFrom(a.listen, 0),
		Options: []netio.SocketOption{netio.ReceiveBufferSize(4 << 20), netio.SendBufferSize(4 << 20)},
	}
	ctx.Tell(udp.Manager(ctx.System()), &a.bind)
}

func (a *transferActor) Receive(ctx *netio.Context, msg any) {
	now := ctx.Now()
	x := a.x
	switch m := msg.(type) {
	case udp.Received:
		x.packet(now, m.Sender(), m.Data())
	case *sentToken:
		x.sendDone(now)
	case *timerToken:
		a.armed = time.Time{}
		x.timer(now)
	case committedMsg:
		x.committed(now, m.err)
	case begunMsg:
		x.begun(now, m.err)
	case requestAgainMsg:
		x.requestAgain(now)
	case udp.Bound:
		a.sock = m.Socket
		x.start(now, m.LocalAddr)
	case udp.WritingResumed:
		x.writable(now)
	case udp.CommandFailed:
		switch m.Cmd {
		case &a.bind:
			a.srv.log.Error("tftp: cannot open a transfer port", "xfer", x.id, "client", a.client.String(), "err", m.Cause)
			x.end(resultError, m.Cause)
		case &a.sm:
			x.sendFailed(now, sendCause(m.Cause))
		}
	}
}

func (a *transferActor) PostStop(ctx *netio.Context) {
	if a.x != nil && !a.x.finished {
		a.done = true // stopping already: finish must not stop again
		a.x.cancel("server stopped")
	}
}

// xferIO

func (a *transferActor) send(x *xfer, dgs [][]byte) {
	a.sm.Datagrams = dgs
	a.ctx.Tell(a.sock, &a.sm)
}

func (a *transferActor) sendError(x *xfer, to netip.AddrPort, pkt []byte) {
	if !a.sock.IsZero() {
		a.ctx.Tell(a.sock, udp.Send{Data: append([]byte(nil), pkt...), Target: to})
	}
}

func (a *transferActor) resumeWriting(x *xfer) {
	a.ctx.Tell(a.sock, udp.ResumeWriting{})
}

func (a *transferActor) setTimer(x *xfer, at time.Time) {
	armTimer(a.ctx, &a.timer, &a.armed, at, &x.timerTok)
}

func (a *transferActor) commit(x *xfer, u WriteFile) {
	a.srv.commit(a.ctx.Self(), x, u)
}

func (a *transferActor) begin(x *xfer, st TransferState) {
	a.srv.begin(a.ctx.Self(), x, st)
}

func (a *transferActor) finish(x *xfer) {
	if a.timer != nil {
		a.timer.Stop()
	}
	if !a.done {
		a.done = true
		a.ctx.Stop()
	}
}
