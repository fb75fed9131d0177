package backpressure_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/ioactor/ioactor/backpressure"
	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

func newSystem(t *testing.T) *netio.System {
	t.Helper()
	leakcheck.Check(t)
	sys, err := netio.NewSystem(netio.Config{Loops: 2})
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

// serve binds an actor running server on loopback and returns its address.
func serve(t *testing.T, sys *netio.System, server netio.Actor, pull bool) string {
	t.Helper()
	ref := sys.Spawn(server)
	bound := make(chan string, 1)
	// Wrap OnBound of an EchoServer, or read Bound through a forwarder.
	if es, ok := server.(*backpressure.EchoServer); ok {
		es.OnBound = func(b tcp.Bound, err error) {
			if err != nil {
				t.Error(err)
			}
			bound <- b.LocalAddr.String()
		}
	}
	tcp.Manager(sys).Tell(tcp.Bind{Handler: ref, LocalAddr: netipLoopback, PullMode: pull})
	select {
	case a := <-bound:
		return a
	case <-time.After(10 * time.Second):
		t.Fatal("no Bound")
		return ""
	}
}

// stream is a deterministic pseudo-random byte source.
func stream(seed uint64) io.Reader {
	return rand.NewChaCha8([32]byte{byte(seed)})
}

// echoRoundTrip writes n bytes and reads the echo, throttling the reader
// when slow, and compares SHA-256 digests.
func echoRoundTrip(t *testing.T, addr string, n int64, slow bool) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sent := sha256.New()
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, io.TeeReader(io.LimitReader(stream(uint64(n)), n), sent))
		c.(*net.TCPConn).CloseWrite()
		werr <- err
	}()
	got := sha256.New()
	var r io.Reader = c
	if slow {
		r = &slowReader{r: c}
	}
	c.SetReadDeadline(time.Now().Add(90 * time.Second))
	m, err := io.Copy(got, r)
	if err != nil {
		t.Fatalf("read after %d bytes: %v", m, err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if m != n || !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		t.Fatalf("echo: %d of %d bytes, digests equal: %v", m, n, bytes.Equal(sent.Sum(nil), got.Sum(nil)))
	}
}

// slowReader reads in small pieces with pauses, so the echo's writes block.
type slowReader struct {
	r io.Reader
	n int
}

func (s *slowReader) Read(p []byte) (int, error) {
	s.n++
	if s.n%64 == 0 {
		time.Sleep(2 * time.Millisecond)
	}
	return s.r.Read(p[:min(len(p), 16<<10)])
}

func TestEchoFlowsDeliverEveryByteInOrder(t *testing.T) {
	for _, flow := range []backpressure.Flow{backpressure.FlowAck, backpressure.FlowNack, backpressure.FlowPull} {
		t.Run(string(flow), func(t *testing.T) {
			sys := newSystem(t)
			addr := serve(t, sys, &backpressure.EchoServer{Flow: flow}, flow == backpressure.FlowPull)
			echoRoundTrip(t, addr, 16<<20, true)
		})
	}
}

// nackProbe is the NACK echo with its writer visible to the test.
type nackProbe struct {
	conn    netio.Ref
	w       *backpressure.NackWriter
	closing bool
	resumes chan int
}

func (h *nackProbe) Receive(ctx *netio.Context, msg any) {
	if h.w.Handle(ctx, msg) {
		if h.closing && h.w.Idle() {
			ctx.Tell(h.conn, tcp.Close{})
		}
		return
	}
	switch m := msg.(type) {
	case tcp.Received:
		if err := h.w.Write(ctx, m.Data()); err != nil {
			panic(err)
		}
	case tcp.PeerClosed:
		h.closing = true
		if h.w.Idle() {
			ctx.Tell(h.conn, tcp.Close{})
		}
	case tcp.ConnectionClosed:
		h.resumes <- h.w.Resumes()
		ctx.Stop()
	}
}

type nackServer struct{ resumes chan int }

func (s *nackServer) Receive(ctx *netio.Context, msg any) {
	if c, ok := msg.(tcp.Connected); ok {
		h := &nackProbe{conn: c.Socket, w: backpressure.NewNackWriter(c.Socket, backpressure.Watermarks{}), resumes: s.resumes}
		ref := ctx.SpawnOn(c.Socket.Loop(), h)
		ctx.Tell(c.Socket, tcp.Register{Handler: ref, KeepOpenOnPeerClosed: true, UseResumeWriting: true})
	}
}

// The NACK-with-resume flow, pushed through a slow reader, must NACK and
// resume many times and still deliver a 256 MiB stream exactly once, in order.
func TestNackResumeDelivers256MiB(t *testing.T) {
	n := int64(256 << 20)
	if testing.Short() {
		n = 32 << 20
	}
	sys := newSystem(t)
	srv := &nackServer{resumes: make(chan int, 1)}
	ref := sys.Spawn(srv)
	bound := make(chan tcp.Bound, 1)
	fwd := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		if b, ok := msg.(tcp.Bound); ok {
			bound <- b
			return
		}
		ctx.Forward(ref, msg)
	}))
	tcp.Manager(sys).Tell(tcp.Bind{Handler: fwd, LocalAddr: netipLoopback})
	b := <-bound
	echoRoundTrip(t, b.LocalAddr.String(), n, true)
	if r := <-srv.resumes; r == 0 {
		t.Fatal("the writer was never NACKed: the test did not exercise resume")
	} else {
		t.Logf("%d NACK/resume cycles", r)
	}
}

// A client that writes and never reads: the echo handler buffers up to the
// high watermark, suspends reading, and memory stays bounded.
func TestEchoSuspendsAgainstANonReadingClient(t *testing.T) {
	wm := backpressure.Watermarks{Low: 256 << 10, High: 1 << 20, Max: 4 << 20}
	for _, flow := range []backpressure.Flow{backpressure.FlowAck, backpressure.FlowNack} {
		t.Run(string(flow), func(t *testing.T) {
			sys := newSystem(t)
			addr := serve(t, sys, &backpressure.EchoServer{Flow: flow, Watermarks: wm}, false)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			chunk := make([]byte, 256<<10)
			var sent int64
			deadline := time.Now().Add(2 * time.Second)
			c.SetWriteDeadline(deadline)
			for sent < 1<<30 {
				n, err := c.Write(chunk)
				sent += int64(n)
				if err != nil {
					break
				}
			}
			runtime.ReadMemStats(&after)
			if sent >= 1<<30 {
				t.Fatal("the client pushed 1 GiB: no back-pressure")
			}
			growth := int64(after.HeapAlloc) - int64(before.HeapAlloc)
			if limit := int64(wm.Max) + 4<<20; growth > limit {
				t.Fatalf("heap grew %d bytes, limit %d", growth, limit)
			}
			// The connection is alive (not dropped for overrun): it echoes
			// what it buffered once the client reads.
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, make([]byte, 1<<20)); err != nil {
				t.Fatalf("read the echo back: %v", err)
			}
			t.Logf("client stalled after %d KiB; heap growth %d KiB", sent>>10, growth>>10)
		})
	}
}

var netipLoopback = netip.MustParseAddrPort("127.0.0.1:0")
