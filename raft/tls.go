package raft

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/clustertls"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// TLS on the loops, for a client's pipelines and snapshot senders (the
// other connections run their tls.Conn over the handed-over socket:
// tlsdirect.go).
//
// crypto/tls drives a net.Conn with blocking calls; the loops drive a tcp
// connection actor with messages. The bridge is a tlsShim actor between
// the tcp connection and the transport's own actor (serverConn or
// clientConn), which sees the shim as its connection: it sends it the
// commands it would send a tcp connection (Register, Write with an ack,
// SuspendReading, ResumeReading, Close, Abort) and gets the same events
// back (tcp.Received, the ack, a tcp.ConnectionClosed). So the
// transport's framing, writers and flow control are one code path, TLS or
// not.
//
// Below the shim, a loopConn is a net.Conn view of the tcp connection:
// Read takes bytes the shim copied from the socket, and the shim stops
// reading the socket (SuspendReading) while more than loopConnHigh of them
// wait, so a peer that sends faster than TLS decrypts is held by the TCP
// window; Write queues the bytes for the tcp connection and waits while
// more than loopConnHigh of them are not acknowledged (in the kernel), so
// a peer that does not read holds the writer. Above it, a tls.Conn, read by
// one goroutine and written by another, both owned by the shim and stopped
// with it. The reader has at most readAhead decrypted chunks on their way
// to the shim; a SuspendReading from the transport's actor stops it before
// its next Read.
//
// The cost is two goroutine hand-offs per direction and a copy per TLS
// record; raft's connections are few and long-lived, and a connection's
// handshake is resumed (TLS 1.3 tickets) when the client's Config has a
// ClientSessionCache.

// ErrIdentity is the cause of a request refused because its RPC header
// names another node than the peer's certificate.
var ErrIdentity = errors.New("raft transport: RPC header names another node than the peer's certificate")

// tlsSetup checks and completes Config.TLS.
func tlsSetup(c *Config) error {
	if c.TLS == nil {
		return nil
	}
	if c.TLS.ClientAuth != tls.RequireAndVerifyClientCert {
		return errors.New("raft transport: Config.TLS.ClientAuth must be tls.RequireAndVerifyClientCert: members authenticate each other")
	}
	if len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil {
		return errors.New("raft transport: Config.TLS has no certificate")
	}
	c.TLS = c.TLS.Clone()
	if c.TLS.MinVersion < tls.VersionTLS12 {
		c.TLS.MinVersion = tls.VersionTLS12
	}
	if c.PeerID == nil {
		c.PeerID = clustertls.PeerID
	}
	return nil
}

// Messages of the shim.
type (
	tlsUp         struct{} // handshake done (reader)
	tlsRead       struct{ data []byte }
	tlsReadEnd    struct{ err error }
	tlsWrote      struct{ err error }
	tlsWriterDone struct{} // after close_notify, on the user's Close

	lcKick       struct{} // the loopConn has bytes to write
	closeTimeout struct{}
	lcAck        struct{}
	lcResume     struct{}
	lcClose      struct{}
)

const (
	loopConnHigh = 256 << 10 // socket bytes buffered below TLS, each way, before reading stops or Write waits
	tlsReadSize  = 64 << 10
	readAhead    = 8 // decrypted chunks on their way to the user
)

// tlsShim is the actor between a tcp connection and the transport's actor;
// see above.
type tlsShim struct {
	t      *Transport
	cfg    *tls.Config
	tcp    netio.Ref // zero once it reported closed
	tcpRef netio.Ref
	remote netip.AddrPort
	self   netio.Ref
	user   netio.Ref // the transport's actor, from Register

	lc *loopConn
	tc *tls.Conn

	writes   chan []byte   // to the writer (wbuf); nil once the user closed
	tokens   chan struct{} // the reader's chunks not yet passed on, at most readAhead
	resume   chan struct{} // to the reader: reading is on again
	paused   atomic.Bool   // the user suspended reading
	stopCh   chan struct{}
	stopOnce sync.Once

	// Owned by the actor.
	held         [][]byte // decrypted chunks waiting while paused
	tcpWriting   bool     // a socket write of the loopConn's bytes is pending
	closeAfter   bool     // the writer sent close_notify: close once written
	tcpBuf       []byte   // being written
	tcpPaused    bool
	handshaken   bool
	userClosing  any // tcp.Close or tcp.Abort, once asked
	readerDone   bool
	closedCause  error
	told         bool   // the user got its ConnectionClosed
	wpending     any    // the Ack of the user's write being encrypted, or nil
	writing      bool   // a write is with the writer
	early        bool   // a write waits for Register
	wbuf         []byte // the copy of the user's write the writer encrypts
	userGone     bool
	handshakeErr error
}

