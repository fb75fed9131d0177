package raft

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"
	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// connRole is what an outgoing connection carries.
type connRole uint8

const (
	roleRPC       connRole = iota // votes, synchronous appends, TimeoutNow
	roleHeartbeat                 // heartbeats only: never behind an append
	rolePipeline                  // one append pipeline
	roleSnapshot                  // one InstallSnapshot, then closed
)

// call is one outstanding RPC of a client connection. Synchronous calls come
// from a pool and their caller waits on done; a pipelined append's call is
// embedded in its future. Either way the call is completed exactly once: by
// its answer, by the connection's timeout sweep, or by the connection's end,
// always by whoever removed it from the connection's pending list under the
// writer's lock. That is what makes pooling safe: a caller never abandons a
// call it could later see written to.
type call struct {
	id       uint64
	kind     rpcKind
	start    time.Time
	deadline time.Time

	// Synchronous calls.
	buf  []byte // the answer's body
	err  error
	done chan struct{}

	// Pipelined appends.
	fut *appendFuture
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func getCall(kind rpcKind, timeout time.Duration) *call {
	c := callPool.Get().(*call)
	c.kind = kind
	c.start = time.Now()
	c.deadline = c.start.Add(timeout)
	return c
}

func putCall(c *call) {
	if cap(c.buf) > 64<<10 {
		c.buf = nil
	}
	c.buf = c.buf[:0]
	c.err = nil
	c.fut = nil
	callPool.Put(c)
}

// clientConn is the actor of one outgoing connection, and the state it
// shares with the goroutines that send RPCs on it (under w.mu).
type clientConn struct {
	t      *Transport
	peer   *peer
	role   connRole
	remote netip.AddrPort
	ref    netio.Ref

	w      writer  // w.mu also guards the fields below it
	pend   []*call // FIFO: answers come back in request order
	phead  int
	nextID uint64
	// armed: the timeout sweep is scheduled, or the actor was told to
	// schedule it; cleared by the actor when nothing is pending.
	armed bool

	npend    atomic.Int32 // len(pend), for picking the least busy connection
	isClosed atomic.Bool
	answered atomic.Bool // an answer came on it (a call failing on it later may meet a restarted peer)

	// Callers read (roleHeartbeat and roleRPC): once the
	// connection handed its reading over (tcp.HandOverReading), a caller
	// waiting for its answer takes the read token and reads the socket
	// itself, through a duplicate of it on the runtime's poller, until its
	// own call is complete, completing the others' on the way; then it
	// gives the token back for the next waiting caller. An answer then
	// wakes its caller directly, as a blocking net.Conn read does, instead
	// of the loop and the loop the caller.
	// With TLS they read and write through a tls.Conn over that
	// duplicate (tw, tlsdirect.go), which they hold from the start.
	rfile *tcp.ReadFile // under w.mu; closed by shutdown
	rtok  chan struct{} // holds the token while nobody reads; nil: the actor reads
	tw    *tlsWriter    // TLS on a caller-read connection, else nil
	// A pipeline's answers (rolePipeline without TLS) are read by a
	// goroutine of its own once the reading is handed over (readPipeline):
	// it completes the futures and delivers them to raft, and the loop is
	// not woken for them.
	pipeRead bool
	rbuf     []byte    // the token holder's
	rdl      time.Time // the token holder's: rfile's read deadline

	// Owned by the actor.
	conn      netio.Ref // the tcp connection, once connected
	connected bool
	dialing   bool // Connect sent, no answer yet
	woke      bool // this read completed a call
	ending    bool // stop once the dial is answered (a Connect cannot be cancelled)
	rd        frameReader
	sweep     *netio.Timer // fires at the oldest pending call's deadline
	scheduled bool         // sweep is in the loop's timers
}

type sweepTick struct{}

// sweepArm asks the actor to schedule the timeout sweep: a call was written
// to the socket directly by its caller, with no actor in the way.
type sweepArm struct{}

// closeReq asks a connection actor to close its socket and stop; abort
// resets the connection (RST) so the peer sees an error, not a clean end.
type closeReq struct{ abort bool }

func newClientConn(t *Transport, p *peer, role connRole, remote netip.AddrPort) *clientConn {
	c := &clientConn{t: t, peer: p, role: role, remote: remote}
	c.rd.max = t.cfg.MaxFrameSize
	c.w.out = append(make([]byte, 0, 4096), preamble[:]...)
	switch {
	case t.cfg.TLS == nil:
		c.w.direct = tcp.NewDirectWriter()
		switch role {
		case roleHeartbeat, roleRPC:
			c.rtok = make(chan struct{}, 1)
		case rolePipeline:
			c.pipeRead = true
		}
	case role == roleHeartbeat || role == roleRPC:
		c.w.direct = tcp.NewDirectWriter() // for the ciphertext
		c.rtok = make(chan struct{}, 1)
		c.tw = &tlsWriter{plain: c.w.out}
		c.w.out = make([]byte, 0, 4096)
	} // else TLS through the shim (tls.go)
	c.w.kicked = true // the preamble waits for the connection
	return c
}

// schedule arms the timeout sweep for the oldest pending call (actor
// only). An idle connection has no timer: a caller that adds a call while
// none is armed tells the actor (sweepArm, or the kick that makes it
// write), and the actor disarms when nothing is pending. Deadlines grow in
// call order, so a sweep scheduled for an older call fires first; it then
// re-arms for the next.
func (c *clientConn) schedule(ctx *netio.Context) {
	c.w.mu.Lock()
	if c.phead == len(c.pend) {
		c.armed = false
		c.w.mu.Unlock()
		return
	}
	c.armed = true
	deadline := c.pend[c.phead].deadline
	c.w.mu.Unlock()
	if c.scheduled {
		return
	}
	// At least every Timeout: a snapshot's deadline is moved once its data
	// is sent, from another goroutine.
	d := min(max(deadline.Sub(ctx.Now()), 0), c.t.cfg.Timeout)
	if c.sweep == nil {
		c.sweep = ctx.After(d, sweepTick{})
	} else {
		c.sweep.Reset(d)
	}
	c.scheduled = true
}

func (c *clientConn) PreStart(ctx *netio.Context) {
	c.dialing = true
	connect := tcp.Connect{Handler: ctx.Self(), RemoteAddr: c.remote, Timeout: c.t.cfg.Timeout}
	if local := c.t.localFor(c.remote); local.IsValid() {
		// Dial from the address this node listens on. With no port, the
		// kernel picks one at connect, per destination, instead of
		// reserving one for every destination at bind.
		connect.LocalAddr = local
		connect.Options = bindNoPort
	}
	ctx.Tell(tcp.Manager(ctx.System()), connect)
}

func (c *clientConn) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case tcp.Received:
		c.t.m.bytesIn.Add(uint64(len(m.Data())))
		c.woke = false
		if _, err := c.rd.feed(m.Data(), c.onFrame); err != nil {
			c.t.m.rejected.Add(1)
			c.t.log.Warn("raft transport: bad answer; closing the connection", "peer", c.remote, "err", err)
			c.end(ctx, err, true)
		}
		if c.woke {
			ctx.YieldBeforeBlocking()
		}
	case writeAck:
		raw := c.w.wraw != nil
		c.w.acked()
		c.pump(ctx)
		if raw {
			ctx.YieldBeforeBlocking() // the snapshot sender, to refill the chunk
		}
	case kickMsg:
		c.pump(ctx)
	case sweepArm:
		c.schedule(ctx)
	case sweepTick:
		c.scheduled = false
		if expired := c.expire(ctx.Now()); len(expired) > 0 {
			// The server answers a connection's requests in order, and
			// one that raft never answers holds back every answer after
			// it: drop the connection, as raft.NetworkTransport does, so
			// that the next call dials a fresh one instead of waiting
			// behind it. It is marked closed before the expired calls'
			// callers learn of their timeout, so that none of them picks
			// it again; the later calls in flight on it fail after them
			// (a pipeline's futures stay in order).
			c.isClosed.Store(true)
			c.peer.forget(c)
			for _, x := range expired {
				failCall(x.cl, x.err)
			}
			c.end(ctx, expired[0].err, true)
			return
		}
		c.schedule(ctx)
	case tcp.Connected:
		c.dialing = false
		if c.ending {
			ctx.Tell(m.Socket, tcp.Abort{})
			ctx.Stop()
			return
		}
		conn := m.Socket
		if c.t.cfg.TLS != nil && c.tw == nil {
			var err error
			if conn, err = c.t.startTLS(ctx, m.Socket, c.remote); err != nil {
				ctx.Tell(m.Socket, tcp.Abort{})
				c.end(ctx, err, false)
				return
			}
		}
		c.conn, c.connected = conn, true
		ctx.Tell(conn, tcp.Register{Handler: ctx.Self(), Direct: c.w.direct})
		if c.rtok != nil || c.pipeRead {
			ctx.Tell(conn, tcp.HandOverReading{})
		}
		ctx.Watch(conn)
		c.t.trackConn(conn)
		c.peer.dialed(c, nil)
		c.pump(ctx)
	case tcp.ReadingHandedOver:
		// Every answer the connection read came before this: from now on
		// the callers read (the frame reader is the token holder's).
		c.w.mu.Lock()
		if c.w.closed != nil {
			c.w.mu.Unlock()
			m.File.Close()
			return
		}
		c.rfile = m.File
		c.w.mu.Unlock()
		switch {
		case c.pipeRead:
			c.t.wg.Add(1)
			go c.readPipeline(m.File)
		case c.tw != nil:
			c.t.wg.Add(1)
			go c.tlsStart(m.File)
		default:
			c.rtok <- struct{}{}
		}
	case tcp.FINArrived:
		// The peer closed (a restart): no new call may pick this
		// connection; the callers waiting read their answers, then EOF.
		c.isClosed.Store(true)
		c.peer.forget(c)
		c.w.mu.Lock()
		idle := c.phead == len(c.pend)
		c.w.mu.Unlock()
		if idle {
			c.end(ctx, errPeerClosed, false)
		}
	case tcp.CommandFailed:
		if _, ok := m.Cmd.(tcp.Connect); ok {
			c.dialing = false
			if c.ending {
				ctx.Stop()
				return
			}
			err := fmt.Errorf("dial: %w", m.Cause)
			c.peer.dialed(c, err)
			c.end(ctx, fmt.Errorf("%w: %w", ErrPeerUnavailable, err), false)
			return
		}
		c.end(ctx, fmt.Errorf("write refused: %w", m.Cause), true)
	case tcp.ConnectionClosed:
		c.t.untrackConn(c.conn)
		c.conn = netio.Ref{}
		var cause error = errPeerClosed
		if e, ok := m.(tcp.ErrorClosed); ok {
			cause = e.Cause
		}
		c.end(ctx, cause, false)
	case netio.Terminated:
		if m.Ref == c.conn {
			c.t.untrackConn(c.conn)
			c.conn = netio.Ref{}
			c.end(ctx, errPeerClosed, false)
		}
	case closeReq:
		c.end(ctx, nil, m.abort)
	}
}

