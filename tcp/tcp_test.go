package tcp_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

var loopback = netip.MustParseAddrPort("127.0.0.1:0")

func newSystem(t *testing.T) *netio.System {
	t.Helper()
	return newSystemWith(t, netio.Config{Loops: 2})
}

// newSystemWith starts a system for one test and shuts it down after,
// checking that the test leaks nothing.
func newSystemWith(t *testing.T, cfg netio.Config) *netio.System {
	t.Helper()
	leakcheck.Check(t)
	sys, err := netio.NewSystem(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sys.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return sys
}

// probe is a handler that reports every message to the test; Received data
// is copied, since it is only valid during Receive.
type probe struct {
	ch  chan any
	ref netio.Ref
}

func newProbe(sys *netio.System) *probe {
	p := &probe{ch: make(chan any, 4096)}
	p.ref = sys.Spawn(p)
	return p
}

func (p *probe) Receive(ctx *netio.Context, msg any) {
	if r, ok := msg.(tcp.Received); ok {
		msg = tcp.NewReceived(bytes.Clone(r.Data()))
	}
	p.ch <- msg
}

func (p *probe) next(t *testing.T) any {
	t.Helper()
	select {
	case m := <-p.ch:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("timed out waiting for an event")
		return nil
	}
}

// expect returns the next event, which must be a T.
func expect[T any](t *testing.T, p *probe) T {
	t.Helper()
	m := p.next(t)
	v, ok := m.(T)
	if !ok {
		var zero T
		t.Fatalf("got %T %+v, want %T", m, m, zero)
	}
	return v
}

// quiet fails if an event arrives within d.
func (p *probe) quiet(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case m := <-p.ch:
		t.Fatalf("unexpected event %T %+v", m, m)
	case <-time.After(d):
	}
}

// readUntilClosed collects Received data until a close event.
func (p *probe) readUntilClosed(t *testing.T) ([]byte, tcp.ConnectionClosed) {
	t.Helper()
	var got []byte
	for {
		switch m := p.next(t).(type) {
		case tcp.Received:
			got = append(got, m.Data()...)
		case tcp.ConnectionClosed:
			return got, m
		default:
			t.Fatalf("unexpected %T %+v", m, m)
		}
	}
}

func bind(t *testing.T, sys *netio.System, p *probe, b tcp.Bind) tcp.Bound {
	t.Helper()
	b.Handler = p.ref
	if !b.LocalAddr.IsValid() {
		b.LocalAddr = loopback
	}
	tcp.Manager(sys).Tell(b)
	return expect[tcp.Bound](t, p)
}