// startTLS puts a client's tlsShim on conn (which it registers with) and
// returns it; the caller registers its own actor with the shim, as with a
// tcp connection.
func (t *Transport) startTLS(ctx *netio.Context, conn netio.Ref, remote netip.AddrPort) (netio.Ref, error) {
	cfg := t.cfg.TLS.Clone()
	if cfg.ServerName == "" {
		cfg.ServerName = remote.Addr().String()
	}
	s := &tlsShim{t: t, cfg: cfg, tcp: conn, tcpRef: conn, remote: remote}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return netio.Ref{}, ErrTransportShutdown
	}
	ref := ctx.SpawnOn(conn.Loop(), s)
	t.actors[ref] = struct{}{}
	t.tcpConns[conn] = struct{}{}
	return ref, nil
}

func (s *tlsShim) PreStart(ctx *netio.Context) {
	s.self = ctx.Self()
	s.stopCh = make(chan struct{})
	s.tokens = make(chan struct{}, readAhead)
	s.resume = make(chan struct{}, 1)
	s.writes = make(chan []byte, 1)
	s.lc = newLoopConn(s.self, s.t.bound, s.remote)
	s.tc = tls.Client(s.lc, s.cfg)
	ctx.Tell(s.tcp, tcp.Register{Handler: s.self})
	ctx.Watch(s.tcp)
	s.t.wg.Add(2)
	go s.reader()
	go s.writer(s.writes)
}

