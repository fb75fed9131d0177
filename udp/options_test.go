package udp_test

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/udp"
)

// TestMulticast: two sockets joined to a group both receive what is sent to
// it. IPv4 runs on lo. Linux routes IPv6 multicast only through interfaces
// with IFF_MULTICAST and an ff00::/8 route, which lo lacks (sending there
// fails with ENETUNREACH); the test then uses the first such interface, with
// IPV6_MULTICAST_LOOP (the datagrams also leave on that link, hop limit 1).
func TestMulticast(t *testing.T) {
	ifaces := []string{"lo"}
	if all, err := net.Interfaces(); err == nil {
		for _, ifi := range all {
			if ifi.Flags&net.FlagUp != 0 && ifi.Flags&net.FlagMulticast != 0 && ifi.Flags&net.FlagLoopback == 0 {
				ifaces = append(ifaces, ifi.Name)
			}
		}
	}
	for _, tc := range []struct {
		name   string
		group  string
		ifaces []string
	}{{"IPv4", "239.255.77.1", []string{"lo"}}, {"IPv6", "ff02::77:1", ifaces}} {
		t.Run(tc.name, func(t *testing.T) {
			for _, ifname := range tc.ifaces {
				if multicastOn(t, tc.group, ifname) {
					return
				}
			}
			t.Skipf("no interface routes %s multicast here (tried %v)", tc.name, tc.ifaces)
		})
	}
}

// multicastOn runs the multicast check on one interface; false means the
// interface cannot route the group's datagrams.
func multicastOn(t *testing.T, group, ifname string) bool {
	t.Helper()
	sys := newSystem(t, 2, nil)
	g := netip.MustParseAddr(group)
	if g.Is6() {
		g = g.WithZone(ifname)
	}
	join := []netio.SocketOption{netio.ReuseAddr(true), udp.MulticastJoin{Group: g.WithZone(""), Interface: ifname}}
	h1, ch1 := spawnProbe(sys, sys.Loops()[0])
	h2, ch2 := spawnProbe(sys, sys.Loops()[1])
	s1, a1 := bind(t, sys, h1, ch1, ap(g, 0), join...)
	s2, _ := bind(t, sys, h2, ch2, ap(g, a1.Port()), join...)

	hs, chs := spawnProbe(sys, sys.Loops()[0])
	udp.Manager(sys).Tell(udp.SimpleSender{Handler: hs, Options: []netio.SocketOption{
		udp.MulticastInterface(ifname), udp.MulticastLoopback(true), udp.MulticastHops(1)}})
	ready, _ := expect[udp.SimpleSenderReady](t, chs)
	dst := ap(g, a1.Port())
	ready.Socket.Tell(udp.Send{Data: []byte("to the group"), Target: dst, Ack: "sent"})
	switch ev, _ := expect[any](t, chs); m := ev.(type) {
	case string:
	case udp.CommandFailed:
		if errors.Is(m.Cause, syscall.ENETUNREACH) {
			t.Logf("multicast to %v on %s: %v", dst, ifname, m.Cause)
			return false
		}
		t.Fatal(m.Cause)
	default:
		t.Fatalf("got %T", m)
	}
	expectData(t, ch1, "to the group", netip.AddrPort{})
	expectData(t, ch2, "to the group", netip.AddrPort{})
	t.Logf("two members of %v on %s received the datagram", dst, ifname)
	s1.Tell(udp.Unbind{})
	s2.Tell(udp.Unbind{})
	expect[udp.Unbound](t, ch1)
	expect[udp.Unbound](t, ch2)
	return true
}

