package raft

import (
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

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// TLS read and written by the goroutines that use it.
//
// A synchronous call with TLS used to pass through the shim (tls.go) both
// ways: its request from the caller to the connection's actor, the shim
// and the socket, its answer from the socket to the shim, the tls.Conn's
// reader goroutine, the shim again, the actor and the caller; the server
// the same in reverse. That is six goroutine or loop hand-offs more per
// round trip than raft.NetworkTransport's, and it made a heartbeat with
// TLS about three times NetworkTransport+TLS's.
//
// So the connections whose every read is made by a goroutine that waits
// for it anyway — a client's heartbeat and RPC connections (the caller
// holding the read token reads, see clientConn.rfile) and every server
// connection (its dispatcher reads) — hand the socket's reading over at
// once (tcp.HandOverReading) and run a tls.Conn over the duplicate
// (tlsFileConn): the caller or the dispatcher reads and decrypts itself.
// Its writes encrypt in the writing goroutine, and the ciphertext goes
// through the connection's writer as plaintext frames do without TLS: a
// lone one straight to the socket (tcp.DirectWriter), more while a write
// is pending batched by the loop. A client's pipelines and snapshot
// senders keep the shim: a pipeline's answers are batched per loop turn
// and decrypted off the caller's path, which is why it is fast.

// tlsFileConn is the net.Conn under such a tls.Conn: Read reads the
// handed-over socket, Write queues the ciphertext on the connection's
// writer and never blocks (the writer's buffer grows, as it does for
// frames without TLS).
type tlsFileConn struct {
	f             *tcp.ReadFile
	local, remote net.Addr
	w             *writer
	actor         netio.Ref // told kickMsg when the socket does not take a write at once
	m             *metrics
	// batch: the dispatcher has more answers to write soon; let the loop
	// batch. Atomic: tls's reading side writes too (an alert, a KeyUpdate
	// answer), from the reader goroutine, while the dispatcher sets it.
	batch atomic.Bool
}

func newTLSFileConn(f *tcp.ReadFile, w *writer, actor netio.Ref, m *metrics, local, remote netip.AddrPort) *tlsFileConn {
	return &tlsFileConn{f: f, w: w, actor: actor, m: m, local: net.TCPAddrFromAddrPort(local), remote: net.TCPAddrFromAddrPort(remote)}
}

func (c *tlsFileConn) Read(b []byte) (int, error) { return c.f.Read(b) }

func (c *tlsFileConn) Write(b []byte) (int, error) {
	c.w.mu.Lock()
	if err := c.w.closed; err != nil {
		c.w.mu.Unlock()
		return 0, err
	}
	c.w.out = append(c.w.out, b...)
	kick := c.w.sendLocked(c.m, !c.batch.Load())
	c.w.mu.Unlock()
	if kick {
		c.actor.Tell(kickMsg{})
	}
	return len(b), nil
}

func (c *tlsFileConn) Close() error                       { return c.f.Close() }
func (c *tlsFileConn) LocalAddr() net.Addr                { return c.local }
func (c *tlsFileConn) RemoteAddr() net.Addr               { return c.remote }
func (c *tlsFileConn) SetDeadline(t time.Time) error      { return c.f.SetReadDeadline(t) }
func (c *tlsFileConn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *tlsFileConn) SetWriteDeadline(t time.Time) error { return nil } // writes do not block

// errHandshake: a TLS handshake failed (or the peer's identity was
// refused); handshakeTLS has counted it and logged it at Debug.
var errHandshake = errors.New("TLS handshake")

// handshakeTLS runs a TLS handshake over f, within Config.Timeout from
// now; a server also checks its peer's identity and returns its node id.
// Its failures are errHandshake.
func (t *Transport) handshakeTLS(fc *tlsFileConn, remote netip.AddrPort, server bool) (*tls.Conn, string, error) {
	var tc *tls.Conn
	if server {
		tc = tls.Server(fc, t.cfg.TLS)
	} else {
		cfg := t.cfg.TLS.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = remote.Addr().String()
		}
		tc = tls.Client(fc, cfg)
	}
	if err := fc.SetDeadline(time.Now().Add(t.cfg.Timeout)); err != nil {
		return nil, "", fmt.Errorf("setting the TLS handshake's deadline: %w", err)
	}
	err := tc.Handshake()
	var id string
	if err == nil && server {
		id, err = t.peerIDOf(tc.ConnectionState())
	}
	if err == nil {
		if err = fc.SetDeadline(time.Time{}); err != nil {
			err = fmt.Errorf("clearing the deadline: %w", err)
		}
	}
	if err != nil {
		t.m.rejected.Add(1)
		t.log.Debug("raft transport: TLS handshake failed", "remote", remote, "err", err)
		return nil, "", fmt.Errorf("%w: %w", errHandshake, err)
	}
	return tc, id, nil
}

