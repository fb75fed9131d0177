package netio_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/netio"
)

func newSystem(t *testing.T, loops int) *netio.System {
	t.Helper()
	leakcheck.Check(t)
	sys, err := netio.NewSystem(netio.Config{Loops: loops})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := sys.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return sys
}

// recorder forwards every message it receives to a channel.
func recorder(ch chan any) netio.ReceiveFunc {
	return func(ctx *netio.Context, msg any) { ch <- msg }
}

func recv(t *testing.T, ch chan any) any {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for a message")
		return nil
	}
}

type ping struct{ n int }
type pong struct{ n int }

func TestTellAcrossLoopsKeepsOrder(t *testing.T) {
	sys := newSystem(t, 2)
	out := make(chan any, 1000)
	sink := sys.SpawnOn(sys.Loops()[1], recorder(out))
	src := sys.SpawnOn(sys.Loops()[0], netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		for i := range 500 {
			ctx.Tell(sink, ping{i})
		}
	}))
	src.Tell("go")
	for i := range 500 {
		if m := recv(t, out).(ping); m.n != i {
			t.Fatalf("message %d arrived as %d", i, m.n)
		}
	}
}

func TestLocalTellAndReply(t *testing.T) {
	sys := newSystem(t, 1)
	out := make(chan any, 1)
	echo := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		if p, ok := msg.(ping); ok {
			ctx.Reply(pong(p))
		}
	}))
	client := sys.SpawnOn(echo.Loop(), netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch m := msg.(type) {
		case string:
			ctx.Tell(echo, ping{7})
		case pong:
			if ctx.Sender() != echo {
				t.Errorf("sender = %v, want %v", ctx.Sender(), echo)
			}
			out <- m
		}
	}))
	client.Tell("start")
	if m := recv(t, out).(pong); m.n != 7 {
		t.Fatalf("got %v", m)
	}
}

func TestBecomeUnbecome(t *testing.T) {
	sys := newSystem(t, 1)
	out := make(chan any, 10)
	var busy netio.ReceiveFunc = func(ctx *netio.Context, msg any) {
		if msg == "done" {
			ctx.Unbecome()
			return
		}
		out <- "busy:" + msg.(string)
	}
	a := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		if msg == "work" {
			ctx.BecomeStacked(busy)
			return
		}
		out <- "idle:" + msg.(string)
	}))
	for _, m := range []string{"x", "work", "y", "done", "z"} {
		a.Tell(m)
	}
	for _, want := range []string{"idle:x", "busy:y", "idle:z"} {
		if got := recv(t, out); got != want {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

type watcher struct {
	target netio.Ref
	out    chan any
}

func (w *watcher) PreStart(ctx *netio.Context) { ctx.Watch(w.target) }
func (w *watcher) Receive(ctx *netio.Context, msg any) {
	w.out <- msg
}

func TestWatchDeliversTerminated(t *testing.T) {
	sys := newSystem(t, 2)
	target := sys.SpawnOn(sys.Loops()[0], netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		if msg == "stop" {
			ctx.Stop()
		}
	}))
	out := make(chan any, 2)
	sys.SpawnOn(sys.Loops()[1], &watcher{target: target, out: out})
	time.Sleep(10 * time.Millisecond)
	target.Tell("stop")
	if m := recv(t, out).(netio.Terminated); m.Ref != target {
		t.Fatalf("Terminated for %v, want %v", m.Ref, target)
	}
	<-target.Done()
	// Watching a dead actor yields Terminated at once.
	sys.Spawn(&watcher{target: target, out: out})
	if m := recv(t, out).(netio.Terminated); m.Ref != target {
		t.Fatalf("late watch: Terminated for %v", m.Ref)
	}
}

type tick struct{}
type once struct{}
type arm struct{}

func TestTimers(t *testing.T) {
	sys := newSystem(t, 1)
	out := make(chan any, 100)
	a := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch msg.(type) {
		case arm:
			ctx.After(20*time.Millisecond, once{})
			cancelled := ctx.After(10*time.Millisecond, "cancelled")
			if !cancelled.Stop() {
				t.Error("Stop of a pending timer reported false")
			}
			ctx.Every(5*time.Millisecond, tick{})
		default:
			out <- msg
		}
	}))
	start := time.Now()
	a.Tell(arm{})
	ticks, fired := 0, false
	for !fired || ticks < 5 {
		switch m := recv(t, out).(type) {
		case tick:
			ticks++
		case once:
			if el := time.Since(start); el < 20*time.Millisecond {
				t.Fatalf("once fired after %v", el)
			}
			fired = true
		default:
			t.Fatalf("got %v", m)
		}
	}
	a.Stop()
	<-a.Done()
}

type fdOwner struct {
	fd  atomic.Int64
	out chan any
}

func (o *fdOwner) PreStart(ctx *netio.Context) {
	fds := make([]int, 2)
	if err := unix.Pipe2(fds, unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		panic(err)
	}
	unix.Close(fds[1])
	if err := ctx.Register(fds[0], netio.EventIn, o); err != nil {
		panic(err)
	}
	o.fd.Store(int64(fds[0]))
}
func (o *fdOwner) OnEvents(ctx *netio.Context, ev uint32) {}
func (o *fdOwner) Receive(ctx *netio.Context, msg any) {
	panic("boom")
}
func (o *fdOwner) PostStop(ctx *netio.Context) { o.out <- "stopped" }