func TestOptions(t *testing.T) {
	lo4 := netip.MustParseAddr("127.0.0.1")
	t.Run("IPv6Only", func(t *testing.T) {
		sys := newSystem(t, 1, nil)
		h, ch := spawnProbe(sys, sys.Loops()[0])
		any6, any4 := netip.IPv6Unspecified(), netip.IPv4Unspecified()

		// A wildcard IPv6 socket carries IPv4 by default: the IPv4 port is
		// taken, and it receives from IPv4 senders, reported as plain IPv4.
		s6, a6 := bind(t, sys, h, ch, ap(any6, 0))
		udp.Manager(sys).Tell(udp.Bind{Handler: h, LocalAddr: ap(any4, a6.Port())})
		if f, _ := expect[udp.CommandFailed](t, ch); !errors.Is(f.Cause, syscall.EADDRINUSE) {
			t.Fatal(f.Cause)
		}
		hs, chs := spawnProbe(sys, sys.Loops()[0])
		ss, src := bind(t, sys, hs, chs, ap(lo4, 0))
		ss.Tell(udp.Send{Data: []byte("v4"), Target: ap(lo4, a6.Port())})
		expectData(t, ch, "v4", src)
		// Replying to that IPv4 address from the IPv6 socket works too.
		s6.Tell(udp.Send{Data: []byte("back"), Target: src})
		expectData(t, chs, "back", ap(lo4, a6.Port()))
		s6.Tell(udp.Unbind{})
		expect[udp.Unbound](t, ch)

		// IPv6Only(true) leaves the IPv4 port free.
		s6, a6 = bind(t, sys, h, ch, ap(any6, 0), udp.IPv6Only(true))
		s4, _ := bind(t, sys, h, ch, ap(any4, a6.Port()))
		s4.Tell(udp.Unbind{})
		expect[udp.Unbound](t, ch)
		s6.Tell(udp.Unbind{})
		expect[udp.Unbound](t, ch)
	})

	t.Run("Broadcast", func(t *testing.T) {
		sys := newSystem(t, 1, nil)
		hr, chr := spawnProbe(sys, sys.Loops()[0])
		_, a := bind(t, sys, hr, chr, ap(netip.IPv4Unspecified(), 0))
		bcast := ap(netip.MustParseAddr("127.255.255.255"), a.Port())
		h, ch := spawnProbe(sys, sys.Loops()[0])

		s, _ := bind(t, sys, h, ch, ap(lo4, 0))
		s.Tell(udp.Send{Data: []byte("no"), Target: bcast, Ack: "sent"})
		if f, _ := expect[udp.CommandFailed](t, ch); !errors.Is(f.Cause, syscall.EACCES) {
			t.Fatalf("without SO_BROADCAST: %v", f.Cause)
		}
		sb, src := bind(t, sys, h, ch, ap(lo4, 0), udp.Broadcast(true))
		sb.Tell(udp.Send{Data: []byte("yes"), Target: bcast, Ack: "sent"})
		expect[string](t, ch)
		expectData(t, chr, "yes", src)
	})

	t.Run("ReusePort", func(t *testing.T) {
		sys := newSystem(t, 1, nil)
		h, ch := spawnProbe(sys, sys.Loops()[0])
		_, a := bind(t, sys, h, ch, ap(lo4, 0), netio.ReusePort(true))
		bind(t, sys, h, ch, a, netio.ReusePort(true))
	})

	t.Run("Errors", func(t *testing.T) {
		sys := newSystem(t, 1, nil)
		h, ch := spawnProbe(sys, sys.Loops()[0])
		udp.Manager(sys).Tell(udp.Bind{Handler: h, LocalAddr: ap(lo4, 0), Options: []netio.SocketOption{
			udp.MulticastInterface("no-such-interface0")}})
		f, _ := expect[udp.CommandFailed](t, ch)
		if want := `udp: bind 127.0.0.1:0: udp: interface "no-such-interface0"`; len(f.Cause.Error()) < len(want) || f.Cause.Error()[:len(want)] != want {
			t.Fatalf("cause %q", f.Cause)
		}
		// An IPv4 socket cannot send to IPv6.
		s, _ := bind(t, sys, h, ch, ap(lo4, 0))
		s.Tell(udp.Send{Data: []byte("x"), Target: netip.MustParseAddrPort("[::1]:9")})
		if f, _ := expect[udp.CommandFailed](t, ch); !errors.Is(f.Cause, syscall.EAFNOSUPPORT) {
			t.Fatalf("cause %v", f.Cause)
		}
		s.Tell(udp.Send{Data: []byte("x")})
		if f, _ := expect[udp.CommandFailed](t, ch); !errors.Is(f.Cause, syscall.EDESTADDRREQ) {
			t.Fatalf("cause %v", f.Cause)
		}
	})
}

func TestMetrics(t *testing.T) {
	forEachFamily(t, func(t *testing.T, lo netip.Addr) {
		reg := prometheus.NewRegistry()
		sys := newSystem(t, 1, reg)
		l := sys.Loops()[0]
		hr, chr := spawnProbe(sys, l)
		udp.Manager(sys).Tell(udp.Bind{Handler: hr, LocalAddr: ap(lo, 0), Batching: udp.Batching{MaxDatagramSize: 100}})
		rb, _ := expect[udp.Bound](t, chr)
		hs, chs := spawnProbe(sys, l)
		ss, _ := bind(t, sys, hs, chs, ap(lo, 0))
		if n := gather(t, reg, "ioactor_udp_sockets_open"); n != 2 {
			t.Fatalf("open sockets %v", n)
		}
		ss.Tell(udp.Send{Data: make([]byte, 200), Target: rb.LocalAddr}) // truncated: dropped
		ss.Tell(udp.Send{Data: make([]byte, 100), Target: rb.LocalAddr})
		ss.Tell(udp.Send{Data: make([]byte, 50), Target: rb.LocalAddr})
		for _, want := range []int{100, 50} {
			if r, _ := expect[udp.Received](t, chr); len(r.Data()) != want {
				t.Fatalf("received %d bytes; want %d", len(r.Data()), want)
			}
		}
		ss.Tell(udp.Unbind{})
		expect[udp.Unbound](t, chs)
		for name, want := range map[string]float64{
			"ioactor_udp_datagrams_sent_total":      3,
			"ioactor_udp_sent_bytes_total":          350,
			"ioactor_udp_datagrams_received_total":  2,
			"ioactor_udp_received_bytes_total":      150,
			"ioactor_udp_datagrams_truncated_total": 1,
			"ioactor_udp_kernel_drops_total":        0,
			"ioactor_udp_sockets_open":              1,
			"ioactor_udp_sockets_opened_total":      2,
		} {
			if got := gather(t, reg, name); got != want {
				t.Errorf("%s = %v; want %v", name, got, want)
			}
		}
		if got := gather(t, reg, "ioactor_udp_syscalls_total", "op", "recvmmsg"); got < 1 {
			t.Errorf("recvmmsg calls %v", got)
		}
	})
}
