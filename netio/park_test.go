package netio_test

import (
	"context"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/netio"
)

// A loop with nothing to do for longer than RawWait parks on the runtime's
// poller: timers still fire on time and a Tell from another goroutine still
// wakes it, with the default RawWait and with a loop that parks at once.
func TestIdleLoopParksAndWakes(t *testing.T) {
	for _, rw := range []time.Duration{0, -1} {
		t.Run(map[time.Duration]string{0: "default", -1: "park-at-once"}[rw], func(t *testing.T) {
			leakcheck.Check(t)
			sys, err := netio.NewSystem(netio.Config{Loops: 1, RawWait: rw})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := sys.Shutdown(ctx); err != nil {
					t.Error(err)
				}
			}()
			out := make(chan any, 10)
			a := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
				switch msg.(type) {
				case arm:
					ctx.After(30*time.Millisecond, once{})
				default:
					out <- msg
				}
			}))
			start := time.Now()
			a.Tell(arm{})
			if _, ok := recv(t, out).(once); !ok {
				t.Fatal("want the timer's message")
			}
			if el := time.Since(start); el < 30*time.Millisecond {
				t.Fatalf("a 30 ms timer fired after %v", el)
			}
			time.Sleep(20 * time.Millisecond) // parked, no timer
			a.Tell(ping{n: 1})
			if m, ok := recv(t, out).(ping); !ok || m.n != 1 {
				t.Fatalf("got %v, want the ping", m)
			}
			a.Stop()
			<-a.Done()
		})
	}
}