func (s *tlsShim) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	// From the tcp connection and the loopConn.
	case tcp.Received:
		if s.lc.push(m.Data()) > loopConnHigh && !s.tcpPaused {
			s.tcpPaused = true
			ctx.Tell(s.tcp, tcp.SuspendReading{})
		}
		ctx.YieldBeforeBlocking() // the reader
	case lcResume:
		if s.tcpPaused && !s.tcp.IsZero() {
			s.tcpPaused = false
			ctx.Tell(s.tcp, tcp.ResumeReading{})
		}
	case lcKick:
		s.pumpTCP(ctx)
	case lcAck:
		s.tcpWriting = false
		s.lc.written(s.tcpBuf)
		s.tcpBuf = nil
		s.pumpTCP(ctx)
		ctx.YieldBeforeBlocking() // a writer waiting for room
	case lcClose:
		if s.userClosing == nil && !s.tcp.IsZero() {
			ctx.Tell(s.tcp, tcp.Abort{})
		}
	case tcp.CommandFailed:
		s.lc.fail(fmt.Errorf("raft transport: tls: write: %w", m.Cause))
		ctx.Tell(s.tcp, tcp.Abort{})
	case tcp.ConnectionClosed:
		s.tcpClosed(ctx, m)
	case netio.Terminated:
		switch m.Ref {
		case s.tcp:
			s.tcpClosed(ctx, tcp.ErrorClosed{Cause: errors.New("tcp connection actor stopped")})
		case s.user:
			s.userGone = true
			if s.userClosing == nil && !s.tcp.IsZero() {
				s.userClosing = tcp.Abort{}
				ctx.Tell(s.tcp, tcp.Abort{})
			}
			s.maybeStop(ctx)
		}

	// From the reader and the writer.
	case tlsUp:
		s.handshaken = true
	case tlsRead:
		if s.paused.Load() || len(s.held) > 0 {
			s.held = append(s.held, m.data)
			return
		}
		s.deliver(ctx, m.data)
	case tlsReadEnd:
		s.readerDone = true
		if !s.handshaken && s.handshakeErr == nil {
			s.handshakeErr = m.err
			s.t.m.rejected.Add(1)
			s.t.log.Debug("raft transport: TLS handshake failed", "remote", s.remote, "err", m.err)
		}
		if s.closedCause == nil && !errors.Is(m.err, io.EOF) {
			s.closedCause = m.err
		}
		if !s.tcp.IsZero() && s.userClosing == nil {
			// Nothing more will be read: end the socket too.
			ctx.Tell(s.tcp, tcp.Abort{})
		}
		s.maybeStop(ctx)
	case tlsWrote:
		s.writing = false
		if cap(s.wbuf) > 1<<20 {
			s.wbuf = nil // a snapshot chunk: do not keep it
		}
		if m.err != nil {
			if s.closedCause == nil {
				s.closedCause = m.err
			}
			if !s.tcp.IsZero() {
				ctx.Tell(s.tcp, tcp.Abort{})
			}
			return
		}
		if ack := s.wpending; ack != nil && !s.user.IsZero() {
			s.wpending = nil
			ctx.Tell(s.user, ack)
		}
	case tlsWriterDone:
		s.closeAfter = true
		s.pumpTCP(ctx)

	// From the transport's actor.
	case tcp.Register:
		s.user = m.Handler
		ctx.Watch(s.user)
		if s.early {
			s.early = false
			s.writes <- s.wbuf
		}
	case *tcp.Write:
		s.write(ctx, m)
	case tcp.Write:
		s.write(ctx, &m)
	case tcp.SuspendReading:
		s.paused.Store(true)
	case tcp.ResumeReading:
		s.paused.Store(false)
		for len(s.held) > 0 && !s.paused.Load() {
			d := s.held[0]
			s.held = s.held[1:]
			s.deliver(ctx, d)
		}
		select {
		case s.resume <- struct{}{}:
		default:
		}
	case tcp.Close:
		if s.userClosing == nil {
			s.userClosing = m
			if s.writes != nil {
				close(s.writes) // the writer sends close_notify after the writes queued
				s.writes = nil
			}
			// A peer that does not read would hold the flush for ever.
			ctx.After(s.t.cfg.Timeout, closeTimeout{})
		}
		s.maybeStop(ctx)
	case closeTimeout:
		if !s.tcp.IsZero() {
			ctx.Tell(s.tcp, tcp.Abort{})
		}
	case tcp.Abort:
		if s.userClosing == nil || s.userClosing == (tcp.Close{}) {
			s.userClosing = m
			if !s.tcp.IsZero() {
				ctx.Tell(s.tcp, tcp.Abort{})
			}
		}
		s.maybeStop(ctx)
	}
}

// write copies the user's write for the writer: the user may reuse or
// release its buffer once it has the ack, or once it stopped, while the
// writer is still encrypting.
func (s *tlsShim) write(ctx *netio.Context, w *tcp.Write) {
	if s.userClosing != nil || s.writes == nil {
		ctx.Tell(ctx.Sender(), tcp.CommandFailed{Cmd: *w, Cause: net.ErrClosed})
		return
	}
	if s.writing || s.early {
		// One write at a time is the tcp contract; the transport's
		// writers keep it.
		ctx.Tell(ctx.Sender(), tcp.CommandFailed{Cmd: *w, Cause: errors.New("raft transport: tls: a write is pending")})
		return
	}
	if s.handshaken && !s.user.IsZero() && s.lc.room() >= len(w.Data)+len(w.Data)/16+4096 {
		// Encrypt on the loop: no goroutine holds the tls.Conn's write
		// side (one write at a time, and none with the writer), and the
		// loopConn has room for all of it, so Write cannot block.
		if _, err := s.tc.Write(w.Data); err != nil {
			if s.closedCause == nil {
				s.closedCause = err
			}
			ctx.Tell(s.tcp, tcp.Abort{})
			return
		}
		s.pumpTCP(ctx)
		if w.Ack != nil {
			ctx.Tell(s.user, w.Ack)
		}
		return
	}
	s.wbuf = append(s.wbuf[:0], w.Data...)
	s.wpending = w.Ack
	s.writing = true
	if s.user.IsZero() {
		s.early = true
		return
	}
	s.writes <- s.wbuf
	ctx.YieldBeforeBlocking() // the writer
}

