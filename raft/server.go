package raft

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

type heartbeatFn struct {
	mu sync.RWMutex
	fn func(hraft.RPC)
}

func (h *heartbeatFn) set(fn func(hraft.RPC)) {
	h.mu.Lock()
	h.fn = fn
	h.mu.Unlock()
}

func (h *heartbeatFn) get() func(hraft.RPC) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.fn
}

// listener is the actor that owns the transport's listening socket: it
// binds, and gives each accepted connection to a new serverConn.
type listener struct {
	t      *Transport
	addr   netip.AddrPort
	result chan<- error
	bound  netip.AddrPort // written before result is sent
}

func (l *listener) PreStart(ctx *netio.Context) {
	ctx.Tell(tcp.Manager(ctx.System()), tcp.Bind{Handler: ctx.Self(), LocalAddr: l.addr})
}

func (l *listener) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case tcp.Bound:
		l.bound = m.LocalAddr
		l.t.mu.Lock()
		l.t.tcpLn = m.Socket
		l.t.mu.Unlock()
		l.result <- nil
	case tcp.CommandFailed:
		l.result <- m.Cause
		ctx.Stop()
	case tcp.Connected:
		if !l.t.admit(m.Socket) {
			return
		}
		s := &serverConn{t: l.t, conn: m.Socket, connRef: m.Socket, remote: m.RemoteAddr, local: l.bound}
		s.rd.max = l.t.cfg.MaxFrameSize
		s.rd.fresh = true
		s.w.direct = tcp.NewDirectWriter()
		if l.t.cfg.TLS != nil {
			// The dispatcher reads and writes the socket through its
			// tls.Conn from the start (tlsdirect.go): the actor registers
			// and hands the reading over itself, in that order.
			s.tlsd, s.handOff = true, true
		}
		// On the connection's loop, so its reads reach us without a copy.
		l.t.mu.Lock()
		if l.t.closed {
			l.t.mu.Unlock()
			m.Socket.Tell(tcp.Abort{})
			return
		}
		ref := ctx.SpawnOn(m.Socket.Loop(), s)
		s.ref = ref
		l.t.actors[ref] = struct{}{}
		l.t.servers[s] = struct{}{}
		l.t.tcpConns[m.Socket] = struct{}{}
		l.t.mu.Unlock()
		if !s.tlsd {
			ctx.Tell(s.conn, tcp.Register{Handler: ref, Direct: s.w.direct})
		}
	case closeReq:
		ctx.Stop() // the tcp listener watches us: it closes the socket
	}
}

func (l *listener) PostStop(ctx *netio.Context) {
	l.t.untrackActor(ctx.Self())
}

// serverConn is the actor of one accepted connection. It reassembles
// request frames and queues them for its dispatcher goroutine, which hands
// them to raft and writes the answers back through the writer. Snapshot
// data goes to a snapPipe instead, read by raft.
type serverConn struct {
	t       *Transport
	conn    netio.Ref // zero once closed
	connRef netio.Ref
	remote  netip.AddrPort
	local   netip.AddrPort // the listener's (Transport.bound is written after the listener starts)
	ref     netio.Ref      // for other goroutines: set by the listener before it publishes s

	w    writer // answers, from the dispatcher
	tlsd bool   // TLS: the dispatcher reads and writes through a tls.Conn (tlsdirect.go)

	// Queue to the dispatcher.
	qmu sync.Mutex
	q   []inbound
	// rfile: the socket, handed over to the dispatcher (under qmu): a
	// connection whose first request is not an InstallSnapshot (raft's
	// heartbeat, RPC and pipeline connections) is then read by its
	// dispatcher itself whenever it has nothing queued or in flight, as
	// NetworkTransport serves one request at a time (a read of a busy
	// pipeline brings many): a request costs no wake-up of the loop and
	// none of the dispatcher by the loop. From then on the dispatcher owns
	// rd.
	rfile    *tcp.ReadFile
	dispDone bool // the dispatcher returned (under qmu): rfile is not set after
	// dsnap: a snapshot whose data the dispatcher handed the socket to
	// (TLS; under qmu): PostStop cuts it short.
	dsnap   *snapPipe
	qsignal chan struct{}
	rresume chan struct{} // TLS: the reader goroutine may read again (waitRoom)
	drained chan struct{} // a write of answers was acked (the dispatcher, while outFull)
	resume  atomic.Bool   // the dispatcher must ask for ResumeReading

	// Owned by the actor.
	pre        int // preamble bytes checked
	rd         frameReader
	snap       *snapPipe
	handing    *snapPipe // asked tcp to hand its reading over to this pipe
	handOff    bool      // asked tcp to hand its reading over to the dispatcher
	suspended  bool      // reading suspended because the queue was full
	closeAfter bool      // close once the answer is written (after a snapshot)
	stopCh     chan struct{}
	closing    bool
	self       netio.Ref
	woke       bool   // this read queued a request for the dispatcher
	peer       string // the node id of the TLS peer (the dispatcher's, set at its handshake)
	born       time.Time
	lastRead   time.Time
	guard      *netio.Timer // deadlines (limits.go)
}

