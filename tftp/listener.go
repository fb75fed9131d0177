package tftp

import (
	"bytes"
	"errors"
	"net/netip"
	"time"

	"golang.org/x/time/rate"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/udp"
)

// Messages to the listener.
type (
	drainMsg struct{} // stop taking requests
	closeMsg struct{} // cancel every transfer and stop
	// listMsg asks for the transfer actors (Server.Transfers).
	listMsg struct{ ch chan<- []netio.Ref }
	// From a transfer actor: its transfer is complete and only lingers.
	dallyingMsg struct{}
	// From a transfer actor: the client ended it with an ERROR before it
	// answered anything (effects.aborted).
	abortedMsg struct{}
)

// entry is the listener's record of a transfer actor.
type entry struct {
	client netip.AddrPort
	req    []byte // the request's bytes, to recognise a retransmission
	share  *share // the client's share, until the transfer ends
	ref    netio.Ref
	// dallying: the transfer is complete and only lingers (dallyingMsg).
	dallying bool
	// queued is a request identical to req that came while the transfer
	// ran: a retransmission, or, after the client's ERROR (the UEFI
	// probe), a new request. It starts when the transfer ends by an ERROR
	// from a client that never answered (abortedMsg); otherwise it was a
	// retransmission, which the transfer answered (xfer.requestAgain), or
	// a late duplicate.
	queued, aborted bool
}

// listener is the actor on the server port. It parses requests and starts
// one transfer actor per transfer (see transfer), with the client's
// address as the key. In single-port mode it also demultiplexes: it
// forwards each datagram from a client with a transfer to that transfer's
// actor, which runs on the listener's loop and sends through the
// listener's socket.
//
// A request from a client address that already has a transfer is
//   - passed to the transfer if it repeats the request, and held (see
//     entry.queued): the transfer sends its first packet again if the
//     client has not answered yet (a retransmission), or ignores it (a
//     late duplicate); the held request starts if the transfer then ends
//     by the ERROR of a client that never answered (the UEFI firmware
//     probe: OACK, ERROR 8, the same request again);
//   - otherwise (a new request, or the same upload again once the last
//     one is complete), the old transfer is cancelled, the new one
//     started.
//
// So a stray packet from the client's address can end its own transfer
// only by being a well-formed ERROR or a new request, which only the
// client itself would send.
type listener struct {
	srv   *Server
	ctx   *netio.Context
	bound chan error
	sock  netio.Ref
	local netip.AddrPort
	shard *shard
	bind  udp.Bind

	entries map[netip.AddrPort]*entry // by client, the current transfer
	byRef   map[netio.Ref]*entry      // every transfer actor, until Terminated

	draining, closing bool
	quiet             bool // closing: the quiet period is over

	shares     *shares
	sweep      *netio.Timer
	busyWarned bool // MaxTransfers' refusal was logged since the last sweep
}

func (l *listener) PreStart(ctx *netio.Context) {
	l.ctx = ctx
	l.shard = l.srv.m.shard(ctx.Loop().ID())
	l.entries = make(map[netip.AddrPort]*entry)
	l.byRef = make(map[netio.Ref]*entry)
	l.shares = newShares(&l.srv.cfg)
	l.sweep = ctx.Every(sweepInterval, sweepMsg{})
	l.bind = udp.Bind{
		Handler: ctx.Self(), LocalAddr: l.srv.cfg.Listen,
		Options: []netio.SocketOption{netio.ReceiveBufferSize(4 << 20), netio.SendBufferSize(4 << 20)},
	}
	ctx.Tell(udp.Manager(ctx.System()), &l.bind)
}

func (l *listener) PostStop(ctx *netio.Context) {
	l.sweep.Stop()
	for ref := range l.byRef {
		ctx.StopActor(ref)
	}
	if l.bound != nil {
		l.bound <- netio.ErrShutdown
		l.bound = nil
	}
}

