package raft

import (
	"net"
	"net/netip"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

// acceptedFrom dials target (a plain listener) from tr with one RPC and
// returns the IP the listener saw the connection come from.
func acceptedFrom(t *testing.T, tr *Transport, ln net.Listener) netip.Addr {
	t.Helper()
	got := make(chan netip.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(got)
			return
		}
		got <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		c.Close()
	}()
	// The listener never answers: the call fails, after the connection
	// was accepted.
	vote(tr, hraft.ServerAddress(ln.Addr().String()))
	select {
	case ip, ok := <-got:
		if !ok {
			t.Fatal("accept failed")
		}
		return ip
	case <-time.After(5 * time.Second):
		t.Fatal("the transport never connected")
	}
	return netip.Addr{}
}

// kernelSource is the source IP the kernel picks for a connection to ln.
func kernelSource(t *testing.T, ln net.Listener) netip.Addr {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	return c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
}

// A transport bound to a specific IP dials from that IP, so that the peer
// sees the address the node listens on (and a filter on that address cuts
// both directions); an unspecified bind leaves the source to the kernel
// (for 127.0.0.0/8, 127.0.0.1).
func TestOutgoingConnectionsUseTheBoundIP(t *testing.T) {
	leakcheck.Check(t)
	ln, err := net.Listen("tcp", "127.0.0.4:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	kernel := kernelSource(t, ln)
	for _, bind := range []string{"127.0.0.2:0", "127.0.0.3:0"} {
		want := netip.MustParseAddrPort(bind).Addr()
		if want == kernel {
			t.Fatalf("the kernel's own choice is %v: the test cannot tell", kernel)
		}
		tr := newOurs(t, Config{BindAddr: bind, Timeout: 300 * time.Millisecond})
		if got := acceptedFrom(t, tr, ln); got != want {
			t.Errorf("transport bound to %s dialed from %v, want %v", bind, got, want)
		}
	}
	unspecified := newOurs(t, Config{BindAddr: "0.0.0.0:0", Advertise: "127.0.0.5:1", Timeout: 300 * time.Millisecond})
	if got := acceptedFrom(t, unspecified, ln); got != kernel {
		t.Errorf("transport bound to 0.0.0.0 dialed from %v, want the kernel's choice %v", got, kernel)
	}
	// IPv6, where the host has it.
	ln6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Logf("no IPv6 loopback (%v): IPv6 not checked", err)
		return
	}
	defer ln6.Close()
	tr6 := newOurs(t, Config{BindAddr: "[::1]:0", Timeout: 300 * time.Millisecond})
	if got, want := acceptedFrom(t, tr6, ln6), netip.MustParseAddr("::1"); got != want {
		t.Errorf("transport bound to [::1] dialed from %v, want %v", got, want)
	}
	// A peer of the other family is dialed without the bound IP.
	if got := acceptedFrom(t, tr6, ln); got != kernel {
		t.Errorf("transport bound to [::1] dialed an IPv4 peer from %v, want the kernel's choice %v", got, kernel)
	}
}
