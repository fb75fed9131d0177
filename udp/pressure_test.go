package udp_test

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/udp"
)

// blaster sends n datagrams as fast as its socket takes them: SendMany
// windows of 64, the next one when the previous is acked. One *SendMany is
// reused, so it allocates nothing per window.
type blaster struct {
	sock netio.Ref
	sm   udp.SendMany
	n    int
	sent int
	done chan int
}

type blastAck struct{}

func (b *blaster) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case udp.SimpleSenderReady:
		b.sock = m.Socket
	case blastAck:
		b.sent += len(b.sm.Datagrams)
	case udp.CommandFailed:
		b.done <- -1
		return
	default:
		return
	}
	if b.sent >= b.n {
		b.done <- b.sent
		return
	}
	ctx.Tell(b.sock, &b.sm)
}

// counter counts datagrams and forwards everything else, and a datagram
// whose payload is "end", to ch.
type counter struct {
	n  atomic.Int64
	ch chan event
}

func (c *counter) Receive(ctx *netio.Context, msg any) {
	if r, ok := msg.(udp.Received); ok && string(r.Data()) != "end" {
		c.n.Add(1)
		return
	}
	c.ch <- event{Msg: msg, From: ctx.Sender()}
}

// TestSuspendedReadingDropsInKernel blasts a million datagrams at a socket
// whose reading is suspended: the kernel drops what does not fit its queue
// and counts it (SO_RXQ_OVFL); the process's heap does not grow; after
// ResumeReading the socket delivers what the kernel kept, and then new
// datagrams. Every datagram sent is either delivered or counted as dropped.
func TestSuspendedReadingDropsInKernel(t *testing.T) {
	const total = 1_000_000
	forEachFamily(t, func(t *testing.T, lo netip.Addr) {
		reg := prometheus.NewRegistry()
		sys := newSystem(t, 2, reg)
		rc := &counter{ch: make(chan event, 16)}
		hr := sys.SpawnOn(sys.Loops()[0], rc)
		udp.Manager(sys).Tell(udp.Bind{Handler: hr, LocalAddr: ap(lo, 0)})
		b, _ := expect[udp.Bound](t, rc.ch)
		b.Socket.Tell(udp.SuspendReading{})
		b.Socket.Tell(udp.ResumeWriting{}) // a barrier: answered once SuspendReading is done
		expect[udp.WritingResumed](t, rc.ch)

		payload := make([]byte, 32)
		bl := &blaster{n: total, done: make(chan int, 1)}
		bl.sm.Target = b.LocalAddr
		bl.sm.Ack = blastAck{}
		for range 64 {
			bl.sm.Datagrams = append(bl.sm.Datagrams, payload)
		}
		hb := sys.SpawnOn(sys.Loops()[1], bl)

		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		start := time.Now()
		udp.Manager(sys).Tell(udp.SimpleSender{Handler: hb, LocalAddr: ap(lo, 0)})
		var sent int
		select {
		case sent = <-bl.done:
		case <-time.After(30 * time.Second):
			t.Fatal("blast did not finish")
		}
		elapsed := time.Since(start)
		if sent != total {
			t.Fatalf("blaster sent %d of %d", sent, total)
		}
		runtime.GC()
		runtime.ReadMemStats(&m1)
		growth := int64(m1.HeapAlloc) - int64(m0.HeapAlloc)
		t.Logf("%d datagrams in %v (%.0f/s); heap %d → %d bytes (%+d); %.3f allocations and %.1f bytes per datagram",
			sent, elapsed.Round(time.Millisecond), float64(sent)/elapsed.Seconds(), m0.HeapAlloc, m1.HeapAlloc, growth,
			float64(m1.Mallocs-m0.Mallocs)/float64(sent), float64(m1.TotalAlloc-m0.TotalAlloc)/float64(sent))
		if growth > 2<<20 {
			t.Errorf("heap grew by %d bytes while the socket was suspended", growth)
		}
		if n := rc.n.Load(); n != 0 {
			t.Fatalf("a suspended socket delivered %d datagrams", n)
		}

		b.Socket.Tell(udp.ResumeReading{})
		// Wait for the kernel's queue to drain, then show new datagrams flow.
		for last := int64(-1); ; {
			time.Sleep(50 * time.Millisecond)
			n := rc.n.Load()
			if n == last {
				break
			}
			last = n
		}
		hs, chs := spawnProbe(sys, sys.Loops()[1])
		ss, _ := bind(t, sys, hs, chs, ap(lo, 0))
		ss.Tell(udp.Send{Data: []byte("end"), Target: b.LocalAddr})
		if r, _ := expect[udp.Received](t, rc.ch); string(r.Data()) != "end" {
			t.Fatalf("got %q", r.Data())
		}
		kept := rc.n.Load()
		drops := int64(gather(t, reg, "ioactor_udp_kernel_drops_total"))
		t.Logf("after ResumeReading: %d delivered from the kernel queue, %d dropped by the kernel", kept, drops)
		if kept == 0 || drops == 0 || kept+drops != total {
			t.Fatalf("delivered %d + dropped %d != sent %d", kept, drops, total)
		}
	})
}