func (l *listener) Receive(ctx *netio.Context, msg any) {
	now := ctx.Now()
	switch m := msg.(type) {
	case udp.Received:
		l.datagram(ctx, now, m)
	case dallyingMsg:
		if e := l.byRef[ctx.Sender()]; e != nil {
			e.dallying = true
			if l.draining {
				l.checkDrained()
			}
		}
	case abortedMsg:
		if e := l.byRef[ctx.Sender()]; e != nil {
			e.aborted = true
		}
	case listMsg:
		refs := make([]netio.Ref, 0, len(l.byRef))
		for ref := range l.byRef {
			refs = append(refs, ref)
		}
		m.ch <- refs
	case udp.Bound:
		l.sock, l.local = m.Socket, m.LocalAddr
		l.srv.log.Info("tftp: serving", "addr", m.LocalAddr.String(), "single_port", l.srv.cfg.SinglePort)
		l.resume(now, l.srv.cfg.Resume)
		l.bound <- nil
		l.bound = nil
	case udp.CommandFailed:
		l.commandFailed(ctx, m)
	case netio.Terminated:
		l.terminated(m.Ref)
	case drainMsg:
		l.draining = true
		if !l.srv.cfg.SinglePort && !l.sock.IsZero() {
			ctx.Tell(l.sock, udp.Unbind{}) // the kernel refuses new requests
			l.sock = netio.Ref{}
		}
		l.checkDrained()
	case sweepMsg:
		l.shares.sweep(now)
		l.busyWarned = false
	case closeMsg:
		l.closing = true
		clear(l.entries)
		for ref := range l.byRef {
			ctx.StopActor(ref) // the transfer cancels itself
		}
		if l.srv.cfg.SinglePort && !l.sock.IsZero() {
			// Nothing is sent any more, but the port stays bound a moment
			// to take the ACKs already on their way: a client with a
			// connected socket (atftp) gives up on the ICMP port
			// unreachable an unbound port would draw.
			ctx.After(quietClose, quietOver{})
			return
		}
		l.quiet = true
		l.checkClosed()
	case quietOver:
		l.quiet = true
		l.checkClosed()
	}
}

// quietClose is how long a closing single-port server keeps its port
// bound without answering; quietOver ends it.
const quietClose = 5 * time.Millisecond

type quietOver struct{}

// sweepMsg makes the listener forget idle clients (shares.sweep).
type sweepMsg struct{}

// resume takes over the transfers of another server (ServerConfig.Resume).
func (l *listener) resume(now time.Time, states []TransferState) {
	for _, st := range states {
		if _, busy := l.entries[st.Client]; busy || st.Op != OpRRQ {
			if st.Op != OpRRQ && l.srv.cfg.Replicator != nil {
				l.srv.cfg.Replicator.End(st)
			}
			continue
		}
		req := Request{Op: st.Op, Filename: st.Filename, Mode: st.Mode}
		l.spawn(&entry{client: st.Client}, &transfer{req: req, client: st.Client, resumed: &st})
	}
}

func (l *listener) commandFailed(ctx *netio.Context, m udp.CommandFailed) {
	switch m.Cmd.(type) {
	case *udp.Bind:
		if l.bound != nil {
			l.bound <- m.Cause
			l.bound = nil
		}
		ctx.Stop()
	}
}

// sendCause maps a socket's send error for xfer.sendFailed.
func sendCause(err error) error {
	if errors.Is(err, udp.ErrWouldBlock) {
		return errWouldBlock
	}
	return err
}

// checkDrained tells Shutdown when every transfer ended or only lingers.
func (l *listener) checkDrained() {
	for _, e := range l.byRef {
		if !e.dallying {
			return
		}
	}
	select {
	case <-l.srv.drained:
	default:
		close(l.srv.drained)
	}
}

func (l *listener) checkClosed() {
	if l.closing && l.quiet && len(l.byRef) == 0 {
		l.ctx.Stop()
	}
}

// datagram handles a datagram to the server port: in single-port mode,
// one for a transfer goes to its actor.
func (l *listener) datagram(ctx *netio.Context, now time.Time, m udp.Received) {
	if l.closing {
		return // stopped: answer nothing, not even with an ERROR
	}
	from, b := m.Sender(), m.Data()
	op, err := PacketOpcode(b)
	if l.srv.cfg.SinglePort && op != OpRRQ && op != OpWRQ {
		if e := l.entries[from]; e != nil {
			// On this loop: m, and the loop's buffer it points into, stay
			// valid until the transfer handled it, even when queued.
			ctx.Deliver(e.ref, m)
			return
		}
	}
	switch {
	case err != nil:
		l.shard.badRequests.Add(1)
		if len(b) >= 2 {
			l.reply(now, from, ErrIllegalOperation, "illegal TFTP operation", nil)
		}
	case op == OpRRQ || op == OpWRQ:
		l.request(now, from, b)
	case op == OpERROR:
		// Never answer an ERROR.
	default:
		l.shard.foreign.Add(1)
		l.reply(now, from, ErrUnknownTID, "unknown transfer ID", nil)
	}
}

// reply sends an ERROR from the server port, within the server's
// ErrorRate, or, for a client's refusals (sh not nil), within that
// client's own allowance: a flood from one address must not use up the
// ERRORs that tell another client why it is refused.
func (l *listener) reply(now time.Time, to netip.AddrPort, code ErrorCode, msg string, sh *share) {
	if l.sock.IsZero() {
		return
	}
	if sh != nil {
		if sh.refusals == nil {
			sh.refusals = rate.NewLimiter(refusalRate, refusalBurst)
		}
		if !sh.refusals.AllowN(now, 1) {
			l.shard.errorsSuppressed.Add(1)
			return
		}
	} else if !l.srv.allowError(now, nil) {
		l.shard.errorsSuppressed.Add(1)
		return
	}
	// Errors are rare: a fresh command and buffer each, so that several in
	// one loop turn do not overwrite each other.
	l.ctx.Tell(l.sock, udp.Send{Data: AppendError(nil, code, msg), Target: to})
}