// inbound is a request for the dispatcher.
type inbound struct {
	kind   rpcKind
	id     uint64
	body   []byte // owned: decoded messages alias it
	cmd    any    // already decoded (InstallSnapshot)
	pipe   *snapPipe
	charge int // of the transport's budget, given back when popped
}

type resumeReading struct{}

// handOffReading asks the actor to hand the socket's reading over to the
// dispatcher.
type handOffReading struct{}

type closeAfterAnswer struct{}

type protocolError struct{ err error }

func (s *serverConn) PreStart(ctx *netio.Context) {
	s.self = ctx.Self()
	s.qsignal = make(chan struct{}, 1)
	s.rresume = make(chan struct{}, 1)
	s.drained = make(chan struct{}, 1)
	s.stopCh = make(chan struct{})
	if s.tlsd {
		// Suspended first: the loop reads nothing of the handshake.
		ctx.Tell(s.conn, tcp.SuspendReading{})
		ctx.Tell(s.conn, tcp.Register{Handler: s.self, Direct: s.w.direct})
		ctx.Tell(s.conn, tcp.HandOverReading{})
	}
	ctx.Watch(s.conn)
	s.startGuard(ctx)
	d := &dispatcher{s: s, t: s.t, self: ctx.Self()}
	s.t.wg.Add(1)
	go d.run()
}

// stop asks the actor to close the connection and stop (any goroutine).
func (s *serverConn) stop() { s.ref.Tell(closeReq{abort: false}) }

func (s *serverConn) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case tcp.Received:
		s.t.m.bytesIn.Add(uint64(len(m.Data())))
		s.lastRead = ctx.Now()
		s.woke = false
		if err := s.onData(ctx, m.Data()); err != nil {
			s.reject(ctx, err)
		}
		if s.woke {
			ctx.YieldBeforeBlocking()
		}
	case writeAck:
		s.w.acked()
		select {
		case s.drained <- struct{}{}:
		default:
		}
		s.pump(ctx)
	case kickMsg:
		s.pump(ctx)
	case resumeReading:
		if s.suspended && !s.closing {
			s.suspended = false
			ctx.Tell(s.conn, tcp.ResumeReading{})
		}
	case handOffReading:
		if !s.closing && s.handing == nil && s.snap == nil && !s.handOff {
			s.handOff = true
			ctx.Tell(s.conn, tcp.HandOverReading{})
		}
	case tcp.ReadingHandedOver:
		if s.handOff && s.snap == nil && !s.closing {
			s.qmu.Lock()
			done := s.dispDone
			if !done {
				s.rfile = m.File
			}
			s.qmu.Unlock()
			if done {
				m.File.Close()
			}
			s.signal()
			return
		}
		if s.snap != nil && s.snap == s.handing && !s.closing {
			s.snap.handOver(m.File, s.snap.remaining)
			s.snap = nil
		} else {
			m.File.Close()
		}
	case closeAfterAnswer:
		s.closeAfter = true
		s.pump(ctx)
	case protocolError:
		s.reject(ctx, m.err)
	case guardTick:
		s.checkGuard(ctx)
	case tcp.ConnectionClosed:
		s.conn = netio.Ref{}
		ctx.Stop()
	case netio.Terminated:
		if m.Ref == s.conn {
			s.conn = netio.Ref{}
			ctx.Stop()
		}
	case closeReq:
		s.closing = true
		if m.abort {
			ctx.Tell(s.conn, tcp.Abort{})
		} else {
			ctx.Tell(s.conn, tcp.Close{})
		}
		ctx.Stop()
	}
}