// serverConn binds, dials with the net package, and registers p as the
// handler of the accepted connection.
func serverConn(t *testing.T, sys *netio.System, p *probe, reg tcp.Register) (net.Conn, netio.Ref) {
	t.Helper()
	bound := bind(t, sys, p, tcp.Bind{})
	peer, err := net.Dial("tcp", bound.LocalAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	c := expect[tcp.Connected](t, p)
	if c.RemoteAddr.String() != peer.LocalAddr().String() {
		t.Fatalf("Connected.RemoteAddr = %v, want %v", c.RemoteAddr, peer.LocalAddr())
	}
	reg.Handler = p.ref
	c.Socket.Tell(reg)
	bound.Socket.Tell(tcp.Unbind{})
	expect[tcp.Unbound](t, p)
	return peer, c.Socket
}

func TestBindResolvesPortAndEchoes(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	bound := bind(t, sys, p, tcp.Bind{})
	if bound.LocalAddr.Port() == 0 || bound.Socket.IsZero() {
		t.Fatalf("Bound = %+v: port 0 not resolved", bound)
	}
	peer, conn := serverConn(t, sys, p, tcp.Register{})
	peer.Write([]byte("hello"))
	if r := expect[tcp.Received](t, p); string(r.Data()) != "hello" {
		t.Fatalf("Received %q", r.Data())
	}
	conn.Tell(tcp.Write{Data: []byte("world"), Ack: "ack-1"})
	if a := p.next(t); a != "ack-1" {
		t.Fatalf("got %v, want the ack", a)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "world" {
		t.Fatalf("peer read %q, %v", buf, err)
	}
}

func TestBindConflictFails(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := tcp.Bind{Handler: p.ref, LocalAddr: netip.MustParseAddrPort(ln.Addr().String())}
	tcp.Manager(sys).Tell(cmd)
	f := expect[tcp.CommandFailed](t, p)
	if !errors.Is(f.Cause, syscall.EADDRINUSE) || !reflect.DeepEqual(f.Cmd, cmd) {
		t.Fatalf("CommandFailed = %+v, want EADDRINUSE for the Bind", f)
	}
}

func TestConnectRefusedFails(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	tcp.Manager(sys).Tell(tcp.Connect{Handler: p.ref, RemoteAddr: addr})
	if f := expect[tcp.CommandFailed](t, p); !errors.Is(f.Cause, syscall.ECONNREFUSED) {
		t.Fatalf("cause = %v, want ECONNREFUSED", f.Cause)
	}
}

func TestConnectTimeout(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	// A listener whose accept queue is full drops further SYNs: the
	// handshake never completes.
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*syscall.SockaddrInet4).Port))
	for range 2 { // fill the queue
		c, err := net.DialTimeout("tcp", addr.String(), time.Second)
		if err == nil {
			defer c.Close()
		}
	}
	tcp.Manager(sys).Tell(tcp.Connect{Handler: p.ref, RemoteAddr: addr, Timeout: 200 * time.Millisecond})
	if f := expect[tcp.CommandFailed](t, p); !errors.Is(f.Cause, tcp.ErrConnectTimeout) {
		t.Fatalf("cause = %v, want a timeout", f.Cause)
	}
}

func TestConnectWithLocalAddrAndPullMode(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	local := netip.MustParseAddrPort("127.0.0.2:0")
	tcp.Manager(sys).Tell(tcp.Connect{Handler: p.ref, RemoteAddr: netip.MustParseAddrPort(ln.Addr().String()), LocalAddr: local, PullMode: true})
	c := expect[tcp.Connected](t, p)
	if c.LocalAddr.Addr() != local.Addr() {
		t.Fatalf("LocalAddr = %v, want %v", c.LocalAddr, local.Addr())
	}
	peer, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c.Socket.Tell(tcp.Register{Handler: p.ref})
	peer.Write([]byte("one"))
	p.quiet(t, 50*time.Millisecond) // pull mode: nothing until ResumeReading
	c.Socket.Tell(tcp.ResumeReading{})
	if r := expect[tcp.Received](t, p); string(r.Data()) != "one" {
		t.Fatalf("got %q", r.Data())
	}
	peer.Write([]byte("two"))
	p.quiet(t, 50*time.Millisecond)
	c.Socket.Tell(tcp.ResumeReading{})
	if r := expect[tcp.Received](t, p); string(r.Data()) != "two" {
		t.Fatalf("got %q", r.Data())
	}
	c.Socket.Tell(tcp.Close{})
	expect[tcp.Closed](t, p)
}

func TestRegisterTimeoutClosesTheSocket(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	bound := bind(t, sys, p, tcp.Bind{RegisterTimeout: 50 * time.Millisecond})
	peer, err := net.Dial("tcp", bound.LocalAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c := expect[tcp.Connected](t, p)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer read %d, %v; want EOF after the register timeout", n, err)
	}
	<-c.Socket.Done()
}

func TestHalfCloseKeepOpen(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{KeepOpenOnPeerClosed: true})
	peer.Write([]byte("request"))
	peer.(*net.TCPConn).CloseWrite()
	if r := expect[tcp.Received](t, p); string(r.Data()) != "request" {
		t.Fatalf("got %q", r.Data())
	}
	expect[tcp.PeerClosed](t, p)
	conn.Tell(tcp.Write{Data: []byte("response after FIN"), Ack: 1})
	if p.next(t) != 1 {
		t.Fatal("no ack")
	}
	conn.Tell(tcp.Close{})
	expect[tcp.Closed](t, p)
	got, err := io.ReadAll(peer)
	if err != nil || string(got) != "response after FIN" {
		t.Fatalf("peer read %q, %v", got, err)
	}
}

