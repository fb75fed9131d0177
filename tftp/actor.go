package tftp

import (
	"net/netip"
	"sync"
	"time"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/udp"
)

// transfer is the actor of one server transfer, in both modes, and the
// only driver of its xfer: it hands the xfer each event (a datagram, the
// timer, the socket's answers, the answers of the slow work it runs away
// from the loop) and carries out what the event asked for (xfer.out, see
// apply).
//
// By default it binds a UDP socket of its own on a fresh port, the server's
// transfer ID (RFC 1350); the socket lives on the actor's loop, so
// datagrams reach the transfer without a copy, and closes when the actor
// stops. In single-port mode it runs on the listener's loop and sends
// through the listener's socket, which acknowledges each send to it; the
// listener forwards it the client's datagrams (netio.Context.Deliver: a
// direct call when the transfer is idle).
//
// It tells the listener what the listener needs to know: dallyingMsg when
// the transfer only lingers (Shutdown does not wait for it, and the same
// request from the client is a new one), abortedMsg when the client ended
// it with an ERROR before answering anything (a repeat of the request the
// listener holds then starts); its end the listener learns by death watch
// (netio.Terminated).
//
//	own socket:  binding ──Bound──► xfer.start … ──out.done──► stopped
//	                └──CommandFailed─────────────────────────► stopped
//	single port: xfer.start (or xfer.resume) … ──out.done───► stopped
type transfer struct {
	srv    *Server
	lis    netio.Ref
	req    Request
	client netip.AddrPort
	// resumed, when not nil, is the download of another server this one
	// takes over (ServerConfig.Resume).
	resumed *TransferState
	// sock is the socket it sends through: the listener's in single-port
	// mode (shared is then true), else its own, once bound.
	sock   netio.Ref
	shared bool
	local  netip.AddrPort // the TID: the listener's address, or the own socket's

	x        *xfer
	bind     udp.Bind
	sm       udp.SendMany // a window
	s1       udp.Send     // single-port lock-step: one datagram, coalesced
	timer    *netio.Timer
	armed    time.Time
	stopping bool
}

// Messages to a transfer actor, and the acks it asks for. Values of empty
// structs: telling them allocates nothing.
type (
	sentAck   struct{} // the SendMany's ack
	timerMsg  struct{}
	againMsg  struct{} // the listener saw the client's request again (xfer.requestAgain)
	cancelMsg struct{ why string }
	begunMsg  struct{ err error }
	// committedMsg is the outcome of an upload's commit.
	committedMsg struct{ err error }
	// stateQuery asks for the transfer's state (Server.Transfers): the
	// actor sends it on ch if the transfer is live, and closes ch.
	stateQuery struct{ ch chan<- TransferState }
)

func (t *transfer) PreStart(ctx *netio.Context) {
	t.x = t.srv.newXfer(t.req, t.client, t.srv.m.shard(ctx.Loop().ID()))
	t.sm = udp.SendMany{Target: t.client, Ack: sentAck{}}
	t.s1 = udp.Send{Target: t.client, Ack: sentAck{}}
	if t.shared {
		t.start(ctx.Now())
		t.apply(ctx)
		return
	}
	t.bind = udp.Bind{
		Handler: ctx.Self(), LocalAddr: t.local,
		Options: []netio.SocketOption{netio.ReceiveBufferSize(4 << 20), netio.SendBufferSize(4 << 20)},
	}
	ctx.Tell(udp.Manager(ctx.System()), &t.bind)
}

func (t *transfer) start(now time.Time) {
	if t.resumed != nil {
		t.x.resume(now, t.local, *t.resumed)
		t.resumed = nil
		return
	}
	t.x.start(now, t.local)
}

func (t *transfer) Receive(ctx *netio.Context, msg any) {
	now := ctx.Now()
	x := t.x
	switch m := msg.(type) {
	case udp.Received:
		x.packet(now, m.Sender(), m.Data())
	case sentAck:
		x.sent(now)
	case timerMsg:
		t.armed = time.Time{}
		x.timer(now)
	case againMsg:
		x.requestAgain(now)
	case committedMsg:
		x.committed(now, m.err)
	case begunMsg:
		x.begun(now, m.err)
	case cancelMsg:
		x.cancel(m.why)
	case stateQuery:
		if st, ok := x.liveState(); ok {
			m.ch <- st
		}
		close(m.ch)
		return
	case udp.Bound:
		t.sock, t.local = m.Socket, m.LocalAddr
		t.start(now)
	case udp.WritingResumed:
		x.writable(now)
	case udp.CommandFailed:
		switch m.Cmd {
		case &t.bind:
			t.srv.log.Error("tftp: cannot open a transfer port", "xfer", x.id, "client", t.client.String(), "err", m.Cause)
			x.end(resultError, m.Cause)
		case &t.sm, &t.s1:
			x.sendFailed(now, sendCause(m.Cause))
		}
	default:
		return
	}
	t.apply(ctx)
}