func (s *serverConn) pump(ctx *netio.Context) {
	if !s.w.pump(ctx, s.conn, s.t.m) && s.closeAfter && !s.closing && s.w.idle() {
		s.closing = true
		ctx.Tell(s.conn, tcp.Close{})
	}
}

// reject closes this connection (only this one) over bad input.
func (s *serverConn) reject(ctx *netio.Context, err error) {
	if s.closing {
		return
	}
	s.closing = true
	s.t.m.rejected.Add(1)
	s.t.log.Warn("raft transport: closing a connection that sent bad data", "remote", s.remote, "err", err)
	ctx.Tell(s.conn, tcp.Abort{})
	ctx.Stop()
}

// onData consumes bytes read from the socket.
func (s *serverConn) onData(ctx *netio.Context, p []byte) error {
	if s.closing {
		return nil
	}
	if s.pre < len(preamble) {
		k := min(len(preamble)-s.pre, len(p))
		if !bytes.Equal(p[:k], preamble[s.pre:s.pre+k]) {
			return fmt.Errorf("%w: not a raft transport client (bad preamble)", ErrMalformed)
		}
		s.pre += k
		p = p[k:]
	}
	for len(p) > 0 {
		if s.snap != nil {
			n, done := s.snap.write(p)
			s.woke = true // the snapshot reader
			p = p[n:]
			if s.snap.full() && !s.suspended {
				s.suspended = true
				ctx.Tell(s.conn, tcp.SuspendReading{})
			}
			if done {
				s.snap = nil
			}
			continue
		}
		n, err := s.rd.feed(p, s.onFrame)
		if err != nil {
			return err
		}
		p = p[n:]
	}
	if s.snap != nil && s.handing == nil && s.w.direct != nil {
		// Not with TLS (s.conn is the shim, the socket holds ciphertext).
		s.handing = s.snap
		ctx.Tell(s.conn, tcp.HandOverReading{})
	}
	s.rd.shrink()
	if !s.suspended && s.queueLen() >= serverQueueFrames {
		// Raft is behind: stop reading until the dispatcher drained half
		// the queue. The flag is set before the second look, so either the
		// dispatcher sees it when it pops, or we see its pops here.
		s.resume.Store(true)
		if s.queueLen() <= serverQueueFrames/2 && s.resume.CompareAndSwap(true, false) {
			return nil
		}
		s.suspended = true
		ctx.Tell(s.conn, tcp.SuspendReading{})
	}
	return nil
}

