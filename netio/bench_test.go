package netio_test

import (
	"context"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/netio"
)

// The runtime's own costs, each next to the Go primitive it replaces:
//
//   - BenchmarkSend: one message between two actors of one loop (a local
//     queue push, drained in the same loop turn), against a buffered channel
//     in one goroutine and a ping-pong between two goroutines;
//   - BenchmarkWakeup: a Ref.Tell from another goroutine to a loop asleep in
//     epoll_wait and a channel reply, against a channel ping-pong;
//   - BenchmarkTellBurst: many Ref.Tells in a row (the wake-ups coalesce),
//     against a buffered channel to one consumer goroutine;
//   - BenchmarkTimer: a timer scheduled and fired on the loop, against
//     time.AfterFunc.
//
// An op is a burst of messages (or timers); ns/msg and allocs/msg divide by
// the burst.

const burst = 1024

type token struct{}

// tok is sent by pointer: boxing it in an interface allocates nothing.
var tok = &token{}

type kick struct{}

func benchSystem(b *testing.B) *netio.System {
	b.Helper()
	leakcheck.Check(b)
	sys, err := netio.NewSystem(netio.Config{Loops: 1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := sys.Shutdown(ctx); err != nil {
			b.Error(err)
		}
	})
	return sys
}

var allocSamples = []metrics.Sample{{Name: "/gc/heap/allocs:objects"}, {Name: "/gc/heap/tiny/allocs:objects"}}

func heapAllocs() uint64 {
	metrics.Read(allocSamples)
	return allocSamples[0].Value.Uint64() + allocSamples[1].Value.Uint64()
}

// perMsg reports ns/msg and allocs/msg for a benchmark whose op is n
// messages. Call it before the b.Loop loop and call the result after it.
func perMsg(b *testing.B, n int) func() {
	b.ReportAllocs()
	a0 := heapAllocs()
	return func() {
		msgs := float64(b.N) * float64(n)
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/msgs, "ns/msg")
		b.ReportMetric(float64(heapAllocs()-a0)/msgs, "allocs/msg")
	}
}

func BenchmarkSend(b *testing.B) {
	b.Run("netio-local", func(b *testing.B) {
		sys := benchSystem(b)
		done := make(chan struct{})
		var peer netio.Ref
		left := 0
		// a and peer bounce tok: burst messages per kick, all on one loop.
		a := sys.SpawnOn(sys.Loops()[0], netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
			switch msg.(type) {
			case kick:
				left = burst / 2 // round trips
			case *token:
				if left--; left == 0 {
					done <- struct{}{}
					ctx.YieldBeforeBlocking() // the benchmark waits on done
					return
				}
			}
			ctx.Tell(peer, tok)
		}))
		peer = sys.SpawnOn(sys.Loops()[0], netio.ReceiveFunc(func(ctx *netio.Context, msg any) { ctx.Reply(msg) }))
		report := perMsg(b, burst)
		for b.Loop() {
			a.Tell(kick{})
			<-done
		}
		report()
	})
	b.Run("chan-1-goroutine", func(b *testing.B) {
		ch := make(chan *token, 1)
		report := perMsg(b, burst)
		for b.Loop() {
			for range burst {
				ch <- tok
				<-ch
			}
		}
		report()
	})
	b.Run("chan-2-goroutines", func(b *testing.B) {
		leakcheck.Check(b)
		ping, pong := make(chan *token), make(chan *token)
		go func() {
			for t := range ping {
				pong <- t
			}
		}()
		defer close(ping)
		report := perMsg(b, burst)
		for b.Loop() {
			for range burst / 2 {
				ping <- tok
				<-pong
			}
		}
		report()
	})
}

func BenchmarkWakeup(b *testing.B) {
	b.Run("netio-Ref.Tell", func(b *testing.B) {
		sys := benchSystem(b)
		done := make(chan struct{})
		a := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
			done <- struct{}{}
			ctx.YieldBeforeBlocking() // a goroutine waits on done
		}))
		report := perMsg(b, 1)
		for b.Loop() {
			a.Tell(tok)
			<-done
		}
		report()
	})
	b.Run("chan", func(b *testing.B) {
		leakcheck.Check(b)
		in, done := make(chan *token), make(chan struct{})
		go func() {
			for range in {
				done <- struct{}{}
			}
		}()
		defer close(in)
		report := perMsg(b, 1)
		for b.Loop() {
			in <- tok
			<-done
		}
		report()
	})
}