func TestPanicStopsActorAndClosesItsDescriptors(t *testing.T) {
	sys := newSystem(t, 1)
	out := make(chan any, 2)
	o := &fdOwner{out: out}
	a := sys.Spawn(o)
	a.Tell("explode")
	if m := recv(t, out); m != "stopped" {
		t.Fatalf("got %v", m)
	}
	<-a.Done()
	var st unix.Stat_t
	if err := unix.Fstat(int(o.fd.Load()), &st); !errors.Is(err, unix.EBADF) {
		t.Fatalf("fd still open after the panic: fstat err = %v", err)
	}
	// The loop survives: another actor on it still works.
	b := sys.SpawnOn(a.Loop(), recorder(out))
	b.Tell("alive")
	if m := recv(t, out); m != "alive" {
		t.Fatalf("got %v", m)
	}
}

func TestBlockingActor(t *testing.T) {
	sys := newSystem(t, 1)
	out := make(chan any, 2)
	worker := sys.SpawnBlocking(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		time.Sleep(10 * time.Millisecond) // blocking is fine here
		ctx.Reply(pong{msg.(ping).n * 2})
	}))
	client := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch m := msg.(type) {
		case ping:
			ctx.Tell(worker, m)
		case pong:
			out <- m
		}
	}))
	client.Tell(ping{21})
	if m := recv(t, out).(pong); m.n != 42 {
		t.Fatalf("got %v", m)
	}
}

func TestShutdownStopsEverything(t *testing.T) {
	leakcheck.Check(t)
	sys, err := netio.NewSystem(netio.Config{Loops: 2})
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan any, 10)
	owners := []*fdOwner{{out: out}, {out: out}}
	for _, o := range owners {
		sys.Spawn(o)
	}
	sys.SpawnBlocking(recorder(out))
	time.Sleep(20 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sys.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for range owners {
		if m := recv(t, out); m != "stopped" {
			t.Fatalf("got %v", m)
		}
	}
	if err := sys.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}
	// Telling an actor of a shut-down system is harmless.
	sys.Spawn(recorder(out)).Tell("late")
}

// The zero Ref is documented as naming nobody: every method of it, and every
// Context method given it, must work and do nothing (issue 15: Loop and Done
// used to panic).
func TestZeroRefIsInert(t *testing.T) {
	sys := newSystem(t, 1)
	var r netio.Ref
	if !r.IsZero() || r.Loop() != nil || r.String() != "actor(nil)" {
		t.Fatalf("zero Ref: IsZero %v, Loop %v, String %q", r.IsZero(), r.Loop(), r.String())
	}
	select {
	case <-r.Done():
	default:
		t.Fatal("the zero Ref's Done is not closed")
	}
	r.Tell("nobody")
	r.Stop()
	r.Run(func(*netio.Context) { t.Error("ran on the zero Ref") })
	done := make(chan struct{})
	sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		if msg != "go" {
			return
		}
		defer close(done)
		ctx.Tell(r, "x")
		ctx.Deliver(r, "x")
		ctx.Forward(r, "x")
		ctx.Watch(r)
		ctx.Unwatch(r)
		ctx.StopActor(r)
		ctx.Run(r, func(*netio.Context) { t.Error("ran on the zero Ref") })
		ctx.Reply("no sender: a zero Ref")
	})).Tell("go")
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the actor did not run")
	}
}

// cellActor embeds its runtime state.
type cellActor struct {
	netio.ActorCell
	out chan any
}

func (c *cellActor) Receive(ctx *netio.Context, msg any) {
	switch msg {
	case "become":
		ctx.Become(func(ctx *netio.Context, msg any) { c.out <- pong{msg.(ping).n} })
	case "stop":
		ctx.Stop()
	default:
		c.out <- msg
	}
}

// An actor that embeds an ActorCell behaves as one spawned in state of its
// own, and the same value spawned twice is two actors, each with its own
// mailbox and lifetime (the second in state allocated apart).
func TestActorCell(t *testing.T) {
	sys := newSystem(t, 1)
	out := make(chan any, 10)
	c := &cellActor{out: out}
	a := sys.Spawn(c)
	b := sys.Spawn(c)
	if a == b {
		t.Fatal("one value spawned twice gave the same Ref")
	}
	a.Tell(ping{1})
	if m := recv(t, out); m != (ping{1}) {
		t.Fatalf("got %v, want ping{1}", m)
	}
	a.Tell("become")
	a.Tell(ping{2})
	if m := recv(t, out); m != (pong{2}) {
		t.Fatalf("after Become got %v, want pong{2}", m)
	}
	a.Tell("stop")
	waitDone(t, a)
	b.Tell(ping{3})
	if m := recv(t, out); m != (ping{3}) {
		t.Fatalf("the second actor got %v, want ping{3}", m)
	}
	b.Stop()
	waitDone(t, b)
}

func waitDone(t *testing.T, r netio.Ref) {
	t.Helper()
	select {
	case <-r.Done():
	case <-time.After(5 * time.Second):
		t.Fatalf("%v did not stop", r)
	}
}