func TestPeerCloseClosesWithoutKeepOpen(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{})
	peer.(*net.TCPConn).CloseWrite()
	expect[tcp.PeerClosed](t, p)
	<-conn.Done()
	if got, err := io.ReadAll(peer); err != nil || len(got) != 0 {
		t.Fatalf("peer read %q, %v; want a clean EOF", got, err)
	}
}

func TestConfirmedCloseWaitsForPeer(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{})
	conn.Tell(tcp.Write{Data: []byte("last words")})
	conn.Tell(tcp.ConfirmedClose{})
	got, err := io.ReadAll(peer) // ends at our FIN
	if err != nil || string(got) != "last words" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	p.quiet(t, 100*time.Millisecond) // not confirmed before the peer closes
	peer.Write([]byte("bye"))        // the peer may still send
	if r := expect[tcp.Received](t, p); string(r.Data()) != "bye" {
		t.Fatalf("got %q", r.Data())
	}
	peer.Close()
	expect[tcp.ConfirmedClosed](t, p)
}

func TestAbortResetsThePeer(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{})
	conn.Tell(tcp.Abort{})
	expect[tcp.Aborted](t, p)
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("peer read error %v, want ECONNRESET", err)
	}
}

func TestErrorClosedCarriesTheCause(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, _ := serverConn(t, sys, p, tcp.Register{})
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close() // RST
	ec := expect[tcp.ErrorClosed](t, p)
	var op *net.OpError
	if !errors.Is(ec.Cause, syscall.ECONNRESET) || !errors.As(ec.Cause, &op) || op.Op != "read" {
		t.Fatalf("cause = %v, want a read OpError wrapping ECONNRESET", ec.Cause)
	}
}

func TestWriteWhilePendingIsNacked(t *testing.T) {
	for _, resume := range []bool{false, true} {
		t.Run(map[bool]string{false: "nack", true: "nack-with-resume"}[resume], func(t *testing.T) {
			sys := newSystem(t)
			p := newProbe(sys)
			peer, conn := serverConn(t, sys, p, tcp.Register{UseResumeWriting: resume})
			big := make([]byte, 32<<20) // more than the kernel buffers: stays pending
			first := tcp.Write{Data: big, Ack: "big"}
			second := tcp.Write{Data: []byte("x"), Ack: "x"}
			conn.Tell(first)
			conn.Tell(second)
			f := expect[tcp.CommandFailed](t, p)
			if !errors.Is(f.Cause, tcp.ErrWritePending) || !reflect.DeepEqual(f.Cmd, second) {
				t.Fatalf("CommandFailed = %v", f)
			}
			conn.Tell(tcp.ResumeWriting{})
			done := make(chan error, 1)
			go func() {
				_, err := io.CopyN(io.Discard, peer, int64(len(big)))
				done <- err
			}()
			if a := p.next(t); a != "big" {
				t.Fatalf("got %v, want the big write's ack", a)
			}
			expect[tcp.WritingResumed](t, p)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			conn.Tell(second)
			if a := p.next(t); a != "x" {
				t.Fatalf("got %v after WritingResumed, want the ack", a)
			}
		})
	}
}

