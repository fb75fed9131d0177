package netio_test

import (
	"testing"

	"github.com/ioactor/ioactor/netio"
)

// deliverer delivers every string it is told to target, logging around it.
type deliverer struct {
	target netio.Ref
	log    *[]string
}

func (d *deliverer) Receive(ctx *netio.Context, msg any) {
	if s, ok := msg.(string); ok {
		*d.log = append(*d.log, "before "+s)
		ctx.Deliver(d.target, s)
		*d.log = append(*d.log, "after "+s)
	}
}

// TestDeliverCallsAnIdleActorDirectly: to an idle actor of the same loop
// with nothing queued, Deliver runs its Receive before returning, with the
// caller as the sender; to a busy one (here: the caller itself, and an
// actor that already has a message queued) it queues, in order.
func TestDeliverCallsAnIdleActorDirectly(t *testing.T) {
	sys := newSystem(t, 1)
	done := make(chan any, 1)
	var log []string
	var src netio.Ref
	sink := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch msg {
		case "end":
			done <- log
			return
		}
		from := "other"
		if ctx.Sender() == src {
			from = "src"
		}
		log = append(log, "sink "+msg.(string)+" from "+from)
	}))
	src = sys.SpawnOn(sink.Loop(), &deliverer{target: sink, log: &log})
	src.Tell("a") // sink idle: direct
	src.Run(func(ctx *netio.Context) {
		ctx.Tell(sink, "queued")   // queued for sink …
		ctx.Deliver(sink, "b")     // … so b queues behind it
		ctx.Deliver(ctx.Self(), 1) // itself, busy: queued (and ignored)
		log = append(log, "after b")
	})
	src.Run(func(ctx *netio.Context) { ctx.Tell(sink, "end") })
	got := recv(t, done).([]string)
	want := []string{"before a", "sink a from src", "after a", "after b", "sink queued from src", "sink b from src"}
	if len(got) != len(want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
}

// TestDeliverNoReentry: an actor that delivers to an idle one which
// delivers back gets the answer queued, after its own message is handled.
func TestDeliverNoReentry(t *testing.T) {
	sys := newSystem(t, 1)
	out := make(chan any, 4)
	var a netio.Ref
	depth := 0
	b := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		ctx.Deliver(a, pong{msg.(ping).n})
	}))
	a = sys.SpawnOn(b.Loop(), netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		depth++
		defer func() { depth-- }()
		switch m := msg.(type) {
		case string:
			ctx.Deliver(b, ping{1})
			out <- depth
		case pong:
			out <- m
			out <- depth
		}
	}))
	a.Tell("go")
	if d := recv(t, out); d != 1 {
		t.Fatalf("depth during the first message: %v", d)
	}
	if m := recv(t, out); m != (pong{1}) {
		t.Fatalf("got %v, want pong{1}", m)
	}
	if d := recv(t, out); d != 1 {
		t.Fatalf("the answer entered a running actor: depth %v", d)
	}
}

// TestDeliverPanicStopsTheTarget: a panic in a directly delivered message
// stops the target and its watchers hear of it; the caller goes on.
func TestDeliverPanicStopsTheTarget(t *testing.T) {
	sys := newSystem(t, 1)
	out := make(chan any, 4)
	bad := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		if msg == "boom" {
			panic("boom")
		}
	}))
	src := sys.SpawnOn(bad.Loop(), netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch m := msg.(type) {
		case string:
			ctx.Watch(bad)
		case int:
			ctx.Deliver(bad, "boom")
			out <- "caller went on"
		case netio.Terminated:
			if m.Ref == bad {
				out <- "terminated"
			}
		}
	}))
	src.Tell("watch")
	src.Tell(1)
	if m := recv(t, out); m != "caller went on" {
		t.Fatalf("got %v", m)
	}
	if m := recv(t, out); m != "terminated" {
		t.Fatalf("got %v", m)
	}
	select {
	case <-bad.Done():
	default:
		t.Fatal("the panicking target did not stop")
	}
}

// TestDeliverBecomeAndStop: Deliver uses the current behaviour, and a Stop
// in a directly delivered message stops the target once it returns.
func TestDeliverBecomeAndStop(t *testing.T) {
	sys := newSystem(t, 1)
	out := make(chan any, 4)
	target := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		out <- "first"
		ctx.Become(func(ctx *netio.Context, msg any) {
			out <- "second"
			ctx.Stop()
		})
	}))
	src := sys.SpawnOn(target.Loop(), netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		ctx.Deliver(target, msg)
		ctx.Deliver(target, msg)
		select {
		case <-target.Done():
			out <- "stopped"
		default:
			out <- "running"
		}
	}))
	src.Tell(1)
	for _, want := range []string{"first", "second", "stopped"} {
		if m := recv(t, out); m != want {
			t.Fatalf("got %v, want %v", m, want)
		}
	}
}