// apply carries out what the last event of the xfer asked for.
func (t *transfer) apply(ctx *netio.Context) {
	o := &t.x.out
	for i, e := range o.errs {
		if !t.sock.IsZero() {
			ctx.Tell(t.sock, udp.Send{Data: e.pkt, Target: e.to})
		}
		o.errs[i] = errorPacket{}
	}
	o.errs = o.errs[:0]
	if o.send != nil && t.shared && len(o.send) == 1 {
		// Lock-step on the shared port: a Send, which the socket queues
		// with the other transfers' datagrams of this loop turn and sends
		// in one sendmmsg (or GSO run) when the turn's messages are
		// drained. Safe across a stop: the position a transfer hands over
		// (sender.checkpoint) is the client's last ACK, never a block sent
		// or queued, and a queued block the socket still sends after the
		// stop leaves the client one block past it, where the next
		// server's probe starts (TestStopPositionFollowsTheClient).
		t.s1.Data = o.send[0]
		o.send = nil
		ctx.Tell(t.sock, &t.s1)
	} else if o.send != nil {
		t.sm.Datagrams = o.send
		o.send = nil
		ctx.Tell(t.sock, &t.sm)
	}
	if o.resume {
		o.resume = false
		ctx.Tell(t.sock, udp.ResumeWriting{})
	}
	if b := o.begin; b != nil {
		o.begin = nil
		t.srv.begin(ctx.Self(), b, t.x.transferState())
	}
	if u := o.commit; u != nil {
		o.commit = nil
		t.srv.commit(ctx.Self(), u, t.x.transferState())
	}
	if o.dallying {
		o.dallying = false
		ctx.Tell(t.lis, dallyingMsg{})
	}
	if o.done {
		if o.aborted {
			o.aborted = false
			ctx.Tell(t.lis, abortedMsg{})
		}
		if t.timer != nil {
			t.timer.Stop()
		}
		if !t.stopping {
			t.stopping = true
			ctx.Stop()
		}
		return
	}
	if !o.wake.IsZero() {
		armTimer(ctx, &t.timer, &t.armed, o.wake)
		o.wake = time.Time{}
	}
}

func (t *transfer) PostStop(ctx *netio.Context) {
	if t.x != nil && t.x.state != stateFinished {
		t.stopping = true // stopping already
		t.x.cancel("server stopped")
		if t.timer != nil {
			t.timer.Stop()
		}
	}
}

// armTimer makes *t fire at or before at, moving it only to an earlier
// time: a later deadline (the usual case, as a transfer progresses) costs
// nothing until the timer fires and the transfer re-arms it.
func armTimer(ctx *netio.Context, t **netio.Timer, armed *time.Time, at time.Time) {
	if !armed.IsZero() && !at.Before(*armed) {
		return
	}
	d := max(at.Sub(ctx.Now()), 0)
	if *t == nil {
		*t = ctx.After(d, timerMsg{})
	} else {
		(*t).Reset(d)
	}
	*armed = at
}

// commit publishes an upload on a goroutine the server waits for at
// shutdown, and tells to the outcome: u.Commit (which syncs to disk), or,
// replicated, Replicator.CommitUpload of its content.
func (s *Server) commit(to netio.Ref, u WriteFile, st TransferState) {
	s.commits.Add(1)
	rep := s.cfg.Replicator
	go func() {
		defer s.commits.Done()
		if rep == nil {
			to.Tell(committedMsg{err: u.Commit()})
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
		to.Tell(committedMsg{err: err})
	}()
}

// begin records a transfer with the replicator, away from the loop, and
// makes the End the transfer asked for meanwhile (beginCall).
func (s *Server) begin(to netio.Ref, b *beginCall, st TransferState) {
	s.commits.Add(1)
	rep := s.cfg.Replicator
	go func() {
		defer s.commits.Done()
		err := rep.Begin(st)
		if end, ok := b.returnedEnd(); ok {
			rep.End(end)
		}
		to.Tell(begunMsg{err: err})
	}()
}

// beginCall orders a transfer's End after its Begin. A transfer can end
// while its Begin is still on its way (the client's ERROR, or a timeout,
// in stateBeginning): ending it on the loop then could reach the
// replicator before the Begin did, or commit in an earlier entry than
// the Begin's, and leave the Begin's record standing once the transfer
// is gone (a next leader would resume it). So such an End waits: the
// Begin's goroutine makes it once Begin returned, failed or not (a failed
// Begin gets its End too, as a transfer refused by begun does: an End of
// no record is harmless). An End after Begin returned goes at once, as
// usual. Either way the replicator sees the End only after Begin
// returned, when the Begin's record is committed and applied
// (Replicator.Begin), so it needs no ordering of its own.
type beginCall struct {
	mu       sync.Mutex
	returned bool           // Begin returned
	end      *TransferState // the End asked for before it did
}

// deferEnd leaves the End of st to the Begin's goroutine if Begin has not
// returned yet, and reports whether it did. It is called on the loop; b
// may be nil (no Begin: not replicated, or resumed).
func (b *beginCall) deferEnd(st TransferState) bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.returned {
		return false
	}
	b.end = &st
	return true
}

// returned marks Begin returned and gives the End deferred meanwhile, if
// any.
func (b *beginCall) returnedEnd() (TransferState, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.returned = true
	if b.end == nil {
		return TransferState{}, false
	}
	return *b.end, true
}