func TestResumeWritingSuspendsLaterWrites(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{UseResumeWriting: true})
	conn.Tell(tcp.Write{Data: make([]byte, 32<<20), Ack: "big"})
	conn.Tell(tcp.Write{Data: []byte("a")})
	expect[tcp.CommandFailed](t, p)
	go io.Copy(io.Discard, peer)
	if a := p.next(t); a != "big" {
		t.Fatalf("got %v", a)
	}
	// The big write completed, yet writing stays suspended until ResumeWriting.
	conn.Tell(tcp.Write{Data: []byte("b")})
	if f := expect[tcp.CommandFailed](t, p); !errors.Is(f.Cause, tcp.ErrWritePending) {
		t.Fatalf("cause %v", f.Cause)
	}
	conn.Tell(tcp.ResumeWriting{})
	expect[tcp.WritingResumed](t, p)
	conn.Tell(tcp.Write{Data: []byte("c"), Ack: "c"})
	if a := p.next(t); a != "c" {
		t.Fatalf("got %v", a)
	}
}

// ackChain writes the next chunk from inside the handler as soon as the ack
// of the previous one arrives: the ack must never come before the pending
// write is cleared (Akka's bug: the next write was refused).
type ackChain struct {
	conn   netio.Ref
	left   int
	report chan any
}

func (a *ackChain) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case int:
		if a.left == 0 {
			a.report <- "done"
			return
		}
		a.left--
		ctx.Tell(a.conn, tcp.Write{Data: []byte{byte(m)}, Ack: m + 1})
	case tcp.CommandFailed:
		a.report <- m
	}
}

func TestAckThenNextWriteIsAccepted(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{})
	chain := &ackChain{conn: conn, left: 10000, report: make(chan any, 1)}
	ref := sys.SpawnOn(conn.Loop(), chain)
	go io.Copy(io.Discard, peer)
	ref.Tell(0)
	select {
	case r := <-chain.report:
		if r != "done" {
			t.Fatalf("write after ack refused: %+v", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("timeout")
	}
}

func TestCompoundWriteAndWriteFile(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{})
	path := filepath.Join(t.TempDir(), "f")
	content := make([]byte, 3<<20)
	rand.Read(content)
	os.WriteFile(path, content, 0o600)
	conn.Tell(tcp.CompoundWrite{
		tcp.Write{Data: []byte("head:"), Ack: "a1"},
		tcp.Write{Data: []byte("more:")},
		tcp.WriteFile{Path: path, Offset: 10, Count: -1, Ack: "a2"},
		tcp.Write{Data: nil, Ack: "a3"}, // an extra ack after the file
		tcp.Write{Data: []byte(":tail"), Ack: "a4"},
	})
	want := append(append([]byte("head:more:"), content[10:]...), ":tail"...)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("peer read %d bytes, err %v, equal %v", len(got), err, bytes.Equal(got, want))
	}
	for _, a := range []string{"a1", "a2", "a3", "a4"} {
		if m := p.next(t); m != a {
			t.Fatalf("got %v, want %v", m, a)
		}
	}
	conn.Tell(tcp.WriteFile{Path: filepath.Join(t.TempDir(), "missing")})
	if f := expect[tcp.CommandFailed](t, p); !errors.Is(f.Cause, os.ErrNotExist) {
		t.Fatalf("cause %v", f.Cause)
	}
}

// Ack means "in the kernel": with a reader that never reads, a write larger
// than the kernel's buffers must not be acknowledged.
func TestAckOnlyOnceInTheKernel(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{})
	data := make([]byte, 16<<20)
	conn.Tell(tcp.Write{Data: data, Ack: "ack"})
	p.quiet(t, 300*time.Millisecond)
	go io.Copy(io.Discard, peer)
	if m := p.next(t); m != "ack" {
		t.Fatalf("got %v", m)
	}
}

func TestCloseFlushesPendingWrite(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{})
	data := make([]byte, 8<<20)
	rand.Read(data)
	conn.Tell(tcp.Write{Data: data})
	conn.Tell(tcp.Close{})
	var got bytes.Buffer
	buf := make([]byte, 64<<10)
	for { // a slow reader
		n, err := peer.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			break
		}
		if got.Len()%(1<<20) < 64<<10 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("peer got %d of %d bytes", got.Len(), len(data))
	}
	expect[tcp.Closed](t, p)
}