// onFrame queues one request for the dispatcher; an InstallSnapshot switches
// the connection to reading snapshot data.
func (s *serverConn) onFrame(f frame, _ bool) (bool, error) {
	switch f.kind {
	case kindAppendEntries, kindRequestVote, kindRequestPreVote, kindTimeoutNow:
		s.push(inbound{kind: f.kind, id: f.id, body: f.body, charge: f.charge})
		return false, nil
	case kindInstallSnapshot:
		req := new(hraft.InstallSnapshotRequest)
		if err := decodeInstallSnapshotRequest(f.body, req, true); err != nil {
			s.t.bud.give(f.charge)
			return false, err
		}
		pipe := newSnapPipe(s.t, s.self, req.Size)
		s.push(inbound{kind: f.kind, id: f.id, cmd: req, pipe: pipe, charge: f.charge})
		if req.Size > 0 {
			s.snap = pipe
			return true, nil // the rest of the read is snapshot data
		}
		return false, nil
	default:
		s.t.bud.give(f.charge)
		return false, fmt.Errorf("%w: unknown request kind %v", ErrMalformed, f.kind)
	}
}

func (s *serverConn) push(in inbound) {
	s.woke = true
	s.enqueue(in)
}

func (s *serverConn) enqueue(in inbound) {
	s.qmu.Lock()
	s.q = append(s.q, in)
	s.qmu.Unlock()
	s.signal()
}

func (s *serverConn) signal() {
	select {
	case s.qsignal <- struct{}{}:
	default:
	}
}

func (s *serverConn) queueLen() int {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return len(s.q)
}

// pop takes the next request (dispatcher), asking the actor to read again
// once the queue is half empty.
func (s *serverConn) pop(self netio.Ref) (inbound, bool) {
	s.qmu.Lock()
	if len(s.q) == 0 {
		s.qmu.Unlock()
		return inbound{}, false
	}
	in := s.q[0]
	s.q[0] = inbound{}
	s.q = s.q[1:]
	if len(s.q) == 0 {
		s.q = nil
	}
	n := len(s.q)
	s.qmu.Unlock()
	s.t.bud.give(in.charge)
	if n <= serverQueueFrames/2 && s.resume.CompareAndSwap(true, false) {
		if s.tlsd {
			select { // the reader (waitRoom)
			case s.rresume <- struct{}{}:
			default:
			}
		} else {
			self.Tell(resumeReading{})
		}
	}
	return in, true
}

func (s *serverConn) PostStop(ctx *netio.Context) {
	close(s.stopCh)
	s.qmu.Lock()
	f, dsnap := s.rfile, s.dsnap
	s.qmu.Unlock()
	if f != nil {
		f.Close() // the dispatcher's read returns; it releases rd
	}
	if dsnap != nil {
		dsnap.finish(fmt.Errorf("%w: before all snapshot data arrived", ErrConnectionClosed))
	}
	s.stopGuard(f == nil)
	s.w.mu.Lock()
	raws := s.w.closeLocked(ErrConnectionClosed)
	s.w.mu.Unlock()
	for _, r := range raws {
		r.done <- ErrConnectionClosed
	}
	s.w.release(ErrConnectionClosed)
	cut := fmt.Errorf("%w: before all snapshot data arrived", ErrConnectionClosed)
	if s.snap != nil {
		s.snap.finish(cut)
	}
	if s.handing != nil {
		s.handing.finish(cut) // closes the socket's duplicate: a complete snapshot keeps io.EOF
	}
	s.t.mu.Lock()
	delete(s.t.servers, s)
	delete(s.t.actors, ctx.Self())
	if s.conn.IsZero() || !s.t.closed {
		// Closed, or closing by the death pact with nobody to wait for it:
		// only Close waits for sockets.
		delete(s.t.tcpConns, s.connRef)
	}
	s.t.mu.Unlock()
}

// dispatcher is a server connection's goroutine: it hands requests to raft
// in order (the heartbeat handler or the Consumer channel), waits for their
// answers in the same order, and queues each answer for writing. While
// raft works on one request, the next is already offered on the channel.
type dispatcher struct {
	s    *serverConn
	t    *Transport
	self netio.Ref // the serverConn actor

	inflight []pending
	free     []chan hraft.RPCResponse
	first    bool   // the connection's first request was seen
	framed   bool   // a request was read (onFrame; the reading goroutine's)
	rbuf     []byte // socket reads, once handed over
	rdl      bool   // a read deadline is set (in the middle of a frame)

	// With TLS (s.tlsd): the connection's tls.Conn over rfile, once the
	// handshake is done, which the dispatcher reads and writes.
	tc    *tls.Conn
	fc    *tlsFileConn
	plain []byte    // answers not yet encrypted
	snap  *snapPipe // an InstallSnapshot just read: its data follows
	// readerDone: a reader goroutine reads the socket (TLS pipelines,
	// startReader); closed when it returned.
	readerDone chan struct{}
}

