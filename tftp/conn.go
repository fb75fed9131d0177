package tftp

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// packetConn is what the client needs from a UDP socket. The client uses a
// *net.UDPConn; tests use an in-memory network whose blocking reads let
// testing/synctest advance fake time.
type packetConn interface {
	// batch, a hint, asks for up to count datagrams of up to size bytes
	// per system call from now on.
	batch(count, size int)
	// writeTo sends one datagram.
	writeTo(b []byte, to netip.AddrPort) error
	// readFrom waits for a datagram until deadline (errReadTimeout) or the
	// context's end (its error).
	readFrom(ctx context.Context, b []byte, deadline time.Time) (int, netip.AddrPort, error)
	localAddr() netip.AddrPort
	close() error
}

// errReadTimeout is a read that reached its deadline.
var errReadTimeout = errors.New("tftp: read deadline")

// udpConn adapts a *net.UDPConn. A context's end interrupts a read by
// moving the deadline into the past; mu orders that against the reader's
// own deadline changes, so the interruption cannot be lost.
type udpConn struct {
	c *net.UDPConn

	mu        sync.Mutex
	cancelled bool
	stop      func() bool // unregisters the context callback
	br        *batchReader
}

func (u *udpConn) batch(count, size int) {
	if count <= 1 || u.br != nil {
		return
	}
	rc, err := u.c.SyscallConn()
	if err != nil {
		return
	}
	// Bound the buffer: a window of 64 KiB blocks is read a few at a time.
	count = max(1, min(count, 64, (1<<20)/size))
	u.br = newBatchReader(rc, count, size)
}

var pastTime = time.Unix(1, 0)

func listenUDP(ctx context.Context, server netip.AddrPort) (*udpConn, error) {
	laddr := &net.UDPAddr{IP: net.IPv4zero}
	network := "udp4"
	if server.Addr().Is6() && !server.Addr().Is4In6() {
		laddr, network = &net.UDPAddr{IP: net.IPv6unspecified}, "udp6"
	}
	c, err := net.ListenUDP(network, laddr)
	if err != nil {
		return nil, err
	}
	// Best effort: a large window of large blocks must not overflow the
	// default receive buffer.
	c.SetReadBuffer(4 << 20)
	c.SetWriteBuffer(4 << 20)
	u := &udpConn{c: c}
	u.stop = context.AfterFunc(ctx, func() {
		u.mu.Lock()
		u.cancelled = true
		u.c.SetReadDeadline(pastTime)
		u.mu.Unlock()
	})
	return u, nil
}

func (u *udpConn) writeTo(b []byte, to netip.AddrPort) error {
	_, err := u.c.WriteToUDPAddrPort(b, to)
	return err
}

func (u *udpConn) readFrom(ctx context.Context, b []byte, deadline time.Time) (int, netip.AddrPort, error) {
	u.mu.Lock()
	if u.cancelled {
		u.mu.Unlock()
		return 0, netip.AddrPort{}, context.Cause(ctx)
	}
	u.c.SetReadDeadline(deadline)
	u.mu.Unlock()
	var n int
	var from netip.AddrPort
	var err error
	if u.br != nil {
		n, from, err = u.br.read(b)
	} else {
		n, from, err = u.c.ReadFromUDPAddrPort(b)
	}
	if err != nil {
		if ctx.Err() != nil {
			return 0, from, context.Cause(ctx)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return 0, from, errReadTimeout
		}
		return 0, from, err
	}
	return n, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), nil
}

func (u *udpConn) localAddr() netip.AddrPort {
	return u.c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (u *udpConn) close() error {
	u.stop()
	return u.c.Close()
}