func TestSuspendReadingOrderingWithRegister(t *testing.T) {
	for _, order := range []string{"suspend-before-register", "register-before-suspend"} {
		t.Run(order, func(t *testing.T) {
			sys := newSystem(t)
			p := newProbe(sys)
			bound := bind(t, sys, p, tcp.Bind{})
			peer, err := net.Dial("tcp", bound.LocalAddr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer peer.Close()
			c := expect[tcp.Connected](t, p)
			if order == "suspend-before-register" {
				c.Socket.Tell(tcp.SuspendReading{})
				c.Socket.Tell(tcp.Register{Handler: p.ref})
			} else {
				c.Socket.Tell(tcp.Register{Handler: p.ref})
				c.Socket.Tell(tcp.SuspendReading{})
			}
			time.Sleep(20 * time.Millisecond)
			peer.Write([]byte("held"))
			p.quiet(t, 100*time.Millisecond)
			c.Socket.Tell(tcp.ResumeReading{})
			if r := expect[tcp.Received](t, p); string(r.Data()) != "held" {
				t.Fatalf("got %q", r.Data())
			}
		})
	}
}

func TestResumeReadingBeforeRegisterInPullMode(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	bound := bind(t, sys, p, tcp.Bind{PullMode: true})
	bound.Socket.Tell(tcp.ResumeAccepting{BatchSize: 1})
	peer, err := net.Dial("tcp", bound.LocalAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peer.Write([]byte("early"))
	c := expect[tcp.Connected](t, p)
	c.Socket.Tell(tcp.ResumeReading{})
	c.Socket.Tell(tcp.Register{Handler: p.ref})
	if r := expect[tcp.Received](t, p); string(r.Data()) != "early" {
		t.Fatalf("got %q", r.Data())
	}
}

func TestPullModeAcceptingAndUnbind(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	bound := bind(t, sys, p, tcp.Bind{PullMode: true, Backlog: 16})
	var peers []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", bound.LocalAddr.String()) // the kernel completes the handshake
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		peers = append(peers, c)
	}
	p.quiet(t, 100*time.Millisecond) // accepting starts suspended
	bound.Socket.Tell(tcp.ResumeAccepting{BatchSize: 2})
	c1 := expect[tcp.Connected](t, p)
	expect[tcp.Connected](t, p)
	p.quiet(t, 100*time.Millisecond) // batch of 2 used up
	bound.Socket.Tell(tcp.ResumeAccepting{BatchSize: 1})
	expect[tcp.Connected](t, p)
	// Unbind closes the listener, not the live connections.
	bound.Socket.Tell(tcp.Unbind{})
	expect[tcp.Unbound](t, p)
	if _, err := net.DialTimeout("tcp", bound.LocalAddr.String(), time.Second); err == nil {
		t.Fatal("dial succeeded after Unbind")
	}
	c1.Socket.Tell(tcp.Register{Handler: p.ref})
	c1.Socket.Tell(tcp.Write{Data: []byte("still here"), Ack: "ok"})
	if p.next(t) != "ok" {
		t.Fatal("no ack on a connection after Unbind")
	}
	_ = peers
}

func TestHandlerDeathClosesConnection(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	bound := bind(t, sys, p, tcp.Bind{})
	peer, err := net.Dial("tcp", bound.LocalAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c := expect[tcp.Connected](t, p)
	h := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {}))
	c.Socket.Tell(tcp.Register{Handler: h})
	time.Sleep(20 * time.Millisecond)
	h.Stop()
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer read %v, want EOF after the handler died", err)
	}
}

// heapGrowth samples the heap while f runs and returns the largest growth.
func heapGrowth(f func()) uint64 {
	runtime.GC()
	var base, m runtime.MemStats
	runtime.ReadMemStats(&base)
	stop := make(chan struct{})
	var peak uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapAlloc)
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	<-done
	if peak < base.HeapAlloc {
		return 0
	}
	return peak - base.HeapAlloc
}