type pending struct {
	id   uint64
	kind rpcKind
	ch   chan hraft.RPCResponse
}

func (d *dispatcher) run() {
	defer d.t.wg.Done()
	defer d.releaseReading()
	var next hraft.RPC
	var nextCh chan hraft.RPCResponse
	var nextKind rpcKind
	var nextID uint64
	has := false
	// slow: the answers pending passed outCap; slowSince: since when no
	// write of them was acked.
	var slow *time.Timer
	var slowSince time.Time
	defer func() {
		if slow != nil {
			slow.Stop()
		}
	}()
	for {
		full := d.s.w.pending() > d.t.outCap()
		if !full {
			slowSince = time.Time{}
		} else if slowSince.IsZero() {
			slowSince = time.Now()
		}
		if !has && len(d.inflight) < serverInFlight && !full {
			if in, ok := d.s.pop(d.self); ok {
				rpc, ch, kind, err := d.decode(in)
				if err == nil {
					err = d.t.checkPeer(d.s.peer, rpc.Command)
				}
				if err != nil {
					d.self.Tell(protocolError{err: err})
					return
				}
				if !d.first {
					d.first = true
					// Not with TLS, nor on a snapshot's connection.
					if kind != kindInstallSnapshot && d.s.w.direct != nil {
						d.self.Tell(handOffReading{})
					}
				}
				next, nextCh, nextKind, nextID, has = rpc, ch, kind, in.id, true
				if kind == kindHeartbeat {
					if fn := d.t.heartbeat.get(); fn != nil {
						d.t.m.served[kindHeartbeat].Add(1)
						fn(next)
						d.inflight = append(d.inflight, pending{id: nextID, kind: kindHeartbeat, ch: nextCh})
						has = false
						continue
					}
				}
				continue
			}
		}
		if !has && len(d.inflight) == 0 && !full {
			if f := d.s.readFile(); f != nil && d.readerDone == nil {
				if !d.read(f) {
					return
				}
				if d.s.tlsd && d.s.queueLen() >= 2 && d.s.reading(f) {
					d.startReader(f)
				}
				continue
			}
		}
		var sendCh chan hraft.RPC
		if has {
			sendCh = d.t.consumeCh
		}
		var respCh chan hraft.RPCResponse
		if len(d.inflight) > 0 {
			respCh = d.inflight[0].ch
		}
		var slowC <-chan time.Time
		if full {
			left := time.Until(slowSince.Add(d.t.cfg.Timeout))
			if slow == nil {
				slow = time.NewTimer(left)
			} else {
				slow.Reset(left)
			}
			slowC = slow.C
		}
		select {
		case <-d.s.qsignal:
		case <-d.s.drained:
			slowSince = time.Time{} // progress: the peer reads
		case <-slowC:
			if time.Since(slowSince) >= d.t.cfg.Timeout {
				d.self.Tell(protocolError{err: fmt.Errorf("%w: read none of its answers for %v (%d bytes pending)", ErrSlowPeer, d.t.cfg.Timeout, d.s.w.pending())})
				return
			}
		case sendCh <- next:
			d.t.m.served[nextKind].Add(1)
			d.inflight = append(d.inflight, pending{id: nextID, kind: nextKind, ch: nextCh})
			next, has = hraft.RPC{}, false
		case r := <-respCh:
			p := d.inflight[0]
			d.inflight[0] = pending{}
			d.inflight = d.inflight[1:]
			if len(d.inflight) == 0 {
				d.inflight = d.inflight[:0:0]
			}
			d.free = append(d.free, p.ch)
			d.answer(p, r)
		case <-d.s.stopCh:
			return
		case <-d.t.shutdownCh:
			return
		}
	}
}