func BenchmarkTellBurst(b *testing.B) {
	b.Run("netio-Ref.Tell", func(b *testing.B) {
		sys := benchSystem(b)
		done := make(chan struct{})
		n := 0
		a := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
			if n++; n == burst {
				n = 0
				done <- struct{}{}
				ctx.YieldBeforeBlocking() // the benchmark waits on done
			}
		}))
		report := perMsg(b, burst)
		for b.Loop() {
			for range burst {
				a.Tell(tok)
			}
			<-done
		}
		report()
	})
	b.Run("chan", func(b *testing.B) {
		leakcheck.Check(b)
		in, done := make(chan *token, burst), make(chan struct{})
		go func() {
			n := 0
			for range in {
				if n++; n == burst {
					n = 0
					done <- struct{}{}
				}
			}
		}()
		defer close(in)
		report := perMsg(b, burst)
		for b.Loop() {
			for range burst {
				in <- tok
			}
			<-done
		}
		report()
	})
}

// BenchmarkTimer chains burst timers of zero delay: each one, when it fires,
// schedules the next, so every op schedules and fires burst timers.
func BenchmarkTimer(b *testing.B) {
	const timers = burst / 8
	b.Run("netio-After", func(b *testing.B) {
		sys := benchSystem(b)
		done := make(chan struct{})
		left := 0
		a := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
			if _, ok := msg.(kick); ok {
				left = timers
			}
			if left == 0 {
				done <- struct{}{}
				ctx.YieldBeforeBlocking() // the benchmark waits on done
				return
			}
			left--
			ctx.After(0, tok)
		}))
		report := perMsg(b, timers)
		for b.Loop() {
			a.Tell(kick{})
			<-done
		}
		report()
	})
	b.Run("netio-Reset", func(b *testing.B) {
		sys := benchSystem(b)
		done := make(chan struct{})
		left := 0
		var t *netio.Timer
		a := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
			if _, ok := msg.(kick); ok {
				left = timers
			}
			if left == 0 {
				done <- struct{}{}
				ctx.YieldBeforeBlocking() // the benchmark waits on done
				return
			}
			left--
			if t == nil {
				t = ctx.After(0, tok)
				return
			}
			t.Reset(0)
		}))
		report := perMsg(b, timers)
		for b.Loop() {
			a.Tell(kick{})
			<-done
		}
		report()
	})
	b.Run("time.AfterFunc", func(b *testing.B) {
		done := make(chan struct{})
		left := 0
		var fire func()
		fire = func() {
			if left == 0 {
				done <- struct{}{}
				return
			}
			left--
			time.AfterFunc(0, fire)
		}
		report := perMsg(b, timers)
		for b.Loop() {
			left = timers
			fire()
			<-done
		}
		report()
	})
	b.Run("time.Timer.Reset", func(b *testing.B) {
		done := make(chan struct{})
		left := 0
		var t *time.Timer
		t = time.AfterFunc(time.Hour, func() {
			if left == 0 {
				done <- struct{}{}
				return
			}
			left--
			t.Reset(0)
		})
		defer t.Stop()
		report := perMsg(b, timers)
		for b.Loop() {
			left = timers
			t.Reset(0)
			<-done
		}
		report()
	})
}

// BenchmarkTimerLateness runs a chain of 200 µs timers on an idle loop, so
// that it sleeps in epoll_wait between them, and reports how late each
// fires beyond its 200 µs (with epoll_pwait2, tens of µs; rounded up to
// epoll_wait's milliseconds, ~1 ms), beside a time.Timer's lateness.
func BenchmarkTimerLateness(b *testing.B) {
	const d = 200 * time.Microsecond
	b.Run("netio-After", func(b *testing.B) {
		sys := benchSystem(b)
		done := make(chan time.Duration)
		var start time.Time
		a := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
			if _, ok := msg.(kick); ok {
				start = time.Now()
				ctx.After(d, tok)
				return
			}
			done <- time.Since(start) - d
			ctx.YieldBeforeBlocking()
		}))
		var late time.Duration
		for b.Loop() {
			a.Tell(kick{})
			late += <-done
		}
		b.ReportMetric(float64(late.Microseconds())/float64(b.N), "µs-late/op")
	})
	b.Run("time.Timer", func(b *testing.B) {
		var late time.Duration
		t := time.NewTimer(time.Hour)
		for b.Loop() {
			start := time.Now()
			t.Reset(d)
			<-t.C
			late += time.Since(start) - d
		}
		b.ReportMetric(float64(late.Microseconds())/float64(b.N), "µs-late/op")
	})
}
