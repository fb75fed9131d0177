package udp_test

import (
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/udp"
)

func TestBindSendReceiveUnbind(t *testing.T) {
	forEachFamily(t, func(t *testing.T, lo netip.Addr) {
		sys := newSystem(t, 2, nil)
		l := sys.Loops()[0]
		ha, cha := spawnProbe(sys, l)
		hb, chb := spawnProbe(sys, l)
		sa, addrA := bind(t, sys, ha, cha, ap(lo, 0))
		sb, addrB := bind(t, sys, hb, chb, ap(lo, 0))
		if addrA.Addr() != lo || addrA.Port() == 0 {
			t.Fatalf("bound to %v", addrA)
		}

		// A value Send with an ack: the ack goes to the handler (no sender).
		sa.Tell(udp.Send{Data: []byte("hello"), Target: addrB, Ack: "ack-1"})
		if ack, from := expect[string](t, cha); ack != "ack-1" || from != sa {
			t.Fatalf("ack %q from %v", ack, from)
		}
		r, from := expect[udp.Received](t, chb)
		if string(r.Data()) != "hello" || r.Sender() != addrA || from != sb {
			t.Fatalf("received %q from %v via %v", r.Data(), r.Sender(), from)
		}

		// A pointer Send, reused, and a reply the other way.
		s := &udp.Send{Data: []byte("one"), Target: addrA}
		sb.Tell(s)
		expectData(t, cha, "one", addrB)

		// Unbind answers Unbound once the socket is closed: the port is free.
		sa.Tell(udp.Unbind{})
		if _, from := expect[udp.Unbound](t, cha); from != sa {
			t.Fatalf("Unbound from %v", from)
		}
		select {
		case <-sa.Done():
		case <-time.After(wait):
			t.Fatal("socket did not stop after Unbind")
		}
		sa2, addrA2 := bind(t, sys, ha, cha, addrA)
		if addrA2 != addrA {
			t.Fatalf("rebound to %v; want %v", addrA2, addrA)
		}
		sa2.Tell(&udp.Unbind{})
		expect[udp.Unbound](t, cha)
		sb.Tell(udp.Unbind{})
		expect[udp.Unbound](t, chb)
	})
}

func TestBindFails(t *testing.T) {
	forEachFamily(t, func(t *testing.T, lo netip.Addr) {
		sys := newSystem(t, 1, nil)
		h, ch := spawnProbe(sys, sys.Loops()[0])
		_, addr := bind(t, sys, h, ch, ap(lo, 0))

		cmd := &udp.Bind{Handler: h, LocalAddr: addr}
		udp.Manager(sys).Tell(cmd)
		f, _ := expect[udp.CommandFailed](t, ch)
		if f.Cmd != cmd || !errors.Is(f.Cause, syscall.EADDRINUSE) {
			t.Fatalf("CommandFailed %+v", f)
		}
		if want := "udp: bind " + addr.String() + ": bind: address already in use"; f.Cause.Error() != want {
			t.Fatalf("cause %q; want %q", f.Cause, want)
		}

		udp.Manager(sys).Tell(udp.Bind{Handler: h})
		f, _ = expect[udp.CommandFailed](t, ch)
		if !strings.Contains(f.Cause.Error(), "invalid address") {
			t.Fatalf("cause %v", f.Cause)
		}
	})
}

// A command without a Handler makes its sender the handler; replies to a
// command go to its sender.
func TestHandlerIsTheSenderByDefault(t *testing.T) {
	sys := newSystem(t, 1, nil)
	out := make(chan any, 4)
	h := sys.SpawnOn(sys.Loops()[0], netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch m := msg.(type) {
		case string:
			ctx.Tell(udp.Manager(ctx.System()), udp.Bind{LocalAddr: netip.MustParseAddrPort("127.0.0.1:0")})
		case udp.Bound:
			ctx.Tell(m.Socket, udp.Unbind{})
			out <- m
		default:
			out <- m
		}
	}))
	h.Tell("go")
	for i := range 2 {
		select {
		case m := <-out:
			_, bound := m.(udp.Bound)
			_, unbound := m.(udp.Unbound)
			if i == 0 && !bound || i == 1 && !unbound {
				t.Fatalf("message %d is %T", i, m)
			}
		case <-time.After(wait):
			t.Fatalf("timed out waiting for message %d", i)
		}
	}
}