var errPeerClosed = errors.New("closed by the peer")

// pump starts the next write, and the timeout sweep for what it carries.
func (c *clientConn) pump(ctx *netio.Context) {
	if c.w.pump(ctx, c.conn, c.t.m) {
		c.schedule(ctx)
	}
}

// localFor returns the address to bind before dialing remote: the IP the
// transport listens on, port 0, unless that IP is unspecified, of the other
// family, or loopback while remote is not (a loopback source cannot leave
// the host); the zero AddrPort leaves the source to the kernel.
func (t *Transport) localFor(remote netip.AddrPort) netip.AddrPort {
	ip := t.bound.Addr()
	switch {
	case !ip.IsValid(), ip.IsUnspecified(),
		ip.Is4() != remote.Addr().Is4(),
		ip.IsLoopback() && !remote.Addr().IsLoopback():
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip, 0)
}

// bindNoPort defers the choice of the source port of a connection bound to
// an IP with port 0 to connect (IP_BIND_ADDRESS_NO_PORT, IPv4 and IPv6).
var bindNoPort = []netio.SocketOption{netio.BoolOption("IP_BIND_ADDRESS_NO_PORT", unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, true)}

// onFrame handles one answer.
func (c *clientConn) onFrame(f frame, _ bool) (bool, error) {
	if f.kind != kindResponse {
		return false, fmt.Errorf("%w: unexpected frame kind %v from a server", ErrMalformed, f.kind)
	}
	c.w.mu.Lock()
	cl := c.takeLocked(f.id)
	if cl != nil {
		c.completeLocked(cl, f.body)
		c.woke = true
	}
	c.w.mu.Unlock()
	return false, nil
}

