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
	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/backpressure"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// Impl names an echo contender.
type Impl string

// The contenders.
const (
	IoactorAck  Impl = "ioactor-ack"
	IoactorNack Impl = "ioactor-nack"
	IoactorPull Impl = "ioactor-pull"
	Gnet        Impl = "gnet"
	Net         Impl = "net"
)

// Impls returns every contender, ours first.
func Impls() []Impl { return []Impl{IoactorAck, IoactorNack, IoactorPull, Gnet, Net} }

// ParseImpl checks a contender's name.
func ParseImpl(s string) (Impl, error) {
	for _, i := range Impls() {
		if string(i) == s {
			return i, nil
		}
	}
	return "", fmt.Errorf("bench: unknown contender %q (want one of %v)", s, Impls())
}

// DefaultNetBuffer is the net echo's per-connection buffer: io.Copy's.
const DefaultNetBuffer = 32 << 10

// ServerConfig configures a contender. The zero value is ready to use.
type ServerConfig struct {
	// Loops is the number of event loops of ioactor and gnet; zero means one
	// per core (GOMAXPROCS for ioactor, the CPU count for gnet).
	Loops int
	// NetBuffer is the net echo's per-connection buffer; zero means
	// DefaultNetBuffer.
	NetBuffer int
	// Logger receives the servers' logs; nil means slog.Default().
	Logger *slog.Logger
}

// Server is a running echo contender.
type Server struct {
	Impl Impl
	Addr netip.AddrPort
	stop func(context.Context) error
}

// Close stops the server and waits, under ctx, until every goroutine it
// started has returned.
func (s *Server) Close(ctx context.Context) error { return s.stop(ctx) }

// Start starts contender impl listening on addr (port 0 picks a free port).
func Start(ctx context.Context, impl Impl, addr netip.AddrPort, cfg ServerConfig) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch impl {
	case IoactorAck:
		return startIoactor(ctx, impl, backpressure.FlowAck, addr, cfg)
	case IoactorNack:
		return startIoactor(ctx, impl, backpressure.FlowNack, addr, cfg)
	case IoactorPull:
		return startIoactor(ctx, impl, backpressure.FlowPull, addr, cfg)
	case Gnet:
		return startGnet(ctx, addr, cfg)
	case Net:
		return startNet(addr, cfg)
	}
	_, err := ParseImpl(string(impl))
	return nil, err
}