// pushUntilStalled writes from a goroutine as fast as it can for d and
// returns how much the kernel took.
func pushUntilStalled(peer net.Conn, d time.Duration) int64 {
	chunk := make([]byte, 256<<10)
	var sent int64
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && sent < 1<<30 {
		peer.SetWriteDeadline(deadline)
		n, err := peer.Write(chunk)
		sent += int64(n)
		if err != nil {
			break
		}
	}
	return sent
}

func TestSuspendedReaderStallsTheWriter(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{})
	conn.Tell(tcp.SuspendReading{})
	time.Sleep(20 * time.Millisecond)
	var sent int64
	growth := heapGrowth(func() { sent = pushUntilStalled(peer, 2*time.Second) })
	if sent >= 1<<30 {
		t.Fatal("the writer pushed 1 GiB into a suspended reader")
	}
	if growth > 8<<20 {
		t.Fatalf("heap grew by %d bytes while the reader was suspended", growth)
	}
	t.Logf("writer stalled after %d KiB; heap growth %d KiB", sent>>10, growth>>10)
	conn.Tell(tcp.ResumeReading{})
	var got int64
	for got < sent {
		got += int64(len(expect[tcp.Received](t, p).Data()))
	}
}

// slowPuller asks for one chunk per 100 ms.
type slowPuller struct {
	conn netio.Ref
	got  chan int
}

func (s *slowPuller) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case tcp.Received:
		s.got <- len(m.Data())
		ctx.After(100*time.Millisecond, tcp.ResumeReading{})
	case tcp.ResumeReading:
		ctx.Tell(s.conn, m)
	}
}