// takeLocked removes the pending call with id, nil if there is none (it
// timed out).
func (c *clientConn) takeLocked(id uint64) *call {
	for i := c.phead; i < len(c.pend); i++ {
		cl := c.pend[i]
		if cl.id != id {
			continue
		}
		if i == c.phead {
			c.pend[i] = nil
			c.phead++
		} else {
			copy(c.pend[i:], c.pend[i+1:])
			c.pend[len(c.pend)-1] = nil
			c.pend = c.pend[:len(c.pend)-1]
		}
		if c.phead == len(c.pend) {
			c.pend, c.phead = c.pend[:0], 0
		}
		c.npend.Add(-1)
		return cl
	}
	return nil
}

// completeLocked finishes a call with its answer's body.
func (c *clientConn) completeLocked(cl *call, body []byte) {
	c.answered.Store(true)
	if cl.fut != nil {
		cl.fut.answer(body)
		return
	}
	cl.buf = append(cl.buf[:0], body...)
	cl.err = nil
	cl.done <- struct{}{}
}

func failCall(cl *call, err error) {
	if cl.fut != nil {
		cl.fut.fail(err)
		return
	}
	cl.err = err
	cl.done <- struct{}{}
}

type expiredCall struct {
	cl  *call
	err error
}

// expire takes the calls whose deadline passed off the pending list (actor
// only); the caller fails them.
func (c *clientConn) expire(now time.Time) []expiredCall {
	var out []expiredCall
	c.w.mu.Lock()
	for c.phead < len(c.pend) && !now.Before(c.pend[c.phead].deadline) {
		cl := c.takeLocked(c.pend[c.phead].id)
		out = append(out, expiredCall{cl, fmt.Errorf("%w after %v", ErrTimeout, now.Sub(cl.start).Round(time.Millisecond))})
	}
	c.w.mu.Unlock()
	return out
}

