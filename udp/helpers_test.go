package udp_test

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/udp"
)

const wait = 5 * time.Second

func newSystem(t *testing.T, loops int, reg prometheus.Registerer) *netio.System {
	t.Helper()
	leakcheck.Check(t)
	sys, err := netio.NewSystem(netio.Config{Loops: loops, Registerer: reg})
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

var families = []struct {
	name string
	lo   netip.Addr
}{
	{"IPv4", netip.MustParseAddr("127.0.0.1")},
	{"IPv6", netip.IPv6Loopback()},
}

func forEachFamily(t *testing.T, f func(t *testing.T, lo netip.Addr)) {
	for _, fam := range families {
		t.Run(fam.name, func(t *testing.T) { f(t, fam.lo) })
	}
}

// event is what a probe saw: a message and its sender.
type event struct {
	Msg  any
	From netio.Ref
}

// spawnProbe starts a handler on l that forwards every message to the
// returned channel, copying the data of udp.Received (which it may not keep).
func spawnProbe(sys *netio.System, l *netio.Loop) (netio.Ref, chan event) {
	ch := make(chan event, 1<<14)
	ref := sys.SpawnOn(l, netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		if r, ok := msg.(udp.Received); ok {
			msg = udp.NewReceived(bytes.Clone(r.Data()), r.Sender())
		}
		ch <- event{Msg: msg, From: ctx.Sender()}
	}))
	return ref, ch
}

func expect[T any](t *testing.T, ch <-chan event) (T, netio.Ref) {
	t.Helper()
	select {
	case ev := <-ch:
		m, ok := ev.Msg.(T)
		if !ok {
			var want T
			t.Fatalf("got %T %+v; want %T", ev.Msg, ev.Msg, want)
		}
		return m, ev.From
	case <-time.After(wait):
		var want T
		t.Fatalf("timed out waiting for %T", want)
	}
	panic("unreachable")
}

func expectNothing(t *testing.T, ch <-chan event, d time.Duration) {
	t.Helper()
	select {
	case ev := <-ch:
		t.Fatalf("unexpected %T %+v", ev.Msg, ev.Msg)
	case <-time.After(d):
	}
}

func expectData(t *testing.T, ch <-chan event, want string, from netip.AddrPort) {
	t.Helper()
	r, _ := expect[udp.Received](t, ch)
	if string(r.Data()) != want {
		t.Fatalf("received %q; want %q", r.Data(), want)
	}
	if from.IsValid() && r.Sender() != from {
		t.Fatalf("received from %v; want %v", r.Sender(), from)
	}
}

// bind binds a socket for handler h (whose probe channel is ch).
func bind(t *testing.T, sys *netio.System, h netio.Ref, ch <-chan event, addr netip.AddrPort, opts ...netio.SocketOption) (netio.Ref, netip.AddrPort) {
	t.Helper()
	udp.Manager(sys).Tell(udp.Bind{Handler: h, LocalAddr: addr, Options: opts})
	b, from := expect[udp.Bound](t, ch)
	if from != b.Socket {
		t.Fatalf("Bound came from %v; want the socket %v", from, b.Socket)
	}
	return b.Socket, b.LocalAddr
}

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

// gather returns the value of a metric (summed over label values matching
// labels, given as name=value pairs).
func gather(t testing.TB, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue metrics
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}