func TestPullReaderStallsTheWriter(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	bound := bind(t, sys, p, tcp.Bind{PullMode: true})
	bound.Socket.Tell(tcp.ResumeAccepting{BatchSize: 1})
	peer, err := net.Dial("tcp", bound.LocalAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c := expect[tcp.Connected](t, p)
	puller := &slowPuller{conn: c.Socket, got: make(chan int, 1000)}
	h := sys.SpawnOn(c.Socket.Loop(), puller)
	c.Socket.Tell(tcp.Register{Handler: h})
	c.Socket.Tell(tcp.ResumeReading{})
	var sent int64
	growth := heapGrowth(func() { sent = pushUntilStalled(peer, 2*time.Second) })
	if sent >= 1<<30 || growth > 8<<20 {
		t.Fatalf("sent %d bytes, heap grew %d bytes", sent, growth)
	}
	chunks := len(puller.got)
	if chunks > 25 {
		t.Fatalf("%d chunks in 2 s: the puller was not paced", chunks)
	}
	t.Logf("writer stalled after %d KiB; %d chunks pulled; heap growth %d KiB", sent>>10, chunks, growth>>10)
}

// A hostile crowd: connections opened and reset while data flows; the server
// keeps serving a well-behaved client and leaks nothing.
func TestResetStorm(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	echo := netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		if r, ok := msg.(tcp.Received); ok {
			ctx.Reply(tcp.Write{Data: bytes.Clone(r.Data())})
		}
	})
	acceptor := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch m := msg.(type) {
		case tcp.Bound:
			p.ch <- m
		case tcp.Connected:
			h := ctx.SpawnOn(m.Socket.Loop(), echo)
			ctx.Tell(m.Socket, tcp.Register{Handler: h})
		}
	}))
	tcp.Manager(sys).Tell(tcp.Bind{Handler: acceptor, LocalAddr: loopback})
	addr := expect[tcp.Bound](t, p).LocalAddr.String()
	good, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	const storm = 2000
	errs := make(chan error, 8)
	for w := range 8 {
		go func() {
			for i := range storm / 8 {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					errs <- err
					return
				}
				c.Write(bytes.Repeat([]byte{byte(w)}, 1000+i))
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}
			errs <- nil
		}()
	}
	msg := []byte("ping")
	buf := make([]byte, 4)
	for range 8 {
		good.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := good.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(good, buf); err != nil || !bytes.Equal(buf, msg) {
			t.Fatalf("echo during the storm: %q, %v", buf, err)
		}
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestIPv6AndReusePort(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	opts := []netio.SocketOption{netio.ReusePort(true)}
	b1 := bind(t, sys, p, tcp.Bind{LocalAddr: netip.MustParseAddrPort("[::1]:0"), Options: opts})
	// SO_REUSEPORT lets a second listener share the port.
	b2 := bind(t, sys, p, tcp.Bind{LocalAddr: b1.LocalAddr, Options: opts})
	if b2.LocalAddr != b1.LocalAddr {
		t.Fatalf("second listener on %v, want %v", b2.LocalAddr, b1.LocalAddr)
	}
	peer, err := net.Dial("tcp6", b1.LocalAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	c := expect[tcp.Connected](t, p)
	if !c.RemoteAddr.Addr().Is6() {
		t.Fatalf("remote %v is not IPv6", c.RemoteAddr)
	}
	c.Socket.Tell(tcp.Register{Handler: p.ref})
	peer.Write([]byte("v6"))
	if r := expect[tcp.Received](t, p); string(r.Data()) != "v6" {
		t.Fatalf("got %q", r.Data())
	}
	// Without SO_REUSEPORT the port is taken.
	tcp.Manager(sys).Tell(tcp.Bind{Handler: p.ref, LocalAddr: b1.LocalAddr})
	if f := expect[tcp.CommandFailed](t, p); !errors.Is(f.Cause, syscall.EADDRINUSE) {
		t.Fatalf("cause %v", f.Cause)
	}
}

// Data and FIN arriving together: the short read must not hide the FIN.
func TestDataAndFINTogether(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	bound := bind(t, sys, p, tcp.Bind{})
	for i := range 20 {
		peer, err := net.Dial("tcp", bound.LocalAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		peer.Write([]byte("req"))
		peer.(*net.TCPConn).CloseWrite()
		time.Sleep(time.Millisecond) // both are queued before Register
		c := expect[tcp.Connected](t, p)
		c.Socket.Tell(tcp.Register{Handler: p.ref, KeepOpenOnPeerClosed: i%2 == 0})
		got, closed := p.readUntilClosed(t)
		if string(got) != "req" {
			t.Fatalf("got %q", got)
		}
		if _, ok := closed.(tcp.PeerClosed); !ok {
			t.Fatalf("got %T, want PeerClosed", closed)
		}
		if i%2 == 0 {
			c.Socket.Tell(tcp.Close{})
			expect[tcp.Closed](t, p)
		}
		peer.Close()
	}
}

// transientWriter sends a transient write, then scribbles over its buffer
// in a later loop turn, as the loop does with its read buffer.
type transientWriter struct {
	conn netio.Ref
	buf  []byte
	acks chan any
}

type scribble struct{}
type startWriting struct{}

func (w *transientWriter) Receive(ctx *netio.Context, msg any) {
	switch msg.(type) {
	case startWriting:
		ctx.Tell(w.conn, &tcp.Write{Data: w.buf, Ack: "ack", Transient: true})
		ctx.After(0, scribble{})
	case scribble:
		clear(w.buf)
	default:
		w.acks <- msg
	}
}

func TestTransientWriteCopiesWhatTheKernelRefuses(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{})
	want := make([]byte, 16<<20) // far more than the socket buffers take at once
	rand.Read(want)
	w := &transientWriter{conn: conn, buf: bytes.Clone(want), acks: make(chan any, 1)}
	ref := sys.SpawnOn(conn.Loop(), w)
	ref.Tell(startWriting{})
	time.Sleep(50 * time.Millisecond) // the scribble has happened
	got := make([]byte, len(want))
	if _, err := io.ReadFull(peer, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the peer received bytes overwritten after the write was accepted")
	}
	if a := <-w.acks; a != "ack" {
		t.Fatalf("got %v", a)
	}
}
