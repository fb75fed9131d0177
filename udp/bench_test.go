package udp_test

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/udp"
)

// echoServer sends every datagram back, from a ring of *Send so that it
// allocates nothing: Data aliases the loop's buffer, which is valid until the
// socket (same loop) has processed the Send.
type echoServer struct {
	sock  netio.Ref
	ring  [1024]udp.Send
	i     int
	ready chan netip.AddrPort
}

func (s *echoServer) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case udp.Bound:
		s.sock = m.Socket
		s.ready <- m.LocalAddr
	case udp.Received:
		snd := &s.ring[s.i%len(s.ring)]
		s.i++
		snd.Data, snd.Target = m.Data(), m.Sender()
		ctx.Tell(s.sock, snd)
	}
}

// echoClient sends bursts of `burst` datagrams and waits for all their
// echoes before the next burst, `rounds` times.
type echoClient struct {
	sock    netio.Ref
	target  netip.AddrPort
	payload []byte
	ring    [64]udp.Send
	burst   int
	want    int
	rounds  int
	done    chan error
	ready   chan struct{}
}

type startRounds int

func (c *echoClient) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case udp.Bound:
		c.sock = m.Socket
		c.ready <- struct{}{}
	case startRounds:
		c.rounds = int(m)
		c.send(ctx)
	case udp.Received:
		if c.want--; c.want > 0 {
			return
		}
		if c.rounds--; c.rounds == 0 {
			c.done <- nil
			return
		}
		c.send(ctx)
	case udp.CommandFailed:
		c.done <- m.Cause
	}
}

func (c *echoClient) send(ctx *netio.Context) {
	c.want = c.burst
	for i := range c.burst {
		s := &c.ring[i]
		s.Data, s.Target = c.payload, c.target
		ctx.Tell(c.sock, s)
	}
}

// BenchmarkEcho measures a client and an echo server on one loop: one
// datagram at a time (request/response) and pipelined bursts of 64, with
// 64 B and 1,400 B datagrams, with batching (recvmmsg, coalesced sendmmsg)
// and without (one recvmsg / sendmsg per datagram). One op is one round trip
// of one datagram: two datagrams cross the kernel.
func BenchmarkEcho(b *testing.B) {
	for _, burst := range []int{1, 64} {
		for _, size := range []int{64, 1400} {
			for _, batching := range []bool{true, false} {
				name := fmt.Sprintf("burst=%d/size=%d/batching=%v", burst, size, batching)
				b.Run(name, func(b *testing.B) { benchEcho(b, burst, size, batching) })
			}
		}
	}
}

func benchEcho(b *testing.B, burst, size int, batching bool) {
	reg := prometheus.NewRegistry()
	sys, err := netio.NewSystem(netio.Config{Loops: 1, Registerer: reg})
	if err != nil {
		b.Fatal(err)
	}
	defer sys.Shutdown(context.Background())
	var batch udp.Batching
	if !batching {
		batch = udp.Batching{ReadBatch: -1, WriteBatch: -1}
	}
	batch.MaxDatagramSize = 2048
	opts := []netio.SocketOption{netio.ReceiveBufferSize(1 << 20)}
	lo := netip.MustParseAddrPort("127.0.0.1:0")

	srv := &echoServer{ready: make(chan netip.AddrPort, 1)}
	hs := sys.Spawn(srv)
	udp.Manager(sys).Tell(udp.Bind{Handler: hs, LocalAddr: lo, Options: opts, Batching: batch})
	cl := &echoClient{target: <-srv.ready, payload: make([]byte, size), burst: burst,
		done: make(chan error, 1), ready: make(chan struct{}, 1)}
	hc := sys.Spawn(cl)
	udp.Manager(sys).Tell(udp.Bind{Handler: hc, LocalAddr: lo, Options: opts, Batching: batch})
	<-cl.ready

	run := func(rounds int) {
		hc.Tell(startRounds(rounds))
		select {
		case err := <-cl.done:
			if err != nil {
				b.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			b.Fatal("echo stalled (a datagram lost?)")
		}
	}
	run(max(1, 1000/burst)) // warm up: buffers grow to their steady size

	rounds := max(1, b.N/burst)
	sys0 := gather(b, reg, "ioactor_udp_syscalls_total")
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	run(rounds)
	elapsed := time.Since(start)
	b.StopTimer()
	runtime.ReadMemStats(&m1)
	dgrams := float64(2 * rounds * burst)
	b.ReportMetric(dgrams/elapsed.Seconds(), "datagrams/s")
	b.ReportMetric((gather(b, reg, "ioactor_udp_syscalls_total")-sys0)/dgrams, "syscalls/datagram")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/dgrams, "allocs/datagram")
}