// deliver passes a decrypted chunk to the user and lets the reader go on.
func (s *tlsShim) deliver(ctx *netio.Context, data []byte) {
	if !s.user.IsZero() {
		ctx.Tell(s.user, tcp.NewReceived(data))
	}
	select {
	case <-s.tokens:
		ctx.YieldBeforeBlocking() // the reader, if it waited for the token
	default:
	}
}

// pumpTCP starts the next socket write of the loopConn's bytes; once
// they are all written after close_notify, it closes the socket.
func (s *tlsShim) pumpTCP(ctx *netio.Context) {
	if s.tcpWriting {
		return
	}
	if s.tcp.IsZero() {
		s.lc.fail(net.ErrClosed)
		return
	}
	b := s.lc.take()
	if len(b) == 0 {
		if s.closeAfter {
			s.closeAfter = false
			ctx.Tell(s.tcp, tcp.Close{})
		}
		return
	}
	s.tcpWriting, s.tcpBuf = true, b
	ctx.Tell(s.tcp, tcp.Write{Data: b, Ack: lcAck{}})
}

// tcpClosed handles the end of the socket.
func (s *tlsShim) tcpClosed(ctx *netio.Context, m tcp.ConnectionClosed) {
	if s.tcp.IsZero() {
		return
	}
	s.tcp = netio.Ref{}
	var err error = io.EOF
	if e, ok := m.(tcp.ErrorClosed); ok {
		err = e.Cause
		if s.closedCause == nil {
			s.closedCause = e.Cause
		}
	}
	s.lc.finish(err)
	s.tcpWriting = false
	s.pumpTCP(ctx) // fails the writes waiting
	s.t.untrackConn(s.tcpRef)
	s.maybeStop(ctx)
}

// maybeStop tells the user its connection closed and stops, once the
// socket is closed and, unless the user closed or suspended it, the
// reader has passed on what it decrypted.
func (s *tlsShim) maybeStop(ctx *netio.Context) {
	if !s.tcp.IsZero() {
		return
	}
	if !s.readerDone && s.userClosing == nil && !s.paused.Load() && !s.userGone {
		return // the reader still has the last bytes, and then EOF
	}
	if !s.told && !s.user.IsZero() && !s.userGone {
		s.told = true
		var ev any
		switch {
		case s.userClosing == (tcp.Close{}):
			ev = tcp.Closed{}
		case s.userClosing == (tcp.Abort{}):
			ev = tcp.Aborted{}
		case s.handshakeErr != nil:
			ev = tcp.ErrorClosed{Cause: fmt.Errorf("TLS handshake: %w", s.handshakeErr)}
		case s.closedCause != nil:
			ev = tcp.ErrorClosed{Cause: s.closedCause}
		default:
			ev = tcp.PeerClosed{}
		}
		ctx.Tell(s.user, ev)
	}
	ctx.Stop()
}

func (s *tlsShim) PostStop(ctx *netio.Context) {
	s.stopOnce.Do(func() { close(s.stopCh) })
	s.lc.Close()
	if !s.tcp.IsZero() {
		s.tcp.Tell(tcp.Abort{})
		s.t.forgetConnUnlessClosing(s.tcpRef)
	}
	s.t.untrackActor(ctx.Self())
}

// peerIDOf is the node id of the verified peer of a server's connection
// (after the handshake).
func (t *Transport) peerIDOf(cs tls.ConnectionState) (string, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", fmt.Errorf("%w: no verified peer certificate", ErrIdentity)
	}
	id, err := t.cfg.PeerID(cs.VerifiedChains[0][0])
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrIdentity, err)
	}
	return id, nil
}

