package netio

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrShutdown is returned by operations on a system that has been shut down.
var ErrShutdown = errors.New("netio: system shut down")

// Config configures a [System]. The zero value is ready to use.
type Config struct {
	// Loops is the number of event loops; zero means runtime.GOMAXPROCS(0).
	Loops int
	// Logger receives the runtime's logs (actor panics, loop failures); nil
	// means slog.Default().
	Logger *slog.Logger
	// Registerer, when not nil, receives the runtime's metrics.
	Registerer prometheus.Registerer
	// RawWait is how long a loop with nothing to do sleeps in epoll_wait,
	// holding its P in a system call, before it parks its goroutine on the
	// runtime's poller instead (so an idle loop costs sysmon and the
	// scheduler nothing). Zero means 2 ms. Negative means the loop parks
	// at once, after one look that does not block: a wake-up then costs a
	// goroutine switch where the runtime has a thread polling anyway,
	// rather than a thread wake-up, which suits request/response traffic
	// between goroutines and a loop (package raft's transport).
	RawWait time.Duration
}

// System owns event loops and the actors on them.
type System struct {
	logger *slog.Logger
	loops  []*Loop
	next   atomic.Uint32
	wg     sync.WaitGroup

	mu       sync.Mutex
	blocking map[*actor]struct{}
	down     bool
	extMu    sync.Mutex // guards ext; held while an extension is created
	ext      map[any]any

	deadLetters atomic.Uint64
	panics      atomic.Uint64
	collectors  []prometheus.Collector
	registerer  prometheus.Registerer
	shutdownOne sync.Once
}

// NewSystem starts a system: its loops are running when it returns.
func NewSystem(cfg Config) (*System, error) {
	n := cfg.Loops
	if n <= 0 {
		n = runtime.GOMAXPROCS(0)
	}
	s := &System{logger: cfg.Logger, registerer: cfg.Registerer, blocking: make(map[*actor]struct{}), ext: make(map[any]any)}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	rawWait := cfg.RawWait
	switch {
	case rawWait == 0:
		rawWait = defaultRawWait
	case rawWait < 0:
		rawWait = 0
	}
	for i := 0; i < n; i++ {
		l, err := newLoop(s, i)
		if err == nil {
			l.rawWait = rawWait
		}
		if err != nil {
			for _, l := range s.loops {
				l.shutdown()
			}
			return nil, fmt.Errorf("netio: start loop %d: %w", i, err)
		}
		s.loops = append(s.loops, l)
	}
	if err := s.RegisterCollector(&collector{s: s}); err != nil {
		for _, l := range s.loops {
			l.shutdown()
		}
		return nil, err
	}
	for _, l := range s.loops {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			l.run()
		}()
	}
	return s, nil
}

// Loops returns the system's loops.
func (s *System) Loops() []*Loop { return s.loops }

// Logger returns the system's logger.
func (s *System) Logger() *slog.Logger { return s.logger }

// RegisterCollector registers c on the Config's Registerer (a no-op when
// metrics are off) and unregisters it at Shutdown. Socket packages use it for
// their per-system collectors, which read loop-owned counters at scrape time.
func (s *System) RegisterCollector(c prometheus.Collector) error {
	if s.registerer == nil {
		return nil
	}
	if err := s.registerer.Register(c); err != nil {
		return fmt.Errorf("netio: register metrics: %w", err)
	}
	s.mu.Lock()
	s.collectors = append(s.collectors, c)
	s.mu.Unlock()
	return nil
}

func (s *System) nextLoop() *Loop {
	return s.loops[int(s.next.Add(1)-1)%len(s.loops)]
}

// NextLoop returns a loop chosen round-robin, for spreading actors.
func (s *System) NextLoop() *Loop { return s.nextLoop() }

// Spawn starts an actor on a loop chosen round-robin.
func (s *System) Spawn(a Actor) Ref { return s.SpawnOn(s.nextLoop(), a) }

// SpawnOn starts an actor on loop l.
func (s *System) SpawnOn(l *Loop, impl Actor) Ref {
	a := newActor(s, l, impl)
	l.pushRemote(envelope{to: a, kind: kindStart})
	return Ref{a}
}

