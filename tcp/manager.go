package tcp

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/netio"
)

type managerKey struct{}

type managerExt struct {
	ref   netio.Ref
	stats []*loopStats
}

func ext(sys *netio.System) *managerExt {
	return sys.Extension(managerKey{}, func() any {
		m := &managerExt{}
		for range sys.Loops() {
			m.stats = append(m.stats, &loopStats{})
		}
		if err := sys.RegisterCollector(&collector{stats: m.stats}); err != nil {
			sys.Logger().Warn("tcp: metrics not registered", "err", err)
		}
		m.ref = sys.SpawnOn(sys.Loops()[0], &manager{})
		return m
	}).(*managerExt)
}

// Manager returns the system's TCP manager: send it Bind and Connect.
func Manager(sys *netio.System) netio.Ref { return ext(sys).ref }

type manager struct{}

func (manager) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case Bind:
		bind(ctx, msg, &m)
	case *Bind:
		bind(ctx, msg, m)
	case Connect:
		connect(ctx, msg, &m)
	case *Connect:
		connect(ctx, msg, m)
	}
}

func bind(ctx *netio.Context, cmd any, b *Bind) {
	if h, ok := handlerFor(ctx, cmd, b.Handler); ok {
		ctx.SpawnOn(loopFor(ctx, h), &listener{cmd: cmd, bind: b, handler: h, fd: -1})
	}
}

func connect(ctx *netio.Context, cmd any, c *Connect) {
	if h, ok := handlerFor(ctx, cmd, c.Handler); ok {
		ctx.SpawnOn(loopFor(ctx, h), newOutgoingConn(cmd, c, h))
	}
}

// handlerFor is a command's handler: its Handler, else its sender. A command
// with neither (told from outside any actor, with no Handler) is refused
// with a warning: the socket it asks for would answer nobody, and nobody
// could ever close it.
func handlerFor(ctx *netio.Context, cmd any, h netio.Ref) (netio.Ref, bool) {
	if h.IsZero() {
		h = ctx.Sender()
	}
	if h.IsZero() {
		ctx.Logger().Warn("tcp: command without a handler or a sender; ignored", "cmd", cmd)
		return h, false
	}
	return h, true
}

// loopFor places a socket actor on its handler's loop when it has one, so
// delivery is a local push; otherwise round-robin.
func loopFor(ctx *netio.Context, h netio.Ref) *netio.Loop {
	if !h.IsZero() && h.Loop() != nil {
		return h.Loop()
	}
	return ctx.System().NextLoop()
}

// NoDelay sets TCP_NODELAY (on by default on every connection).
func NoDelay(on bool) netio.SocketOption {
	return netio.BoolOption("TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, on)
}

func applyConnOptions(fd int, opts []netio.SocketOption) error {
	if err := NoDelay(true).Apply(fd); err != nil {
		return err
	}
	return netio.ApplyOptions(fd, opts)
}

// Close reasons, a closed set for the metric label.
const (
	reasonRegisterTimeout = "register_timeout"
	reasonHandler         = "handler_terminated"
)

// loopStats are one loop's counters: written by that loop (bytesOut also by
// DirectWriters, so it takes locked adds), read at
// scrape time.
type loopStats struct {
	opened, bytesIn, bytesOut, acceptErrors, writesRefused atomic.Uint64
	closedBy                                               [7]atomic.Uint64
}

// addOwned adds n to a counter that only the calling loop writes: a plain
// load and store (readers still see a whole value), not a locked add.
func addOwned(c *atomic.Uint64, n uint64) { c.Store(c.Load() + n) }

var closeReasons = [...]string{"closed", "confirmed", "aborted", "peer", "error", reasonRegisterTimeout, reasonHandler}

func (s *loopStats) closed(reason string) {
	for i, r := range closeReasons {
		if r == reason {
			s.closedBy[i].Add(1)
			return
		}
	}
}

func statsFor(ctx *netio.Context) *loopStats { return ext(ctx.System()).stats[ctx.Loop().ID()] }

type collector struct{ stats []*loopStats }

var (
	descOpened   = prometheus.NewDesc("ioactor_tcp_connections_opened_total", "TCP connections opened (accepted or connected).", nil, nil)
	descClosed   = prometheus.NewDesc("ioactor_tcp_connections_closed_total", "TCP connections closed, by reason.", []string{"reason"}, nil)
	descBytesIn  = prometheus.NewDesc("ioactor_tcp_received_bytes_total", "Bytes read from TCP sockets.", nil, nil)
	descBytesOut = prometheus.NewDesc("ioactor_tcp_sent_bytes_total", "Bytes written to TCP sockets.", nil, nil)
	descAccErr   = prometheus.NewDesc("ioactor_tcp_accept_errors_total", "accept(2) failures other than EAGAIN.", nil, nil)
	descRefused  = prometheus.NewDesc("ioactor_tcp_writes_refused_total", "Writes refused because another was pending, without UseResumeWriting (plain NACKs: lost unless the handler resends them).", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descOpened
	ch <- descClosed
	ch <- descBytesIn
	ch <- descBytesOut
	ch <- descAccErr
	ch <- descRefused
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	var opened, in, out, accErr, refused uint64
	var closed [len(closeReasons)]uint64
	for _, s := range c.stats {
		opened += s.opened.Load()
		in += s.bytesIn.Load()
		out += s.bytesOut.Load()
		accErr += s.acceptErrors.Load()
		refused += s.writesRefused.Load()
		for i := range closed {
			closed[i] += s.closedBy[i].Load()
		}
	}
	ch <- prometheus.MustNewConstMetric(descOpened, prometheus.CounterValue, float64(opened))
	for i, r := range closeReasons {
		ch <- prometheus.MustNewConstMetric(descClosed, prometheus.CounterValue, float64(closed[i]), r)
	}
	ch <- prometheus.MustNewConstMetric(descBytesIn, prometheus.CounterValue, float64(in))
	ch <- prometheus.MustNewConstMetric(descBytesOut, prometheus.CounterValue, float64(out))
	ch <- prometheus.MustNewConstMetric(descAccErr, prometheus.CounterValue, float64(accErr))
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(refused))
}