func (l *listener) request(now time.Time, from netip.AddrPort, b []byte) {
	req, err := ParseRequest(b)
	if err != nil {
		l.shard.badRequests.Add(1)
		msg := "malformed request"
		if errors.Is(err, ErrMalformed) && bytes.Contains([]byte(err.Error()), []byte("unknown mode")) {
			msg = "unknown transfer mode"
		}
		l.reply(now, from, ErrIllegalOperation, msg, nil)
		return
	}
	if l.draining || l.closing {
		l.refuse(now, from, refuseShutdown, "server is shutting down", nil)
		return
	}
	if e := l.entries[from]; e != nil {
		if bytes.Equal(e.req, b) && !e.dallying {
			e.queued = true
			l.ctx.Deliver(e.ref, againMsg{})
			return
		}
		l.cancel(e, "superseded by a new request from the client")
	}
	sh := l.shares.get(from.Addr())
	if max := l.srv.cfg.MaxTransfers; max > 0 && len(l.byRef) >= max {
		if !l.busyWarned {
			l.busyWarned = true
			l.srv.log.Warn("tftp: too many transfers; requests refused (logged once per sweep interval; see ioactor_tftp_requests_refused_total)", "client", from.String(), "max", max)
		}
		l.refuse(now, from, refuseBusy, "server busy, try again later", sh)
		return
	}
	if why := l.shares.admit(now, sh); why != "" {
		if !sh.warned {
			sh.warned = true
			l.srv.log.Warn("tftp: a client is over its share; its requests are refused (logged once per client and sweep interval)",
				"client", l.shares.key(from.Addr()).String(), "reason", why, "active", sh.active)
		}
		msg := "too many transfers from your address, try again later"
		if why == refuseClientRate {
			msg = "too many requests from your address, slow down"
		}
		l.refuse(now, from, why, msg, sh)
		return
	}
	l.start(from, req, b, sh)
}

// refuse answers a request with an ERROR 0 and counts it.
func (l *listener) refuse(now time.Time, from netip.AddrPort, why, msg string, sh *share) {
	l.shard.refused[refuseIndex(why)].Add(1)
	l.srv.log.Debug("tftp: request refused", "client", from.String(), "reason", why)
	l.reply(now, from, ErrUndefined, msg, sh)
}

func (l *listener) start(from netip.AddrPort, req Request, b []byte, sh *share) {
	if sh != nil {
		sh.active++
	}
	l.spawn(&entry{client: from, req: append([]byte(nil), b...), share: sh}, &transfer{req: req, client: from})
}

// spawn starts the transfer actor t for e: in single-port mode on this
// loop, sending through the server port; otherwise on the system's next
// loop, with a socket of its own.
func (l *listener) spawn(e *entry, t *transfer) {
	t.srv, t.lis = l.srv, l.ctx.Self()
	var ref netio.Ref
	if l.srv.cfg.SinglePort {
		t.sock, t.shared, t.local = l.sock, true, l.local
		ref = l.ctx.Spawn(t)
	} else {
		t.local = netip.AddrPortFrom(l.srv.cfg.Listen.Addr(), 0)
		ref = l.ctx.SpawnOn(l.ctx.System().NextLoop(), t)
	}
	e.ref = ref
	l.entries[e.client] = e
	l.byRef[ref] = e
	l.ctx.Watch(ref)
}

// cancel ends the transfer of e early.
func (l *listener) cancel(e *entry, why string) {
	if l.entries[e.client] == e {
		delete(l.entries, e.client)
	}
	l.ctx.Deliver(e.ref, cancelMsg{why: why})
}

// terminated runs when a transfer actor stopped: its transfer is over.
func (l *listener) terminated(ref netio.Ref) {
	e := l.byRef[ref]
	if e == nil {
		return
	}
	delete(l.byRef, ref)
	if sh := e.share; sh != nil {
		sh.active--
		e.share = nil
	}
	if l.entries[e.client] == e {
		delete(l.entries, e.client)
		if e.queued && e.aborted && !l.draining && !l.closing {
			if req, err := ParseRequest(e.req); err == nil {
				l.start(e.client, req, e.req, l.shares.get(e.client.Addr()))
			}
		}
	}
	if l.draining {
		l.checkDrained()
	}
	l.checkClosed()
}
