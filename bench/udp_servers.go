package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/udp"
)

// UDPImpl names a UDP echo contender.
type UDPImpl string

// The UDP echo contenders.
const (
	// UDPIoactor is package udp with its default batching: recvmmsg of up
	// to 32 datagrams, and the echoes of one loop turn coalesced into one
	// GSO sendmsg (or one sendmmsg).
	UDPIoactor UDPImpl = "ioactor-batched"
	// UDPIoactorNoBatch is package udp with batching off: one recvmsg and
	// one sendmsg per datagram.
	UDPIoactorNoBatch UDPImpl = "ioactor-unbatched"
	// UDPGnet is gnet v2's UDP echo, multicore (one event loop and one
	// SO_REUSEPORT socket per core), as in gnet's examples.
	UDPGnet UDPImpl = "gnet"
	// UDPNet is one goroutine on a net.UDPConn: ReadFromUDPAddrPort then
	// WriteToUDPAddrPort, in a loop.
	UDPNet UDPImpl = "net"
)

// UDPImpls returns every UDP contender, ours first.
func UDPImpls() []UDPImpl { return []UDPImpl{UDPIoactor, UDPIoactorNoBatch, UDPGnet, UDPNet} }

// DefaultUDPReceiveBuffer is the SO_RCVBUF every UDP contender asks for, so
// that none of them drops a pipelined burst for want of kernel queue.
const DefaultUDPReceiveBuffer = 1 << 20

// UDPServerConfig configures a UDP contender. The zero value is ready to use.
type UDPServerConfig struct {
	// Loops is the number of event loops of ioactor and gnet; zero means one
	// per core (GOMAXPROCS for ioactor, the CPU count for gnet).
	Loops int
	// ReceiveBuffer is the server socket's SO_RCVBUF; zero means
	// DefaultUDPReceiveBuffer.
	ReceiveBuffer int
	// Logger receives the servers' logs; nil means slog.Default().
	Logger *slog.Logger
}

// UDPServer is a running UDP echo contender.
type UDPServer struct {
	Impl UDPImpl
	Addr netip.AddrPort
	stop func(context.Context) error
	reg  *prometheus.Registry // ioactor only
}

// Close stops the server and waits, under ctx, until every goroutine it
// started has returned.
func (s *UDPServer) Close(ctx context.Context) error { return s.stop(ctx) }

// Syscalls returns the receive and send system calls the server's UDP
// sockets have made so far (ioactor_udp_syscalls_total), and false for a
// contender that does not count them.
func (s *UDPServer) Syscalls() (uint64, bool) {
	if s.reg == nil {
		return 0, false
	}
	mfs, err := s.reg.Gather()
	if err != nil {
		return 0, false
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == "ioactor_udp_syscalls_total" {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return uint64(sum), true
}

// StartUDP starts UDP contender impl on addr (port 0 picks a free port).
func StartUDP(ctx context.Context, impl UDPImpl, addr netip.AddrPort, cfg UDPServerConfig) (*UDPServer, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ReceiveBuffer <= 0 {
		cfg.ReceiveBuffer = DefaultUDPReceiveBuffer
	}
	switch impl {
	case UDPIoactor:
		return startUDPIoactor(ctx, impl, udp.Batching{}, addr, cfg)
	case UDPIoactorNoBatch:
		return startUDPIoactor(ctx, impl, udp.Batching{ReadBatch: -1, WriteBatch: -1}, addr, cfg)
	case UDPGnet:
		return startUDPGnet(ctx, addr, cfg)
	case UDPNet:
		return startUDPNet(addr, cfg)
	}
	return nil, fmt.Errorf("bench: unknown UDP contender %q (want one of %v)", impl, UDPImpls())
}

// udpEcho answers every datagram with a Send of the same bytes. It runs on
// its socket's loop, so the udp.Received and its Data belong to the socket
// and alias the loop's receive buffer; the Send hands them straight back
// (the socket sends or copies them in the same queue drain, before its next
// read). The Sends come from a ring, one per datagram in flight, so the echo
// allocates nothing.
type udpEcho struct {
	sock  netio.Ref
	ring  [1024]udp.Send // more than ReadBatch: Sends not yet processed
	next  int
	bound chan error
	addr  netip.AddrPort
}

func (e *udpEcho) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case udp.Received:
		s := &e.ring[e.next%len(e.ring)]
		e.next++
		s.Data, s.Target = m.Data(), m.Sender()
		ctx.Tell(e.sock, s)
	case udp.Bound:
		e.sock, e.addr = m.Socket, m.LocalAddr
		e.bound <- nil
	case udp.CommandFailed:
		if e.sock.IsZero() {
			e.bound <- fmt.Errorf("bench: udp bind: %w", m.Cause)
		}
		// A refused echo (ErrWouldBlock; not seen on loopback) is a lost
		// datagram, which the client counts.
	}
}