// readFile returns the socket once it is handed over to the dispatcher.
func (s *serverConn) readFile() *tcp.ReadFile {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	if len(s.q) > 0 {
		return nil
	}
	return s.rfile
}

// reading reports whether f is still the dispatcher's to read (not
// handed to a snapshot).
func (s *serverConn) reading(f *tcp.ReadFile) bool {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	return s.rfile == f
}

// read reads the handed-over socket once and queues the requests it
// completes (dispatcher, with nothing queued or in flight); false: the
// connection is done. A frame once begun must go on arriving within
// Config.Timeout (ErrStalled), as the actor's guard checks.
func (d *dispatcher) read(f *tcp.ReadFile) bool {
	s := d.s
	var r io.Reader = f
	if s.tlsd {
		if d.tc == nil {
			if err := d.tlsOpen(f); err != nil {
				if errors.Is(err, errHandshake) {
					// Counted and logged (Debug) by handshakeTLS: a
					// stranger gets no Warn line per attempt.
					d.self.Tell(closeReq{abort: true})
				} else {
					d.self.Tell(protocolError{err: err})
				}
				return false
			}
		}
		r = d.tc
	}
	if d.rbuf == nil { // after the handshake: a stranger costs no buffer
		d.rbuf = make([]byte, 64<<10)
	}
	s.rd.alias = true // the dispatcher's buffer is not reused once aliased
	if mid := s.rd.partial(); mid || d.rdl {
		var dl time.Time
		if mid {
			dl = time.Now().Add(d.t.cfg.Timeout)
		}
		if err := f.SetReadDeadline(dl); err != nil {
			d.self.Tell(closeReq{})
			return false
		}
		d.rdl = mid
	}
	// In the middle of a frame's body, straight into the frame's buffer.
	sp, err := s.rd.spare(len(d.rbuf))
	if err != nil {
		d.self.Tell(protocolError{err: err})
		return false
	}
	var n, used int
	if sp != nil {
		n, err = r.Read(sp)
		if n > 0 {
			err = s.rd.filled(n, d.onFrame)
			used = n
		}
	} else if n, err = r.Read(d.rbuf); n > 0 {
		used, err = s.rd.feed(d.rbuf[:n], d.onFrame)
	}
	if n > 0 {
		d.t.m.bytesIn.Add(uint64(n))
		if err != nil {
			d.self.Tell(protocolError{err: err})
			return false
		}
		s.rd.shrink()
		if d.snap != nil {
			d.startSnapshot(f, d.rbuf[used:n])
		}
		if s.rd.aliased {
			// Frames alias d.rbuf[:n]: read on after them, into a
			// new buffer once the rest is small.
			s.rd.aliased = false
			if d.rbuf = d.rbuf[n:]; len(d.rbuf) < 16<<10 {
				d.rbuf = nil
			}
		}
		return true
	}
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		d.self.Tell(protocolError{err: fmt.Errorf("%w: silent for %v in the middle of a frame", ErrStalled, d.t.cfg.Timeout)})
	case errors.Is(err, os.ErrClosed):
		// PostStop closed it.
	default: // the peer's FIN, or a socket error
		d.self.Tell(closeReq{})
	}
	return false
}