func TestSimpleSender(t *testing.T) {
	forEachFamily(t, func(t *testing.T, lo netip.Addr) {
		sys := newSystem(t, 1, nil)
		l := sys.Loops()[0]
		hr, chr := spawnProbe(sys, l)
		_, dst := bind(t, sys, hr, chr, ap(lo, 0))
		hs, chs := spawnProbe(sys, l)

		// The default simple sender is dual-stack: it reaches either family.
		udp.Manager(sys).Tell(udp.SimpleSender{Handler: hs})
		ready, from := expect[udp.SimpleSenderReady](t, chs)
		if from != ready.Socket {
			t.Fatalf("ready from %v", from)
		}
		ready.Socket.Tell(udp.Send{Data: []byte("simple"), Target: dst, Ack: 1})
		expect[int](t, chs)
		r, _ := expect[udp.Received](t, chr)
		if string(r.Data()) != "simple" || r.Sender().Addr() != lo {
			t.Fatalf("received %q from %v", r.Data(), r.Sender())
		}

		// One bound to the family's loopback.
		udp.Manager(sys).Tell(&udp.SimpleSender{Handler: hs, LocalAddr: ap(lo, 0)})
		ready2, _ := expect[udp.SimpleSenderReady](t, chs)
		ready2.Socket.Tell(udp.Send{Data: []byte("bound"), Target: dst})
		expectData(t, chr, "bound", ready2.LocalAddr)

		ready.Socket.Tell(udp.Unbind{})
		expect[udp.Unbound](t, chs)
		ready2.Socket.Tell(udp.Unbind{})
		expect[udp.Unbound](t, chs)
	})
}

func TestConnect(t *testing.T) {
	forEachFamily(t, func(t *testing.T, lo netip.Addr) {
		sys := newSystem(t, 2, nil)
		l := sys.Loops()[1]
		hp, chp := spawnProbe(sys, l)
		sp, peer := bind(t, sys, hp, chp, ap(lo, 0))
		hx, chx := spawnProbe(sys, l)
		sx, _ := bind(t, sys, hx, chx, ap(lo, 0))
		hc, chc := spawnProbe(sys, l)

		udp.Manager(sys).Tell(udp.Connect{Handler: hc, RemoteAddr: peer})
		c, from := expect[udp.Connected](t, chc)
		if from != c.Socket || c.RemoteAddr != peer || c.LocalAddr.Addr() != lo || c.LocalAddr.Port() == 0 {
			t.Fatalf("Connected %+v from %v", c, from)
		}

		c.Socket.Tell(udp.Send{Data: []byte("to peer"), Ack: "sent"})
		expect[string](t, chc)
		expectData(t, chp, "to peer", c.LocalAddr)

		// The kernel delivers only the peer's datagrams to a connected socket.
		sx.Tell(udp.Send{Data: []byte("stray"), Target: c.LocalAddr, Ack: "x"})
		expect[string](t, chx)
		sp.Tell(udp.Send{Data: []byte("from peer"), Target: c.LocalAddr})
		expectData(t, chc, "from peer", peer)

		// A connected socket sends only to its peer.
		other := ap(lo, 9)
		c.Socket.Tell(udp.Send{Data: []byte("elsewhere"), Target: other})
		f, _ := expect[udp.CommandFailed](t, chc)
		if !strings.Contains(f.Cause.Error(), "connected") {
			t.Fatalf("cause %v", f.Cause)
		}
		c.Socket.Tell(udp.Send{Data: []byte("explicit"), Target: peer})
		expectData(t, chp, "explicit", c.LocalAddr)

		// With a local address.
		udp.Manager(sys).Tell(udp.Connect{Handler: hc, RemoteAddr: peer, LocalAddr: ap(lo, 0)})
		c2, _ := expect[udp.Connected](t, chc)
		c2.Socket.Tell(udp.Disconnect{})
		if _, from := expect[udp.Disconnected](t, chc); from != c2.Socket {
			t.Fatalf("Disconnected from %v", from)
		}

		c.Socket.Tell(&udp.Disconnect{})
		expect[udp.Disconnected](t, chc)
		<-c.Socket.Done()
	})
}