func startUDPIoactor(ctx context.Context, impl UDPImpl, batch udp.Batching, addr netip.AddrPort, cfg UDPServerConfig) (*UDPServer, error) {
	reg := prometheus.NewRegistry()
	sys, err := netio.NewSystem(netio.Config{Loops: cfg.Loops, Logger: cfg.Logger, Registerer: reg})
	if err != nil {
		return nil, err
	}
	shutdown := func(ctx context.Context) error { return sys.Shutdown(ctx) }
	e := &udpEcho{bound: make(chan error, 1)}
	ref := sys.Spawn(e)
	udp.Manager(sys).Tell(udp.Bind{Handler: ref, LocalAddr: addr, Batching: batch,
		Options: []netio.SocketOption{netio.ReceiveBufferSize(cfg.ReceiveBuffer)}})
	select {
	case err := <-e.bound:
		if err != nil {
			return nil, errors.Join(err, shutdown(context.WithoutCancel(ctx)))
		}
		return &UDPServer{Impl: impl, Addr: e.addr, stop: shutdown, reg: reg}, nil
	case <-ctx.Done():
		return nil, errors.Join(ctx.Err(), shutdown(context.WithoutCancel(ctx)))
	}
}

func startUDPGnet(ctx context.Context, addr netip.AddrPort, cfg UDPServerConfig) (*UDPServer, error) {
	// gnet opens one SO_REUSEPORT socket per event loop, each bound to the
	// address as given: with port 0 every loop would get a port of its own.
	// So pick a free port first.
	if addr.Port() == 0 {
		pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		if err != nil {
			return nil, err
		}
		addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
		pc.Close()
	}
	// gnetEcho serves UDP too: for UDP, Conn.Write is a synchronous
	// sendto to the sender (gnet's docs: "just call Conn.Write").
	h, done, stop := runGnet("udp://"+addr.String(),
		gnet.WithMulticore(true),
		gnet.WithNumEventLoop(cfg.Loops),
		gnet.WithSocketRecvBuffer(cfg.ReceiveBuffer),
		gnet.WithLogger(gnetLogger{cfg.Logger}))
	select {
	case <-h.booted:
		return &UDPServer{Impl: UDPGnet, Addr: addr, stop: stop}, nil
	case err := <-done:
		return nil, fmt.Errorf("bench: gnet: %w", err)
	case <-ctx.Done():
		// gnet cannot be stopped before it has booted; wait for that.
		select {
		case <-h.booted:
			return nil, errors.Join(ctx.Err(), stop(context.WithoutCancel(ctx)))
		case err := <-done:
			return nil, errors.Join(ctx.Err(), err)
		}
	}
}

// startUDPNet runs the goroutine echo: one goroutine, one 64 KiB buffer (any
// datagram), no allocation per datagram.
func startUDPNet(addr netip.AddrPort, cfg UDPServerConfig) (*UDPServer, error) {
	pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
	if err != nil {
		return nil, err
	}
	if err := pc.SetReadBuffer(cfg.ReceiveBuffer); err != nil {
		pc.Close()
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(time.Millisecond) // a transient error (ENOBUFS and the like)
				continue
			}
			pc.WriteToUDPAddrPort(buf[:n], from) // a failed echo is a lost datagram
		}
	}()
	stop := func(ctx context.Context) error {
		err := pc.Close()
		done := make(chan struct{})
		go func() {
			wg.Wait()
			close(done)
		}()
		select {
		case <-done:
			return err
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		}
	}
	return &UDPServer{Impl: UDPNet, Addr: pc.LocalAddr().(*net.UDPAddr).AddrPort(), stop: stop}, nil
}