func startIoactor(ctx context.Context, impl Impl, flow backpressure.Flow, addr netip.AddrPort, cfg ServerConfig) (*Server, error) {
	sys, err := netio.NewSystem(netio.Config{Loops: cfg.Loops, Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	type bound struct {
		b   tcp.Bound
		err error
	}
	ch := make(chan bound, 1)
	srv := &backpressure.EchoServer{Flow: flow, OnBound: func(b tcp.Bound, err error) { ch <- bound{b, err} }}
	ref := sys.Spawn(srv)
	tcp.Manager(sys).Tell(tcp.Bind{Handler: ref, LocalAddr: addr, PullMode: flow == backpressure.FlowPull})
	shutdown := func(ctx context.Context) error { return sys.Shutdown(ctx) }
	select {
	case b := <-ch:
		if b.err != nil {
			return nil, errors.Join(b.err, shutdown(context.WithoutCancel(ctx)))
		}
		return &Server{Impl: impl, Addr: b.b.LocalAddr, stop: shutdown}, nil
	case <-ctx.Done():
		return nil, errors.Join(ctx.Err(), shutdown(context.WithoutCancel(ctx)))
	}
}

// gnetEcho is gnet's README echo server.
type gnetEcho struct {
	gnet.BuiltinEventEngine
	eng    gnet.Engine
	booted chan struct{}
}

func (e *gnetEcho) OnBoot(eng gnet.Engine) gnet.Action {
	e.eng = eng
	close(e.booted)
	return gnet.None
}

func (e *gnetEcho) OnTraffic(c gnet.Conn) gnet.Action {
	buf, _ := c.Next(-1)
	c.Write(buf)
	return gnet.None
}

// runGnet starts a gnet echo engine on protoAddr ("tcp://…" or "udp://…")
// and returns it with the channel of gnet.Run's result and a stop function.
func runGnet(protoAddr string, opts ...gnet.Option) (*gnetEcho, chan error, func(context.Context) error) {
	h := &gnetEcho{booted: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- gnet.Run(h, protoAddr, opts...) }()
	stop := func(ctx context.Context) error {
		if err := h.eng.Stop(ctx); err != nil {
			return fmt.Errorf("bench: stop gnet: %w", err)
		}
		select {
		case err := <-done:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return h, done, stop
}

func startGnet(ctx context.Context, addr netip.AddrPort, cfg ServerConfig) (*Server, error) {
	h, done, stop := runGnet("tcp://"+addr.String(),
		gnet.WithMulticore(true),
		gnet.WithNumEventLoop(cfg.Loops),
		gnet.WithLogger(gnetLogger{cfg.Logger}))
	select {
	case <-h.booted:
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
	fd, err := h.eng.Dup()
	if err != nil {
		return nil, errors.Join(fmt.Errorf("bench: gnet listener: %w", err), stop(context.WithoutCancel(ctx)))
	}
	local, err := netio.LocalAddr(fd)
	unix.Close(fd)
	if err != nil {
		return nil, errors.Join(err, stop(context.WithoutCancel(ctx)))
	}
	return &Server{Impl: Gnet, Addr: local, stop: stop}, nil
}

// gnetLogger sends gnet's logs to slog, at Debug below warnings.
type gnetLogger struct{ l *slog.Logger }

func (g gnetLogger) Debugf(f string, a ...any) { g.l.Debug("gnet: " + fmt.Sprintf(f, a...)) }
func (g gnetLogger) Infof(f string, a ...any)  { g.l.Debug("gnet: " + fmt.Sprintf(f, a...)) }
func (g gnetLogger) Warnf(f string, a ...any)  { g.l.Warn("gnet: " + fmt.Sprintf(f, a...)) }
func (g gnetLogger) Errorf(f string, a ...any) { g.l.Error("gnet: " + fmt.Sprintf(f, a...)) }
func (g gnetLogger) Fatalf(f string, a ...any) { g.l.Error("gnet: fatal: " + fmt.Sprintf(f, a...)) }

// netEcho is the goroutine-per-connection echo.
type netEcho struct {
	ln      net.Listener
	bufSize int
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closed  bool
}

func startNet(addr netip.AddrPort, cfg ServerConfig) (*Server, error) {
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		return nil, err
	}
	e := &netEcho{ln: ln, bufSize: cfg.NetBuffer, conns: make(map[net.Conn]struct{})}
	if e.bufSize <= 0 {
		e.bufSize = DefaultNetBuffer
	}
	e.wg.Add(1)
	go e.accept()
	return &Server{Impl: Net, Addr: ln.Addr().(*net.TCPAddr).AddrPort(), stop: e.close}, nil
}

func (e *netEcho) accept() {
	defer e.wg.Done()
	for {
		c, err := e.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(5 * time.Millisecond) // EMFILE and the like
			continue
		}
		e.mu.Lock()
		if e.closed {
			e.mu.Unlock()
			c.Close()
			return
		}
		e.conns[c] = struct{}{}
		e.wg.Add(1)
		e.mu.Unlock()
		go e.serve(c)
	}
}

func (e *netEcho) serve(c net.Conn) {
	defer e.wg.Done()
	defer func() {
		e.mu.Lock()
		delete(e.conns, c)
		e.mu.Unlock()
		c.Close()
	}()
	buf := make([]byte, e.bufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // io.EOF, or the connection closed under us
		}
	}
}

func (e *netEcho) close(ctx context.Context) error {
	err := e.ln.Close()
	e.mu.Lock()
	e.closed = true
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	done := make(chan struct{})
	go func() {
		e.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return err
	case <-ctx.Done():
		return errors.Join(err, ctx.Err())
	}
}
