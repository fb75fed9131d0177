package tftp

import (
	"bytes"
	"errors"
	"net/netip"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/udp"
)

// Messages to the listener.
type (
	drainMsg     struct{} // stop taking requests
	closeMsg     struct{} // cancel every transfer and stop
	drainPoll    struct{}
	committedMsg struct {
		x   *xfer
		err error
	}
)

// entry is the listener's record of a client address with a transfer.
type entry struct {
	client netip.AddrPort
	req    []byte // the request's bytes, to recognise a retransmission
	stage  atomic.Uint32
	share  *share // the client's share, until the transfer ends
	// peerEnded is set when the client ended the transfer with an ERROR.
	peerEnded atomic.Bool
	// queued is a request identical to req that came while the client
	// had not answered yet: a retransmission, or, after the client's
	// ERROR (the UEFI probe), a new request. It starts when the transfer
	// ends by the client's ERROR.
	queued bool

	ref   netio.Ref      // multi-port: the transfer actor
	actor *transferActor // its state, touched only on its loop
	x     *xfer          // single-port: the transfer

	// The single-port driver's per-transfer state.
	sm    udp.SendMany
	timer *netio.Timer
	armed time.Time
}

// listener is the actor on the server port. It parses requests and starts
// transfers: as actors with sockets of their own, or, in single-port mode,
// as state machines it drives itself, with the client's address as the key
// (it is then their xferIO).
//
// A request from a client address that already has a transfer is
//   - ignored if it repeats the request and the client has answered (a
//     late duplicate);
//   - held if it repeats it and the client has not answered yet: it starts
//     if the transfer then ends by the client's ERROR (the UEFI firmware
//     probe: OACK, ERROR 8, the same request again), and is dropped
//     otherwise (it was a retransmission, which the transfer's own
//     retransmission answers);
//   - otherwise, a new request: the old transfer is cancelled, the new one
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

	entries map[netip.AddrPort]*entry
	byRef   map[netio.Ref]*entry // multi-port transfers, until Terminated
	blocked []*xfer              // single-port: waiting for WritingResumed

	draining, closing bool
	quiet             bool // closing: the quiet period is over
	poll              *netio.Timer

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
	for _, e := range l.entries {
		if e.x != nil {
			e.x.cancel("server stopped")
		}
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
		l.datagram(now, m.Sender(), m.Data())
	case *sentToken:
		m.x.sendDone(now)
	case *timerToken:
		if e := m.x.ent; e != nil {
			e.armed = time.Time{}
		}
		m.x.timer(now)
	case committedMsg:
		m.x.committed(now, m.err)
	case begunMsg:
		m.x.begun(now, m.err)
	case udp.Bound:
		l.sock, l.local = m.Socket, m.LocalAddr
		l.srv.log.Info("tftp: serving", "addr", m.LocalAddr.String(), "single_port", l.srv.cfg.SinglePort)
		l.resume(now, l.srv.cfg.Resume)
		l.bound <- nil
		l.bound = nil
	case udp.CommandFailed:
		l.commandFailed(ctx, now, m)
	case udp.WritingResumed:
		b := l.blocked
		l.blocked = nil
		for _, x := range b {
			x.writable(now)
		}
	case netio.Terminated:
		l.terminated(now, m.Ref)
	case drainMsg:
		l.draining = true
		if !l.srv.cfg.SinglePort && !l.sock.IsZero() {
			ctx.Tell(l.sock, udp.Unbind{}) // the kernel refuses new requests
			l.sock = netio.Ref{}
		}
		l.poll = ctx.Every(20*time.Millisecond, drainPoll{})
		l.checkDrained()
	case drainPoll:
		l.checkDrained()
	case sweepMsg:
		l.shares.sweep(now)
		l.busyWarned = false
	case closeMsg:
		l.closing = true
		for _, e := range l.entries {
			l.cancel(e, "server stopped")
		}
		for ref := range l.byRef {
			ctx.StopActor(ref)
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

// requestAgainMsg tells a transfer actor that its client repeated the
// request (xfer.requestAgain).
type requestAgainMsg struct{}

// resume takes over the transfers of another server (ServerConfig.Resume).
func (l *listener) resume(now time.Time, states []TransferState) {
	for _, st := range states {
		if _, busy := l.entries[st.Client]; busy || st.Op != OpRRQ {
			if st.Op != OpRRQ && l.srv.cfg.Replicator != nil {
				l.srv.cfg.Replicator.End(st)
			}
			continue
		}
		e := &entry{client: st.Client}
		e.stage.Store(stagePinned)
		l.entries[st.Client] = e
		req := Request{Op: st.Op, Filename: st.Filename, Mode: st.Mode}
		x := l.srv.newXfer(l, req, st.Client, &e.stage, &e.peerEnded, l.shard)
		x.ent, e.x = e, x
		e.sm = udp.SendMany{Target: st.Client, Ack: &x.sentTok}
		x.resume(now, l.local, st)
	}
}

func (l *listener) commandFailed(ctx *netio.Context, now time.Time, m udp.CommandFailed) {
	switch c := m.Cmd.(type) {
	case *udp.Bind:
		if l.bound != nil {
			l.bound <- m.Cause
			l.bound = nil
		}
		ctx.Stop()
	case *udp.SendMany:
		if t, ok := c.Ack.(*sentToken); ok {
			t.x.sendFailed(now, sendCause(m.Cause))
		}
	}
}

// sendCause maps a socket's send error for xfer.sendFailed.
func sendCause(err error) error {
	if errors.Is(err, udp.ErrWouldBlock) {
		return errWouldBlock
	}
	return err
}

// active counts the transfers in progress.
func (l *listener) active() int {
	if l.srv.cfg.SinglePort {
		return len(l.entries)
	}
	return len(l.byRef)
}

func (l *listener) checkDrained() {
	for _, e := range l.entries {
		if e.stage.Load() != stageDally {
			return
		}
	}
	if l.srv.cfg.SinglePort || len(l.entries) == len(l.byRef) {
		select {
		case <-l.srv.drained:
		default:
			close(l.srv.drained)
		}
		if l.poll != nil {
			l.poll.Stop()
		}
	}
}

func (l *listener) checkClosed() {
	if l.closing && l.quiet && l.active() == 0 {
		l.ctx.Stop()
	}
}

// datagram handles a datagram to the server port.
func (l *listener) datagram(now time.Time, from netip.AddrPort, b []byte) {
	if l.closing {
		return // stopped: answer nothing, not even with an ERROR
	}
	op, err := PacketOpcode(b)
	if l.srv.cfg.SinglePort && op != OpRRQ && op != OpWRQ {
		if e := l.entries[from]; e != nil && e.x != nil {
			e.x.packet(now, from, b)
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
		same := bytes.Equal(e.req, b)
		switch stage := e.stage.Load(); {
		case same && stage == stagePinned:
			return // a late duplicate
		case same && stage == stageNew:
			// A retransmission: the client did not get the first packet.
			e.queued = true
			switch {
			case e.x != nil:
				e.x.requestAgain(now)
			case !e.ref.IsZero():
				e.ref.Tell(requestAgainMsg{})
			}
			return
		}
		l.cancel(e, "superseded by a new request from the client")
	}
	sh := l.shares.get(from.Addr())
	if max := l.srv.cfg.MaxTransfers; max > 0 && l.active() >= max {
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
	l.start(now, from, req, b, sh)
}

// refuse answers a request with an ERROR 0 and counts it.
func (l *listener) refuse(now time.Time, from netip.AddrPort, why, msg string, sh *share) {
	l.shard.refused[refuseIndex(why)].Add(1)
	l.srv.log.Debug("tftp: request refused", "client", from.String(), "reason", why)
	l.reply(now, from, ErrUndefined, msg, sh)
}

func (l *listener) start(now time.Time, from netip.AddrPort, req Request, b []byte, sh *share) {
	e := &entry{client: from, req: append([]byte(nil), b...), share: sh}
	if sh != nil {
		sh.active++
	}
	l.entries[from] = e
	if l.srv.cfg.SinglePort {
		x := l.srv.newXfer(l, req, from, &e.stage, &e.peerEnded, l.shard)
		x.ent = e
		e.x = x
		e.sm = udp.SendMany{Target: from, Ack: &x.sentTok}
		x.start(now, l.local)
		return
	}
	a := &transferActor{srv: l.srv, req: req, client: from, ent: e, listen: l.srv.cfg.Listen.Addr()}
	ref := l.ctx.SpawnOn(l.ctx.System().NextLoop(), a)
	e.ref, e.actor = ref, a
	l.byRef[ref] = e
	l.ctx.Watch(ref)
}

// cancel ends the transfer of e early.
func (l *listener) cancel(e *entry, why string) {
	if l.entries[e.client] == e {
		delete(l.entries, e.client)
	}
	if e.x != nil {
		e.x.cancel(why)
		return
	}
	if !e.ref.IsZero() {
		l.ctx.StopActor(e.ref)
	}
}

// ended runs when the transfer of e is over.
func (l *listener) ended(now time.Time, e *entry) {
	if sh := e.share; sh != nil {
		sh.active--
		e.share = nil
	}
	if l.entries[e.client] == e {
		delete(l.entries, e.client)
		if e.queued && e.peerEnded.Load() && !l.draining && !l.closing {
			req, err := ParseRequest(e.req)
			if err == nil {
				sh := l.shares.get(e.client.Addr())
				l.start(now, e.client, req, e.req, sh)
			}
		}
	}
	if l.draining {
		l.checkDrained()
	}
	l.checkClosed()
}

func (l *listener) terminated(now time.Time, ref netio.Ref) {
	e := l.byRef[ref]
	if e == nil {
		return
	}
	delete(l.byRef, ref)
	l.ended(now, e)
}

// The single-port driver: the listener is the xferIO of its transfers.

func (l *listener) send(x *xfer, dgs [][]byte) {
	e := x.ent
	e.sm.Datagrams = dgs
	l.ctx.Tell(l.sock, &e.sm)
}

func (l *listener) sendError(x *xfer, to netip.AddrPort, pkt []byte) {
	if !l.sock.IsZero() {
		l.ctx.Tell(l.sock, udp.Send{Data: append([]byte(nil), pkt...), Target: to})
	}
}

func (l *listener) resumeWriting(x *xfer) {
	l.blocked = append(l.blocked, x)
	if len(l.blocked) == 1 {
		l.ctx.Tell(l.sock, udp.ResumeWriting{})
	}
}

func (l *listener) setTimer(x *xfer, at time.Time) {
	armTimer(l.ctx, &x.ent.timer, &x.ent.armed, at, &x.timerTok)
}

func (l *listener) commit(x *xfer, u WriteFile) {
	l.srv.commit(l.ctx.Self(), x, u)
}

func (l *listener) begin(x *xfer, st TransferState) {
	l.srv.begin(l.ctx.Self(), x, st)
}

func (l *listener) finish(x *xfer) {
	e := x.ent
	if e.timer != nil {
		e.timer.Stop()
	}
	for i, b := range l.blocked {
		if b == x {
			l.blocked = append(l.blocked[:i], l.blocked[i+1:]...)
			break
		}
	}
	l.ended(l.ctx.Now(), e)
}

// armTimer makes *t fire at or before at, moving it only to an earlier
// time: a later deadline (the usual case, as a transfer progresses) costs
// nothing until the timer fires and the transfer re-arms it.
func armTimer(ctx *netio.Context, t **netio.Timer, armed *time.Time, at time.Time, tok *timerToken) {
	if at.IsZero() {
		return
	}
	if !armed.IsZero() && !at.Before(*armed) {
		return
	}
	d := max(at.Sub(ctx.Now()), 0)
	if *t == nil {
		*t = ctx.After(d, tok)
	} else {
		(*t).Reset(d)
	}
	*armed = at
}

// commit runs u.Commit (which syncs to disk) on a goroutine the server
// waits for at shutdown, and tells to the outcome.
func (s *Server) commit(to netio.Ref, x *xfer, u WriteFile) {
	s.commits.Add(1)
	rep := s.cfg.Replicator
	var st TransferState
	if rep != nil {
		st = x.state()
	}
	go func() {
		defer s.commits.Done()
		if rep == nil {
			to.Tell(committedMsg{x: x, err: u.Commit()})
			return
		}
		// Replicated: every node (this one too) publishes the file from
		// the replicated content; the local temporary file goes.
		content, err := uploadContent(u)
		if err == nil {
			err = rep.CommitUpload(st, content)
			content.Close()
		}
		u.Abort()
		to.Tell(committedMsg{x: x, err: err})
	}()
}

// begin records a transfer with the replicator, away from the loop.
func (s *Server) begin(to netio.Ref, x *xfer, st TransferState) {
	s.commits.Add(1)
	go func() {
		defer s.commits.Done()
		to.Tell(begunMsg{x: x, err: s.cfg.Replicator.Begin(st)})
	}()
}

type begunMsg struct {
	x   *xfer
	err error
}