// reader runs the handshake, then reads and passes on decrypted data.
func (s *tlsShim) reader() {
	defer s.t.wg.Done()
	// The handshake's deadline; PostStop's loopConn.Close ends it sooner.
	ctx, cancel := context.WithTimeout(context.Background(), s.t.cfg.Timeout)
	err := s.tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.self.Tell(tlsReadEnd{err: err})
		return
	}
	s.self.Tell(tlsUp{})
	// A Read returns one TLS record (at most 16 KiB): the chunk passed on
	// is a copy of its size, not a fresh tlsReadSize buffer per record
	// (whose allocation and clearing was a tenth of a TLS pipeline's CPU
	// once answers came a record each).
	buf := make([]byte, tlsReadSize)
	for {
		for s.paused.Load() {
			select {
			case <-s.resume:
			case <-s.stopCh:
				return
			}
		}
		n, err := s.tc.Read(buf)
		if n > 0 {
			select {
			case s.tokens <- struct{}{}: // given back when passed on
			case <-s.stopCh:
				return
			}
			s.self.Tell(tlsRead{data: append([]byte(nil), buf[:n]...)})
		}
		if err != nil {
			s.self.Tell(tlsReadEnd{err: err})
			return
		}
	}
}

// writer encrypts the user's writes, in order; when the user closes, it
// sends close_notify.
func (s *tlsShim) writer(writes <-chan []byte) {
	defer s.t.wg.Done()
	for {
		select {
		case w, ok := <-writes:
			if !ok {
				s.tc.CloseWrite()
				s.self.Tell(tlsWriterDone{})
				return
			}
			_, err := s.tc.Write(w)
			s.self.Tell(tlsWrote{err: err})
			if err != nil {
				return
			}
		case <-s.stopCh:
			return
		}
	}
}

// loopConn is a net.Conn view of a tcp connection actor, for crypto/tls;
// its methods are called by the shim's goroutines, push and finish by the
// shim.
type loopConn struct {
	shim          netio.Ref
	local, remote net.Addr

	mu       sync.Mutex
	in       [][]byte
	inLen    int
	inErr    error // after in is drained
	closed   bool
	wantMore bool // the shim suspended the socket: tell it when drained
	readable chan struct{}
	closeCh  chan struct{}
	rdl, wdl time.Time

	out      []byte // written, not yet taken by the shim
	spare    []byte
	pending  int   // bytes taken by the shim and not yet in the kernel
	kicked   bool  // the shim was told, and has not taken out since
	werr     error // the socket failed: every later Write fails
	writable chan struct{}
}

func newLoopConn(shim netio.Ref, local, remote netip.AddrPort) *loopConn {
	return &loopConn{
		shim: shim, local: net.TCPAddrFromAddrPort(local), remote: net.TCPAddrFromAddrPort(remote),
		readable: make(chan struct{}, 1), closeCh: make(chan struct{}), writable: make(chan struct{}, 1),
	}
}

// push appends a copy of b and returns the bytes buffered (shim).
func (c *loopConn) push(b []byte) int {
	c.mu.Lock()
	c.in = append(c.in, append([]byte(nil), b...))
	c.inLen += len(b)
	n := c.inLen
	if n > loopConnHigh {
		c.wantMore = true
	}
	c.mu.Unlock()
	c.signal()
	return n
}

// finish ends the stream with err once the buffered bytes are read (shim).
func (c *loopConn) finish(err error) {
	c.mu.Lock()
	if c.inErr == nil {
		c.inErr = err
	}
	c.mu.Unlock()
	c.signal()
}

func (c *loopConn) signal() {
	select {
	case c.readable <- struct{}{}:
	default:
	}
}

func (c *loopConn) Read(p []byte) (int, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return 0, net.ErrClosed
		}
		if c.inLen > 0 {
			n := 0
			for n < len(p) && len(c.in) > 0 {
				k := copy(p[n:], c.in[0])
				n += k
				if k == len(c.in[0]) {
					c.in[0] = nil
					c.in = c.in[1:]
				} else {
					c.in[0] = c.in[0][k:]
				}
			}
			c.inLen -= n
			resume := c.wantMore && c.inLen <= loopConnHigh/4
			if resume {
				c.wantMore = false
			}
			c.mu.Unlock()
			if resume {
				c.shim.Tell(lcResume{})
			}
			return n, nil
		}
		if c.inErr != nil {
			err := c.inErr
			c.mu.Unlock()
			return 0, err
		}
		dl := c.rdl
		c.mu.Unlock()
		if err := c.wait(c.readable, dl); err != nil {
			return 0, err
		}
	}
}