// closedPort returns a port of lo nobody listens on.
func closedPort(t *testing.T, sys *netio.System, lo netip.Addr) netip.AddrPort {
	t.Helper()
	h, ch := spawnProbe(sys, sys.Loops()[0])
	s, addr := bind(t, sys, h, ch, ap(lo, 0))
	s.Tell(udp.Unbind{})
	expect[udp.Unbound](t, ch)
	return addr
}

func TestConnectedPortUnreachable(t *testing.T) {
	forEachFamily(t, func(t *testing.T, lo netip.Addr) {
		sys := newSystem(t, 1, nil)
		dead := closedPort(t, sys, lo)
		h, ch := spawnProbe(sys, sys.Loops()[0])
		udp.Manager(sys).Tell(udp.Connect{Handler: h, RemoteAddr: dead})
		c, _ := expect[udp.Connected](t, ch)

		c.Socket.Tell(udp.Send{Data: []byte("anyone?"), Ack: "sent"})
		expect[string](t, ch)
		e, from := expect[udp.ErrorReceived](t, ch)
		if !errors.Is(e.Cause, syscall.ECONNREFUSED) || from != c.Socket {
			t.Fatalf("ErrorReceived %v from %v", e.Cause, from)
		}
		if !strings.Contains(e.Cause.Error(), dead.String()) {
			t.Fatalf("cause %q does not name the peer", e.Cause)
		}

		// The socket stays usable: the next send is not failed by the old error.
		c.Socket.Tell(udp.Send{Data: []byte("again"), Ack: "sent again"})
		if ack, _ := expect[string](t, ch); ack != "sent again" {
			t.Fatalf("ack %q", ack)
		}
		e, _ = expect[udp.ErrorReceived](t, ch)
		if !errors.Is(e.Cause, syscall.ECONNREFUSED) {
			t.Fatalf("second ErrorReceived %v", e.Cause)
		}
	})
}

func TestSuspendResumeReading(t *testing.T) {
	forEachFamily(t, func(t *testing.T, lo netip.Addr) {
		sys := newSystem(t, 2, nil)
		hr, chr := spawnProbe(sys, sys.Loops()[0])
		sr, dst := bind(t, sys, hr, chr, ap(lo, 0))
		hs, chs := spawnProbe(sys, sys.Loops()[1])
		ss, src := bind(t, sys, hs, chs, ap(lo, 0))

		sr.Tell(udp.SuspendReading{})
		sr.Tell(udp.ResumeWriting{}) // a barrier: answered at once
		expect[udp.WritingResumed](t, chr)
		for i := range 10 {
			ss.Tell(udp.Send{Data: []byte{byte('a' + i)}, Target: dst, Ack: i})
			expect[int](t, chs)
		}
		expectNothing(t, chr, 100*time.Millisecond)

		sr.Tell(&udp.ResumeReading{})
		for i := range 10 {
			expectData(t, chr, string(rune('a'+i)), src)
		}
		sr.Tell(&udp.SuspendReading{})
		sr.Tell(udp.ResumeWriting{})
		expect[udp.WritingResumed](t, chr)
		ss.Tell(udp.Send{Data: []byte("late"), Target: dst, Ack: 0})
		expect[int](t, chs)
		expectNothing(t, chr, 50*time.Millisecond)
		sr.Tell(udp.ResumeReading{})
		expectData(t, chr, "late", src)
	})
}