// onFrame queues a request read by the dispatcher. Without TLS a
// connection read this way carries no snapshot (raft's client sends each on
// a connection of its own, and its first request is the InstallSnapshot,
// which the actor reads); with TLS the dispatcher reads every connection,
// and accepts an InstallSnapshot as the connection's first request only,
// as the actor hands a plain one over: its data is then read by raft
// (startSnapshot), and nothing reads ahead of it (startReader runs only
// once a read brought two requests).
func (d *dispatcher) onFrame(f frame, _ bool) (bool, error) {
	switch f.kind {
	case kindAppendEntries, kindRequestVote, kindRequestPreVote, kindTimeoutNow:
		d.framed = true
		d.s.enqueue(inbound{kind: f.kind, id: f.id, body: f.body, charge: f.charge})
		return false, nil
	case kindInstallSnapshot:
		if !d.s.tlsd || d.framed {
			break
		}
		d.framed = true
		req := new(hraft.InstallSnapshotRequest)
		if err := decodeInstallSnapshotRequest(f.body, req, true); err != nil {
			d.t.bud.give(f.charge)
			return false, err
		}
		pipe := newSnapPipe(d.t, d.self, req.Size)
		d.snap = pipe
		d.s.enqueue(inbound{kind: f.kind, id: f.id, cmd: req, pipe: pipe, charge: f.charge})
		return true, nil // the rest of the stream is snapshot data
	}
	d.t.bud.give(f.charge)
	return false, fmt.Errorf("%w: request kind %v on a connection read by its dispatcher", ErrMalformed, f.kind)
}

// startSnapshot gives the connection's reading to the snapshot just read
// (TLS): what the dispatcher read of its data, rest, goes into the pipe,
// the rest raft reads through the tls.Conn. The dispatcher reads no more.
func (d *dispatcher) startSnapshot(f *tcp.ReadFile, rest []byte) {
	p := d.snap
	d.snap = nil
	n, _ := p.write(rest)
	if n < len(rest) {
		d.self.Tell(protocolError{err: fmt.Errorf("%w: data after a snapshot", ErrMalformed)})
	}
	d.s.qmu.Lock()
	d.s.rfile = nil
	d.s.dsnap = p
	d.s.qmu.Unlock()
	p.handOver(tlsSnapSource{tc: d.tc, f: f}, p.remaining)
}

// releaseReading gives back what rd holds, if the dispatcher owns it
// (returning).
func (d *dispatcher) releaseReading() {
	d.s.qmu.Lock()
	f := d.s.rfile
	d.s.dispDone = true
	d.s.qmu.Unlock()
	if f != nil {
		f.Close()
		if d.readerDone != nil {
			<-d.readerDone // its Read returns
		}
		d.s.rd.buf = nil
		d.s.rd.release()
	}
}

// startReader gives the reading of a TLS connection that brings many
// requests at a time (a pipeline) to a goroutine of its own, which reads and
// decrypts ahead while the dispatcher waits for raft, up to
// serverQueueFrames requests queued; the dispatcher reads a connection
// only while nothing is queued or in flight, and a TLS read brings one
// record (16 KiB), where a plain one brings the socket's whole buffer.
func (d *dispatcher) startReader(f *tcp.ReadFile) {
	d.readerDone = make(chan struct{})
	d.t.wg.Add(1)
	go func() {
		defer d.t.wg.Done()
		defer close(d.readerDone)
		// Until the connection ends, or is no longer the reader's to
		// read (handed to a snapshot).
		for d.waitRoom() && d.read(f) && d.s.reading(f) {
		}
	}()
}

// waitRoom holds the reader while serverQueueFrames requests wait for raft,
// until the dispatcher drained half of them; false: the connection ends.
func (d *dispatcher) waitRoom() bool {
	s := d.s
	for s.queueLen() >= serverQueueFrames {
		// As onData: the flag is set before the second look, so either
		// pop sees it, or we see its pops here.
		s.resume.Store(true)
		if s.queueLen() <= serverQueueFrames/2 && s.resume.CompareAndSwap(true, false) {
			break
		}
		select {
		case <-s.rresume:
		case <-s.stopCh:
			return false
		case <-d.t.shutdownCh:
			return false
		}
	}
	return true
}