// enqueue registers cl and queues its request frame.
func (c *clientConn) enqueue(cl *call, kind rpcKind, args any) error {
	c.w.mu.Lock()
	if c.w.closed != nil {
		err := c.w.closed
		c.w.mu.Unlock()
		return err
	}
	c.nextID++
	cl.id = c.nextID
	dst := &c.w.out
	if c.tw != nil {
		dst = &c.tw.plain // encrypted by flushTLS
	}
	b, start := beginFrame(*dst, kind, cl.id)
	b = appendRequest(b, args)
	b, err := endFrame(b, start, c.t.cfg.MaxFrameSize)
	*dst = b
	if err != nil {
		c.w.mu.Unlock()
		return err
	}
	c.pend = append(c.pend, cl)
	c.npend.Add(1)
	arm := !c.armed
	c.armed = true
	if c.tw != nil {
		c.w.mu.Unlock()
		if arm {
			c.ref.Tell(sweepArm{})
		}
		c.flushTLS()
		return nil
	}
	// A pipeline with appends in flight has more coming: let the actor
	// batch them. Everything else is a lone call, written at once.
	direct := c.role != rolePipeline || len(c.pend)-c.phead == 1
	kick := c.w.sendLocked(c.t.m, direct)
	c.w.mu.Unlock()
	switch {
	case kick:
		c.ref.Tell(kickMsg{}) // the actor arms the sweep when it writes
	case arm:
		c.ref.Tell(sweepArm{})
	}
	return nil
}