// SpawnBlocking starts an actor on a goroutine of its own: its Receive may
// block. It cannot register descriptors; its timers use the runtime's.
func (s *System) SpawnBlocking(impl Actor) Ref {
	a := newActor(s, nil, impl)
	a.g = &goMailbox{signal: make(chan struct{}, 1)}
	s.mu.Lock()
	if s.down {
		s.mu.Unlock()
		a.g.closed = true
		a.discard() // PostStop still releases what it was given
		return Ref{a}
	}
	s.blocking[a] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	a.g.push(envelope{to: a, kind: kindStart})
	go func() {
		defer s.wg.Done()
		a.g.run(a)
		s.mu.Lock()
		delete(s.blocking, a)
		s.mu.Unlock()
	}()
	return Ref{a}
}

// Extension returns the system-wide value stored under key, creating it with
// create on first use. Packages use it for per-system singletons such as the
// TCP manager.
func (s *System) Extension(key any, create func() any) any {
	s.extMu.Lock()
	defer s.extMu.Unlock()
	v, ok := s.ext[key]
	if !ok {
		v = create()
		s.ext[key] = v
	}
	return v
}

// Shutdown stops every actor (each closes what it owns), ends every loop and
// blocking actor, and waits until every goroutine the system started has
// returned. If ctx ends first it returns ctx's error; the goroutines still
// finish on their own. Shutdown is idempotent.
func (s *System) Shutdown(ctx context.Context) error {
	s.shutdownOne.Do(func() {
		s.mu.Lock()
		s.down = true
		var bl []*actor
		for a := range s.blocking {
			bl = append(bl, a)
		}
		s.mu.Unlock()
		for _, l := range s.loops {
			l.pushRemote(envelope{})
		}
		for _, a := range bl {
			a.g.push(envelope{to: a, kind: kindStop})
		}
		for _, c := range s.collectors {
			s.registerer.Unregister(c)
		}
	})
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("netio: shutdown: %w", ctx.Err())
	}
}

// goMailbox is the mailbox of a blocking actor.
type goMailbox struct {
	mu     sync.Mutex
	q      []envelope
	closed bool
	signal chan struct{}
}

func (m *goMailbox) push(e envelope) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.q = append(m.q, e)
	m.mu.Unlock()
	select {
	case m.signal <- struct{}{}:
	default:
	}
}

func (m *goMailbox) run(a *actor) {
	var spare []envelope
	for range m.signal {
		m.mu.Lock()
		q := m.q
		m.q = spare[:0]
		m.mu.Unlock()
		for i := range q {
			e := q[i]
			a.safely(func() { a.invoke(e) })
			if a.stopReq {
				a.stop()
			}
			q[i] = envelope{}
			if a.state == stateStopped {
				m.mu.Lock()
				m.closed = true
				m.q = nil
				m.mu.Unlock()
				return
			}
		}
		spare = q
	}
}

type collector struct{ s *System }

var (
	descMessages = prometheus.NewDesc("ioactor_loop_messages_total", "Messages delivered by the loop.", []string{"loop"}, nil)
	descWakeups  = prometheus.NewDesc("ioactor_loop_remote_pushes_total", "Messages pushed onto the loop from other goroutines.", []string{"loop"}, nil)
	descDepth    = prometheus.NewDesc("ioactor_loop_mailbox_depth", "Messages waiting in the loop's remote queue.", []string{"loop"}, nil)
	descDead     = prometheus.NewDesc("ioactor_actor_dead_letters_total", "Messages sent to stopped actors.", nil, nil)
	descPanics   = prometheus.NewDesc("ioactor_actor_panics_total", "Actor panics recovered by the runtime.", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descMessages
	ch <- descWakeups
	ch <- descDepth
	ch <- descDead
	ch <- descPanics
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range c.s.loops {
		id := fmt.Sprint(l.id)
		ch <- prometheus.MustNewConstMetric(descMessages, prometheus.CounterValue, float64(l.messages.Load()), id)
		ch <- prometheus.MustNewConstMetric(descWakeups, prometheus.CounterValue, float64(l.wakeups.Load()), id)
		l.mu.Lock()
		depth := len(l.remote)
		l.mu.Unlock()
		ch <- prometheus.MustNewConstMetric(descDepth, prometheus.GaugeValue, float64(depth), id)
	}
	ch <- prometheus.MustNewConstMetric(descDead, prometheus.CounterValue, float64(c.s.deadLetters.Load()))
	ch <- prometheus.MustNewConstMetric(descPanics, prometheus.CounterValue, float64(c.s.panics.Load()))
}