// bpSender sends seq numbers 0..n-1 in bursts of 64 (one *Send each, from a
// ring), the NACK way: on CommandFailed it asks ResumeWriting and, on
// WritingResumed, resends from the first refused datagram.
type bpSender struct {
	sock        netio.Ref
	target      netip.AddrPort
	n           int
	next        int
	failedAt    int
	outstanding bool
	resuming    bool
	sends       [256]udp.Send
	bufs        [256][8]byte
	progress    *atomic.Int64
	fails       int
	resumes     int
	done        chan error
}

type burstDone struct{}
type tick struct{}

func (s *bpSender) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case udp.Bound:
		s.sock = m.Socket
	case burstDone:
		s.outstanding = false
		if s.next >= s.n {
			s.done <- nil
			return
		}
	case tick:
	case udp.CommandFailed:
		send, ok := m.Cmd.(*udp.Send)
		if !ok || !errors.Is(m.Cause, udp.ErrWouldBlock) || !errors.Is(m.Cause, syscall.EAGAIN) {
			s.done <- m.Cause
			return
		}
		seq := int(binary.BigEndian.Uint64(send.Data))
		s.fails++
		if s.failedAt < 0 || seq < s.failedAt {
			s.failedAt = seq
		}
		if !s.resuming {
			s.resuming = true
			ctx.Tell(s.sock, udp.ResumeWriting{})
		}
		return
	case udp.WritingResumed:
		s.resumes++
		s.resuming, s.outstanding = false, false
		s.next, s.failedAt = s.failedAt, -1
	default:
		return
	}
	s.burst(ctx)
}

func (s *bpSender) burst(ctx *netio.Context) {
	if s.outstanding || s.resuming || s.next >= s.n {
		return
	}
	if int64(s.next)-s.progress.Load() > 2000 { // keep the receiver's kernel queue from overflowing
		ctx.After(time.Millisecond, tick{})
		return
	}
	k := min(64, s.n-s.next)
	for i := range k {
		seq := s.next + i
		idx := seq % len(s.sends)
		binary.BigEndian.PutUint64(s.bufs[idx][:], uint64(seq))
		snd := &s.sends[idx]
		*snd = udp.Send{Data: s.bufs[idx][:], Target: s.target}
		if i == k-1 {
			snd.Ack = burstDone{}
		}
		ctx.Tell(s.sock, snd)
	}
	s.next += k
	s.outstanding = true
}

// inOrder checks that datagrams carry 0, 1, 2, … and publishes its progress.
type inOrder struct {
	progress atomic.Int64
	bad      atomic.Int64 // 1 + the first unexpected seq
	n        int64
	done     chan struct{}
	bound    chan udp.Bound
}