// wait returns once cl is complete: a synchronous call's caller reads the
// answers itself while it holds the read token (see rfile).
func (c *clientConn) wait(cl *call) {
	if c.rtok == nil {
		<-cl.done
		return
	}
	select {
	case <-cl.done:
		return
	case <-c.rtok:
	}
	c.readFor(cl)
	c.rtok <- struct{}{}
	<-cl.done
}

// readFor reads answers until cl is complete, its deadline passed (the
// timeout sweep fails it) or the connection ended (token holder).
func (c *clientConn) readFor(cl *call) {
	c.w.mu.Lock()
	f, deadline := c.rfile, cl.deadline
	c.w.mu.Unlock()
	if f == nil {
		return // closed: shutdown failed every call
	}
	if c.rbuf == nil {
		c.rbuf = make([]byte, 16<<10)
	}
	r := c.reader(f)
	for len(cl.done) == 0 {
		if !deadline.Equal(c.rdl) {
			if err := f.SetReadDeadline(deadline); err != nil {
				c.readFailed(err)
				return
			}
			c.rdl = deadline
		}
		n, err := r.Read(c.rbuf)
		if n > 0 {
			c.t.m.bytesIn.Add(uint64(n))
			if _, err := c.rd.feed(c.rbuf[:n], c.onFrame); err != nil {
				c.t.m.rejected.Add(1)
				c.t.log.Warn("raft transport: bad answer; closing the connection", "peer", c.remote, "err", err)
				c.close(fmt.Errorf("%w: %w", ErrConnectionClosed, err), true)
				return
			}
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return // the sweep fails the call and drops the connection
		}
		if err == nil {
			err = io.ErrNoProgress
		}
		c.readFailed(err)
		return
	}
}

// readPipeline reads a pipeline's answers until the connection ends (its
// own goroutine, started at the hand-over): an answer wakes it through the
// runtime's poller, and it completes the future and delivers it to raft's
// Consumer channel itself, as NetworkTransport's decoder goroutine does,
// with no loop turn in between. It stops when shutdown closes f.
func (c *clientConn) readPipeline(f *tcp.ReadFile) {
	defer c.t.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			c.t.m.bytesIn.Add(uint64(n))
			if _, err := c.rd.feed(buf[:n], c.onFrame); err != nil {
				c.t.m.rejected.Add(1)
				c.t.log.Warn("raft transport: bad answer; closing the connection", "peer", c.remote, "err", err)
				c.close(fmt.Errorf("%w: %w", ErrConnectionClosed, err), true)
				return
			}
			continue
		}
		if err == nil {
			err = io.ErrNoProgress
		}
		c.readFailed(err)
		return
	}
}

// readFailed ends the connection over a failed read by a caller.
func (c *clientConn) readFailed(err error) {
	switch {
	case errors.Is(err, os.ErrClosed):
		return // shutdown closed it
	case errors.Is(err, io.EOF):
		c.close(fmt.Errorf("%w: %w", ErrConnectionClosed, errPeerClosed), false)
	default:
		c.close(fmt.Errorf("%w: %w", ErrConnectionClosed, err), true)
	}
}

// setDeadline moves a pending call's deadline.
func (c *clientConn) setDeadline(cl *call, d time.Time) {
	c.w.mu.Lock()
	cl.deadline = d
	c.w.mu.Unlock()
}

// shutdown closes the connection's bridge: every pending call and queued
// chunk fails with err, later enqueues fail with it. Safe from any
// goroutine; only the first call has an effect.
func (c *clientConn) shutdown(err error) {
	c.w.mu.Lock()
	if c.w.closed != nil {
		c.w.mu.Unlock()
		return
	}
	c.isClosed.Store(true)
	raws := c.w.closeLocked(err)
	for i := c.phead; i < len(c.pend); i++ {
		failCall(c.pend[i], err)
		c.pend[i] = nil
	}
	c.pend, c.phead = nil, 0
	c.npend.Store(0)
	f := c.rfile
	c.rfile = nil
	c.w.mu.Unlock()
	if f != nil {
		f.Close() // a caller blocked reading it returns
	}
	for _, r := range raws {
		r.done <- err
	}
	c.peer.forget(c)
}