// decode turns an inbound request into an RPC for raft.
func (d *dispatcher) decode(in inbound) (hraft.RPC, chan hraft.RPCResponse, rpcKind, error) {
	var ch chan hraft.RPCResponse
	if n := len(d.free); n > 0 {
		ch = d.free[n-1]
		d.free = d.free[:n-1]
	} else {
		ch = make(chan hraft.RPCResponse, 1)
	}
	rpc := hraft.RPC{RespChan: ch}
	kind := in.kind
	var err error
	switch in.kind {
	case kindAppendEntries:
		req := new(hraft.AppendEntriesRequest)
		err = decodeAppendEntriesRequest(in.body, req, true)
		rpc.Command = req
		if err == nil && isHeartbeat(req) {
			kind = kindHeartbeat
		}
	case kindRequestVote:
		req := new(hraft.RequestVoteRequest)
		err = decodeRequestVoteRequest(in.body, req, true)
		rpc.Command = req
	case kindRequestPreVote:
		req := new(hraft.RequestPreVoteRequest)
		err = decodeRequestPreVoteRequest(in.body, req, true)
		rpc.Command = req
	case kindTimeoutNow:
		req := new(hraft.TimeoutNowRequest)
		err = decodeTimeoutNowRequest(in.body, req, true)
		rpc.Command = req
	case kindInstallSnapshot:
		rpc.Command = in.cmd
		rpc.Reader = in.pipe
	}
	return rpc, ch, kind, err
}

// answer encodes raft's answer and queues it for writing.
func (d *dispatcher) answer(p pending, r hraft.RPCResponse) {
	s := d.s
	s.w.mu.Lock()
	if s.w.closed != nil {
		s.w.mu.Unlock()
		return
	}
	dst := &s.w.out
	if s.tlsd {
		dst = &d.plain // encrypted below
	}
	b, start := beginFrame(*dst, kindResponse, p.id)
	flagAt := len(b)
	b = append(b, 0)
	var flags byte
	if r.Error != nil {
		flags |= respError
		b = putBytes(b, []byte(r.Error.Error()))
	}
	switch resp := r.Response.(type) {
	case *hraft.AppendEntriesResponse:
		flags |= respPayload
		b = appendAppendEntriesResponse(b, resp)
	case *hraft.RequestVoteResponse:
		flags |= respPayload
		b = appendRequestVoteResponse(b, resp)
	case *hraft.RequestPreVoteResponse:
		flags |= respPayload
		b = appendRequestPreVoteResponse(b, resp)
	case *hraft.InstallSnapshotResponse:
		flags |= respPayload
		b = appendInstallSnapshotResponse(b, resp)
	case *hraft.TimeoutNowResponse:
		flags |= respPayload
		b = appendTimeoutNowResponse(b, resp)
	default:
		if r.Error == nil {
			flags |= respError
			b = putBytes(b, fmt.Appendf(nil, "raft transport: raft answered %T", r.Response))
		}
	}
	b[flagAt] = flags
	b, err := endFrame(b, start, d.t.cfg.MaxFrameSize)
	*dst = b
	// The last answer due is written at once; with more due, the actor
	// batches them.
	direct := len(d.inflight) == 0 && s.queueLen() == 0
	kick := err == nil && !s.tlsd && s.w.sendLocked(d.t.m, direct)
	s.w.mu.Unlock()
	if err != nil {
		d.t.log.Error("raft transport: answer too large", "err", err)
	}
	// With TLS: encrypted now, unless raft's next answer is already there
	// (then in one record with it; the select after this does not block).
	if s.tlsd && (len(d.inflight) == 0 || len(d.inflight[0].ch) == 0 || len(d.plain) >= 64<<10) {
		d.encryptAnswers(!direct)
	}
	if kick {
		d.self.Tell(kickMsg{})
	}
	if p.kind == kindInstallSnapshot {
		d.self.Tell(closeAfterAnswer{})
	}
}