// wait waits for ch, the deadline dl (zero: none) or Close.
func (c *loopConn) wait(ch <-chan struct{}, dl time.Time) error {
	var timeout <-chan time.Time
	if !dl.IsZero() {
		d := time.Until(dl)
		if d <= 0 {
			return os.ErrDeadlineExceeded
		}
		tm := time.NewTimer(d)
		defer tm.Stop()
		timeout = tm.C
	}
	select {
	case <-ch:
		return nil
	case <-timeout:
		return os.ErrDeadlineExceeded
	case <-c.closeCh:
		return net.ErrClosed
	}
}

// Write copies p for the socket and returns; it waits first while more
// than loopConnHigh bytes are not yet in the kernel, so a peer that does
// not read holds the writer.
func (c *loopConn) Write(p []byte) (int, error) {
	for {
		c.mu.Lock()
		switch {
		case c.closed:
			c.mu.Unlock()
			return 0, net.ErrClosed
		case c.werr != nil:
			err := c.werr
			c.mu.Unlock()
			return 0, err
		case len(c.out)+c.pending < loopConnHigh:
			c.out = append(c.out, p...)
			kick := !c.kicked
			c.kicked = true
			c.mu.Unlock()
			if kick {
				c.shim.Tell(lcKick{})
			}
			return len(p), nil
		}
		dl := c.wdl
		c.mu.Unlock()
		if err := c.wait(c.writable, dl); err != nil {
			return 0, err
		}
	}
}

// room is how many bytes Write takes now without waiting.
func (c *loopConn) room() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.werr != nil {
		return 0
	}
	return loopConnHigh - len(c.out) - c.pending
}

// take hands the shim the bytes written so far (shim).
func (c *loopConn) take() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.out
	if len(b) == 0 {
		c.kicked = false
		return nil
	}
	c.out, c.spare = c.spare[:0], nil
	c.pending = len(b)
	return b
}

// written returns b, now in the kernel, for reuse (shim).
func (c *loopConn) written(b []byte) {
	c.mu.Lock()
	c.pending = 0
	if cap(b) <= 2*loopConnHigh {
		c.spare = b[:0]
	}
	c.mu.Unlock()
	select {
	case c.writable <- struct{}{}:
	default:
	}
}

// fail makes every later Write fail with err (shim).
func (c *loopConn) fail(err error) {
	c.mu.Lock()
	if c.werr == nil {
		c.werr = err
	}
	c.out, c.pending = nil, 0
	c.mu.Unlock()
	select {
	case c.writable <- struct{}{}:
	default:
	}
}

// Close unblocks Read and Write and asks the shim to abort the socket.
func (c *loopConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.in, c.inLen = nil, 0
	close(c.closeCh)
	c.mu.Unlock()
	c.shim.Tell(lcClose{})
	return nil
}

func (c *loopConn) LocalAddr() net.Addr  { return c.local }
func (c *loopConn) RemoteAddr() net.Addr { return c.remote }

func (c *loopConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl, c.wdl = t, t
	c.mu.Unlock()
	c.signal() // a Read waiting re-reads its deadline
	return nil
}

func (c *loopConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.rdl = t
	c.mu.Unlock()
	c.signal()
	return nil
}

func (c *loopConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.wdl = t
	c.mu.Unlock()
	return nil
}

// checkPeer refuses a request whose RPC header names another node than
// the verified peer (with TLS; peer "" means no TLS).
func (t *Transport) checkPeer(peer string, cmd any) error {
	if peer == "" || t.cfg.TLS == nil {
		return nil
	}
	h, ok := cmd.(hraft.WithRPCHeader)
	if !ok {
		return nil
	}
	if got := string(h.GetRPCHeader().ID); got != peer {
		t.m.spoofed.Add(1)
		return fmt.Errorf("%w: the header says %q, the certificate %q", ErrIdentity, got, peer)
	}
	return nil
}
