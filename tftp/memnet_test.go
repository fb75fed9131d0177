package tftp

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// memNet is an in-memory UDP network for tests in a testing/synctest
// bubble: its reads block on channels and timers, so fake time advances
// when every goroutine waits. Packets can be dropped and duplicated at
// random, or by a rule.
type memNet struct {
	mu       sync.Mutex
	conns    map[netip.AddrPort]*memConn
	nextPort uint16
	rng      *rand.Rand
	drop     float64
	dup      float64
	latency  time.Duration
	// dropFn, when set, drops the packets it returns true for.
	dropFn func(from, to netip.AddrPort, pkt []byte) bool
	log    []memPacket // every packet sent, when recording
	record bool
}

type memPacket struct {
	from, to netip.AddrPort
	data     []byte
}

var memHost = netip.MustParseAddr("192.0.2.1")

func newMemNet() *memNet {
	return &memNet{conns: make(map[netip.AddrPort]*memConn), nextPort: 40000}
}

// listen opens a conn on port (0: a fresh one).
func (n *memNet) listen(port uint16) *memConn {
	n.mu.Lock()
	defer n.mu.Unlock()
	if port == 0 {
		port = n.nextPort
		n.nextPort++
	}
	c := &memConn{net: n, addr: netip.AddrPortFrom(memHost, port), in: make(chan memPacket, 1<<12), done: make(chan struct{})}
	n.conns[c.addr] = c
	return c
}

func (n *memNet) deliver(p memPacket) {
	n.mu.Lock()
	if n.record {
		n.log = append(n.log, memPacket{from: p.from, to: p.to, data: slices.Clone(p.data)})
	}
	copies := 1
	if n.dropFn != nil && n.dropFn(p.from, p.to, p.data) {
		copies = 0
	} else if n.rng != nil {
		if n.rng.Float64() < n.drop {
			copies = 0
		} else if n.rng.Float64() < n.dup {
			copies = 2
		}
	}
	c := n.conns[p.to]
	lat := n.latency
	n.mu.Unlock()
	if c == nil {
		return
	}
	for range copies {
		q := memPacket{from: p.from, to: p.to, data: slices.Clone(p.data)}
		if lat > 0 {
			time.AfterFunc(lat, func() { c.push(q) })
		} else {
			c.push(q)
		}
	}
}

type memConn struct {
	net    *memNet
	addr   netip.AddrPort
	in     chan memPacket
	done   chan struct{}
	closed atomic.Bool
	once   sync.Once
}

func (c *memConn) push(p memPacket) {
	if c.closed.Load() {
		return
	}
	select {
	case c.in <- p:
	default: // the receive queue is full: dropped, as the kernel would
	}
}

func (c *memConn) batch(count, size int) {}

func (c *memConn) writeTo(b []byte, to netip.AddrPort) error {
	c.net.deliver(memPacket{from: c.addr, to: to, data: b})
	return nil
}

func (c *memConn) readFrom(ctx context.Context, b []byte, deadline time.Time) (int, netip.AddrPort, error) {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case p := <-c.in:
		return copy(b, p.data), p.from, nil
	case <-timeout:
		return 0, netip.AddrPort{}, errReadTimeout
	case <-ctx.Done():
		return 0, netip.AddrPort{}, context.Cause(ctx)
	case <-c.done:
		return 0, netip.AddrPort{}, context.Canceled
	}
}

func (c *memConn) localAddr() netip.AddrPort { return c.addr }

func (c *memConn) close() error {
	c.once.Do(func() {
		c.closed.Store(true)
		close(c.done)
		c.net.mu.Lock()
		delete(c.net.conns, c.addr)
		c.net.mu.Unlock()
	})
	return nil
}

// memServer serves TFTP on a memNet with the server's transfer logic
// (xfer), one goroutine per transfer with a port of its own: the driver a
// netio transfer actor is, in plain Go, so that fake time applies.
type memServer struct {
	srv  *Server
	net  *memNet
	conn *memConn
	wg   sync.WaitGroup
	// done receives each transfer when it finishes.
	done chan *xfer
}

func newMemServer(n *memNet, cfg ServerConfig) (*memServer, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := newServerState(cfg.withDefaults(), 1)
	if err != nil {
		return nil, err
	}
	return &memServer{srv: s, net: n, conn: n.listen(69), done: make(chan *xfer, 100)}, nil
}

func (m *memServer) addr() netip.AddrPort { return m.conn.addr }

// serve answers requests until ctx ends, then waits for its transfers.
func (m *memServer) serve(ctx context.Context) {
	buf := make([]byte, 65536)
	for {
		n, from, err := m.conn.readFrom(ctx, buf, time.Time{})
		if err != nil {
			break
		}
		req, err := ParseRequest(buf[:n])
		if err != nil {
			continue
		}
		d := &memDriver{conn: m.net.listen(0)}
		x := m.srv.newXfer(req, from, m.srv.m.shard(0))
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			d.run(ctx, x)
			m.done <- x
		}()
	}
	m.wg.Wait()
	m.conn.close()
	m.srv.release()
}

// memDriver drives one transfer on a memNet, as its transfer actor does
// on netio: it hands the xfer its events and carries out x.out after each.
type memDriver struct {
	conn    *memConn
	timerAt time.Time
	events  []func()
	over    bool
}

func (d *memDriver) run(ctx context.Context, x *xfer) {
	defer d.conn.close()
	buf := make([]byte, 65536)
	x.start(time.Now(), d.conn.addr)
	d.apply(x)
	for !d.over {
		// Like a socket's batched read, handle every datagram already
		// there before the sends they caused go out: this catches a
		// transfer that changes what it handed to a send still queued.
	batch:
		for range 32 {
			select {
			case p := <-d.conn.in:
				x.packet(time.Now(), p.from, p.data)
				d.apply(x)
				if d.over {
					return
				}
			default:
				break batch
			}
		}
		if len(d.events) > 0 {
			ev := d.events[0]
			d.events = d.events[1:]
			ev()
			d.apply(x)
			continue
		}
		n, from, err := d.conn.readFrom(ctx, buf, d.timerAt)
		switch {
		case err == errReadTimeout:
			d.timerAt = time.Time{}
			x.timer(time.Now())
		case err != nil:
			x.cancel("stopped")
		default:
			x.packet(time.Now(), from, buf[:n])
		}
		d.apply(x)
	}
}

// apply carries out what the last event asked for. A send goes later, as
// a socket actor's does, after the transfer handled what else is queued.
func (d *memDriver) apply(x *xfer) {
	o := &x.out
	for _, e := range o.errs {
		d.conn.writeTo(e.pkt, e.to)
	}
	o.errs = o.errs[:0]
	if dgs := o.send; dgs != nil {
		o.send = nil
		d.events = append(d.events, func() {
			for _, p := range dgs {
				d.conn.writeTo(p, x.client)
			}
			x.sent(time.Now())
		})
	}
	o.resume = false
	if !o.wake.IsZero() {
		d.timerAt, o.wake = o.wake, time.Time{}
	}
	if b := o.begin; b != nil {
		o.begin = nil
		if end, ok := b.returnedEnd(); ok {
			x.srv.cfg.Replicator.End(end)
		}
		d.events = append(d.events, func() { x.begun(time.Now(), nil) })
	}
	if u := o.commit; u != nil {
		o.commit = nil
		err := u.Commit()
		d.events = append(d.events, func() { x.committed(time.Now(), err) })
	}
	o.dallying, o.aborted = false, false
	if o.done {
		d.over = true
	}
}