// close shuts the connection down from outside the actor.
func (c *clientConn) close(err error, abort bool) {
	c.shutdown(err)
	c.ref.Tell(closeReq{abort: abort})
}

// end shuts down and stops the actor; cause nil means a local close.
func (c *clientConn) end(ctx *netio.Context, cause error, abort bool) {
	err := error(ErrTransportShutdown)
	switch {
	case errors.Is(cause, ErrPeerUnavailable):
		err = cause // never connected: the dial failed
	case cause != nil:
		err = fmt.Errorf("%w: %w", ErrConnectionClosed, cause)
	}
	c.shutdown(err)
	switch {
	case !c.conn.IsZero():
		if abort {
			ctx.Tell(c.conn, tcp.Abort{})
		} else {
			ctx.Tell(c.conn, tcp.Close{})
		}
	case c.dialing:
		// A Connect cannot be cancelled: wait for its answer (bounded by
		// the connect timeout), then close what it brings.
		c.ending = true
		return
	}
	ctx.Stop()
}

func (c *clientConn) PostStop(ctx *netio.Context) {
	c.shutdown(fmt.Errorf("%w: connection actor stopped", ErrConnectionClosed))
	if c.sweep != nil {
		c.sweep.Stop()
	}
	c.w.release(ErrConnectionClosed)
	if !c.connected {
		c.peer.dialed(c, ErrTransportShutdown)
	}
	if !c.conn.IsZero() {
		c.t.forgetConnUnlessClosing(c.conn)
	}
	c.t.untrackActor(ctx.Self())
}

// appendRequest encodes a request body.
func appendRequest(b []byte, args any) []byte {
	switch a := args.(type) {
	case *hraft.AppendEntriesRequest:
		return appendAppendEntriesRequest(b, a)
	case *hraft.RequestVoteRequest:
		return appendRequestVoteRequest(b, a)
	case *hraft.RequestPreVoteRequest:
		return appendRequestPreVoteRequest(b, a)
	case *hraft.InstallSnapshotRequest:
		return appendInstallSnapshotRequest(b, a)
	case *hraft.TimeoutNowRequest:
		return appendTimeoutNowRequest(b, a)
	}
	panic(fmt.Sprintf("raft transport: no encoding for %T", args))
}

// decodeAnswer splits an answer body and decodes its payload into resp.
func decodeAnswer(body []byte, resp any) error {
	d := decoder{b: body}
	flags := d.flags("answer flags", respError|respPayload)
	var remote error
	if flags&respError != 0 {
		msg := d.bytes("answer error")
		remote = &RemoteError{Msg: string(msg)}
	}
	if d.err != nil {
		return d.err
	}
	if flags&respPayload == 0 {
		if err := d.end(); err != nil {
			return err
		}
		if remote == nil {
			return fmt.Errorf("%w: answer without payload or error", ErrMalformed)
		}
		return remote
	}
	p := body[d.off:]
	var err error
	switch r := resp.(type) {
	case *hraft.AppendEntriesResponse:
		err = decodeAppendEntriesResponse(p, r)
	case *hraft.RequestVoteResponse:
		err = decodeRequestVoteResponse(p, r)
	case *hraft.RequestPreVoteResponse:
		err = decodeRequestPreVoteResponse(p, r)
	case *hraft.InstallSnapshotResponse:
		err = decodeInstallSnapshotResponse(p, r)
	case *hraft.TimeoutNowResponse:
		err = decodeTimeoutNowResponse(p, r)
	default:
		err = fmt.Errorf("raft transport: no decoding for %T", resp)
	}
	if err != nil {
		return err
	}
	return remote
}