// tlsWriter is a client connection's TLS when its callers read
// (roleHeartbeat and roleRPC with TLS): they encrypt their frames through
// tc, in the order they were queued.
type tlsWriter struct {
	mu    sync.Mutex // held while encrypting
	tc    *tls.Conn  // nil until the handshake is done
	plain []byte     // frames queued, not yet encrypted (under the writer's mu); the preamble first
	spare []byte
}

// tlsStart runs the client's handshake over the handed-over socket (its
// own goroutine), then encrypts what the callers queued meanwhile and lets
// them read.
func (c *clientConn) tlsStart(f *tcp.ReadFile) {
	defer c.t.wg.Done()
	tc, _, err := c.t.handshakeTLS(newTLSFileConn(f, &c.w, c.ref, c.t.m, c.t.bound, c.remote), c.remote, false)
	if err != nil {
		c.close(fmt.Errorf("%w: %w", ErrConnectionClosed, err), true)
		return
	}
	c.tw.mu.Lock()
	c.tw.tc = tc
	c.tw.mu.Unlock()
	c.flushTLS()
	c.rtok <- struct{}{}
}

// flushTLS encrypts the frames queued in tw.plain (callers; a no-op before
// the handshake is done).
func (c *clientConn) flushTLS() {
	tw := c.tw
	tw.mu.Lock()
	defer tw.mu.Unlock()
	if tw.tc == nil {
		return
	}
	c.w.mu.Lock()
	b := tw.plain
	if c.w.closed != nil || len(b) == 0 {
		c.w.mu.Unlock()
		return
	}
	tw.plain, tw.spare = tw.spare[:0], nil
	c.w.mu.Unlock()
	_, err := tw.tc.Write(b)
	if cap(b) <= maxSpare {
		tw.spare = b[:0]
	}
	if err != nil {
		c.close(fmt.Errorf("%w: %w", ErrConnectionClosed, err), true)
	}
}

// reader is what a caller holding the read token reads: the tls.Conn with
// TLS, else the socket.
func (c *clientConn) reader(f *tcp.ReadFile) io.Reader {
	if c.tw != nil {
		return c.tw.tc // set before the token was first given
	}
	return f
}

// tlsOpen runs a server connection's handshake and reads its preamble,
// each within Config.Timeout (dispatcher, before its first read).
func (d *dispatcher) tlsOpen(f *tcp.ReadFile) error {
	d.fc = newTLSFileConn(f, &d.s.w, d.self, d.t.m, d.s.local, d.s.remote)
	tc, id, err := d.t.handshakeTLS(d.fc, d.s.remote, true)
	if err != nil {
		return err
	}
	var pre [len(preamble)]byte
	if err := f.SetReadDeadline(time.Now().Add(d.t.cfg.Timeout)); err != nil {
		return fmt.Errorf("setting the preamble's deadline: %w", err)
	}
	if _, err := io.ReadFull(tc, pre[:]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("%w: no preamble within %v", ErrStalled, d.t.cfg.Timeout)
		}
		return fmt.Errorf("reading the preamble: %w", err)
	}
	if pre != preamble {
		return fmt.Errorf("%w: not a raft transport client (bad preamble)", ErrMalformed)
	}
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clearing the preamble's deadline: %w", err)
	}
	d.tc, d.s.peer = tc, id
	return nil
}

// tlsSnapSource is a snapshot's data read through the tls.Conn of its
// server connection: deadlines and Close are the socket's.
type tlsSnapSource struct {
	tc *tls.Conn
	f  *tcp.ReadFile
}

func (s tlsSnapSource) Read(b []byte) (int, error)        { return s.tc.Read(b) }
func (s tlsSnapSource) SetReadDeadline(t time.Time) error { return s.f.SetReadDeadline(t) }
func (s tlsSnapSource) Close() error                      { return s.f.Close() }

// encryptAnswers encrypts the answers queued in d.plain (dispatcher, the
// connection's only writer with TLS); more: more answers are due soon, the
// loop may batch.
func (d *dispatcher) encryptAnswers(more bool) {
	if len(d.plain) == 0 {
		return
	}
	d.fc.batch.Store(more)
	_, err := d.tc.Write(d.plain)
	d.plain = d.plain[:0]
	if cap(d.plain) > maxSpare {
		d.plain = nil
	}
	if err != nil {
		d.t.log.Debug("raft transport: writing answers failed; closing the connection", "remote", d.s.remote, "err", err)
		d.self.Tell(closeReq{abort: true})
	}
}