// windowSender sends a window with one SendMany each time its sink has
// received the previous window whole.
type windowSender struct {
	sock  netio.Ref
	sm    udp.SendMany
	ready chan struct{}
}

type nextWindow struct{}

func (w *windowSender) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case udp.Bound:
		w.sock = m.Socket
		w.ready <- struct{}{}
	case nextWindow:
		ctx.Tell(w.sock, &w.sm)
	case udp.CommandFailed:
		panic(m.Cause)
	}
}

// windowSink counts datagrams; after each full window it asks for the next.
type windowSink struct {
	sender  netio.Ref
	window  int
	got     int
	windows int
	done    chan struct{}
	bound   chan netip.AddrPort
}

func (k *windowSink) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case udp.Bound:
		k.bound <- m.LocalAddr
	case int:
		k.windows = m
		ctx.Tell(k.sender, nextWindow{})
	case udp.Received:
		if k.got++; k.got < k.window {
			return
		}
		k.got = 0
		if k.windows--; k.windows == 0 {
			k.done <- struct{}{}
			return
		}
		ctx.Tell(k.sender, nextWindow{})
	}
}

// BenchmarkSendMany measures a window of 64 datagrams sent with one SendMany
// (GSO, or sendmmsg) to a socket of the same loop that reads it with
// recvmmsg; the next window leaves once the previous one has arrived. One op
// is one datagram.
func BenchmarkSendMany(b *testing.B) {
	for _, size := range []int{64, 516, 1400} {
		for _, gso := range []bool{true, false} {
			b.Run(fmt.Sprintf("size=%d/gso=%v", size, gso), func(b *testing.B) {
				sys, err := netio.NewSystem(netio.Config{Loops: 1})
				if err != nil {
					b.Fatal(err)
				}
				defer sys.Shutdown(context.Background())
				lo := netip.MustParseAddrPort("127.0.0.1:0")
				const window = 64
				ws := &windowSender{ready: make(chan struct{}, 1)}
				hs := sys.Spawn(ws)
				udp.Manager(sys).Tell(udp.Bind{Handler: hs, LocalAddr: lo, Batching: udp.Batching{NoGSO: !gso}})
				<-ws.ready
				sink := &windowSink{sender: hs, window: window, done: make(chan struct{}), bound: make(chan netip.AddrPort, 1)}
				hk := sys.Spawn(sink)
				udp.Manager(sys).Tell(udp.Bind{Handler: hk, LocalAddr: lo, Options: []netio.SocketOption{netio.ReceiveBufferSize(1 << 20)},
					Batching: udp.Batching{ReadBatch: 64, MaxDatagramSize: 2048}})
				ws.sm.Target = <-sink.bound
				payload := make([]byte, size)
				for range window {
					ws.sm.Datagrams = append(ws.sm.Datagrams, payload)
				}
				run := func(n int) {
					hk.Tell(n)
					select {
					case <-sink.done:
					case <-time.After(30 * time.Second):
						b.Fatal("stalled (a datagram lost?)")
					}
				}
				run(10)
				windows := max(1, b.N/window)
				var m0, m1 runtime.MemStats
				runtime.ReadMemStats(&m0)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				run(windows)
				elapsed := time.Since(start)
				b.StopTimer()
				runtime.ReadMemStats(&m1)
				n := float64(windows * window)
				b.ReportMetric(n/elapsed.Seconds(), "datagrams/s")
				b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/n, "allocs/datagram")
			})
		}
	}
}