func TestPullMode(t *testing.T) {
	forEachFamily(t, func(t *testing.T, lo netip.Addr) {
		sys := newSystem(t, 2, nil)
		hr, chr := spawnProbe(sys, sys.Loops()[0])
		hs, chs := spawnProbe(sys, sys.Loops()[1])
		ss, src := bind(t, sys, hs, chs, ap(lo, 0))

		// One datagram per read.
		udp.Manager(sys).Tell(udp.Bind{Handler: hr, LocalAddr: ap(lo, 0), PullMode: true, Batching: udp.Batching{ReadBatch: -1}})
		b, _ := expect[udp.Bound](t, chr)
		for i := range 3 {
			ss.Tell(udp.Send{Data: []byte{byte('0' + i)}, Target: b.LocalAddr, Ack: i})
			expect[int](t, chs)
		}
		expectNothing(t, chr, 50*time.Millisecond)
		for i := range 3 {
			b.Socket.Tell(udp.ResumeReading{})
			expectData(t, chr, string(rune('0'+i)), src)
			expectNothing(t, chr, 20*time.Millisecond)
		}
		// Asked for a read with nothing queued: the next datagram is delivered.
		b.Socket.Tell(udp.ResumeReading{})
		expectNothing(t, chr, 20*time.Millisecond)
		ss.Tell(udp.Send{Data: []byte("next"), Target: b.LocalAddr})
		expectData(t, chr, "next", src)
		ss.Tell(udp.Send{Data: []byte("held"), Target: b.LocalAddr, Ack: 0})
		expect[int](t, chs)
		expectNothing(t, chr, 50*time.Millisecond)

		// With batching, one ResumeReading reads what is queued, up to ReadBatch.
		udp.Manager(sys).Tell(udp.Bind{Handler: hr, LocalAddr: ap(lo, 0), PullMode: true, Batching: udp.Batching{ReadBatch: 4}})
		b2, _ := expect[udp.Bound](t, chr)
		for i := range 6 {
			ss.Tell(udp.Send{Data: []byte{byte('a' + i)}, Target: b2.LocalAddr, Ack: i})
			expect[int](t, chs)
		}
		b2.Socket.Tell(udp.ResumeReading{})
		for i := range 4 {
			expectData(t, chr, string(rune('a'+i)), src)
		}
		expectNothing(t, chr, 50*time.Millisecond)
		b2.Socket.Tell(udp.ResumeReading{})
		expectData(t, chr, "e", src)
		expectData(t, chr, "f", src)
	})
}

func TestHandlerStopClosesSocket(t *testing.T) {
	forEachFamily(t, func(t *testing.T, lo netip.Addr) {
		sys := newSystem(t, 1, nil)
		h, ch := spawnProbe(sys, sys.Loops()[0])
		s, addr := bind(t, sys, h, ch, ap(lo, 0))
		h.Stop()
		select {
		case <-s.Done():
		case <-time.After(wait):
			t.Fatal("the socket outlived its handler")
		}
		h2, ch2 := spawnProbe(sys, sys.Loops()[0])
		s2, _ := bind(t, sys, h2, ch2, addr) // the port is free again
		s2.Tell(udp.Unbind{})
		expect[udp.Unbound](t, ch2)
	})
}

// A blocking handler gets copies it owns: the data must survive later reads.
func TestBlockingHandlerGetsCopies(t *testing.T) {
	forEachFamily(t, func(t *testing.T, lo netip.Addr) {
		sys := newSystem(t, 2, nil)
		got := make(chan udp.Received, 256)
		ready := make(chan udp.Bound, 1)
		h := sys.SpawnBlocking(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
			switch m := msg.(type) {
			case udp.Bound:
				ready <- m
			case udp.Received:
				got <- m // kept without copying
			}
		}))
		udp.Manager(sys).Tell(udp.Bind{Handler: h, LocalAddr: ap(lo, 0)})
		var b udp.Bound
		select {
		case b = <-ready:
		case <-time.After(wait):
			t.Fatal("no Bound")
		}
		hs, chs := spawnProbe(sys, sys.Loops()[0])
		ss, _ := bind(t, sys, hs, chs, ap(lo, 0))
		const n = 200
		for i := range n {
			ss.Tell(udp.Send{Data: []byte{byte(i), byte(i >> 8), 0xee}, Target: b.LocalAddr})
		}
		var all []udp.Received
		for range n {
			select {
			case r := <-got:
				all = append(all, r)
			case <-time.After(wait):
				t.Fatalf("received %d of %d", len(all), n)
			}
		}
		for i, r := range all {
			if len(r.Data()) != 3 || int(r.Data()[0])|int(r.Data()[1])<<8 != i || r.Data()[2] != 0xee {
				t.Fatalf("datagram %d is %x", i, r.Data())
			}
		}
		h.Stop()
		<-b.Socket.Done()
	})
}