func (r *inOrder) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case udp.Bound:
		r.bound <- m
	case udp.Received:
		seq := int64(binary.BigEndian.Uint64(m.Data()))
		next := r.progress.Load()
		if seq != next && r.bad.Load() == 0 {
			r.bad.Store(seq + 1)
		}
		r.progress.Store(next + 1)
		if next+1 == r.n {
			close(r.done)
		}
	}
}

// TestSendBackPressure: a sender pushing faster than its socket drains gets
// CommandFailed(ErrWouldBlock), asks ResumeWriting, gets WritingResumed when
// the socket is writable (EPOLLOUT), and retries; every datagram arrives
// exactly once and in order.
//
// Linux never answers EAGAIN to a UDP send over loopback — loopback_xmit
// orphans each packet, so the socket's send buffer is empty again as soon as
// sendmsg returns, whatever SO_SNDBUF is — so the kernel's answer is
// injected at the system-call boundary: the errno only. Everything else is
// real: EPOLLOUT, the sockets, the delivery.
func TestSendBackPressure(t *testing.T) {
	const n = 20_000
	for _, mode := range []struct {
		name  string
		batch udp.Batching
	}{{"coalesced", udp.Batching{}}, {"direct", udp.Batching{WriteBatch: -1}}} {
		t.Run(mode.name, func(t *testing.T) {
			forEachFamily(t, func(t *testing.T, lo netip.Addr) {
				var calls, eagains atomic.Int64
				budget := 0
				udp.SetFaultHook(func(want int) int {
					c := calls.Add(1)
					if budget == 0 {
						budget = 300 + int(c*37%500)
						eagains.Add(1)
						return 0
					}
					a := min(want, budget)
					budget -= a
					return a
				})
				t.Cleanup(func() { udp.SetFaultHook(nil) })
				reg := prometheus.NewRegistry()
				sys := newSystem(t, 2, reg)

				rcv := &inOrder{n: n, done: make(chan struct{}), bound: make(chan udp.Bound, 1)}
				hr := sys.SpawnOn(sys.Loops()[0], rcv)
				udp.Manager(sys).Tell(udp.Bind{Handler: hr, LocalAddr: ap(lo, 0), Options: []netio.SocketOption{netio.ReceiveBufferSize(4 << 20)}})
				rb := <-rcv.bound

				snd := &bpSender{target: rb.LocalAddr, n: n, failedAt: -1, progress: &rcv.progress, done: make(chan error, 1)}
				hs := sys.SpawnOn(sys.Loops()[1], snd)
				udp.Manager(sys).Tell(udp.Bind{Handler: hs, LocalAddr: ap(lo, 0), Batching: mode.batch,
					Options: []netio.SocketOption{netio.SendBufferSize(4096)}})
				select {
				case err := <-snd.done:
					if err != nil {
						t.Fatal(err)
					}
				case <-time.After(60 * time.Second):
					t.Fatal("sender did not finish")
				}
				select {
				case <-rcv.done:
				case <-time.After(wait):
					t.Fatalf("received %d of %d", rcv.progress.Load(), n)
				}
				if b := rcv.bad.Load(); b != 0 {
					t.Fatalf("datagram %d arrived out of order", b-1)
				}
				// Read the sender's fields on its own loop.
				stats := make(chan [2]int, 1)
				hs.Run(func(*netio.Context) { stats <- [2]int{snd.fails, snd.resumes} })
				st := <-stats
				t.Logf("%d datagrams delivered in order; %d CommandFailed, %d WritingResumed, %d injected EAGAIN",
					n, st[0], st[1], eagains.Load())
				if st[0] == 0 || st[1] == 0 {
					t.Errorf("no back-pressure: %d fails, %d resumes", st[0], st[1])
				}
				if wb := gather(t, reg, "ioactor_udp_send_failures_total", "reason", "would_block"); wb < 1 {
					t.Errorf("would_block metric %v", wb)
				}
				if d := gather(t, reg, "ioactor_udp_kernel_drops_total"); d != 0 {
					t.Errorf("the receiver's kernel dropped %v datagrams", d)
				}
			})
		})
	}
}
