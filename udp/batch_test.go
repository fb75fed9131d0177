package udp_test

import (
	"bytes"
	"errors"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/udp"
)

// window returns n datagrams of size bytes (the last one last bytes), each
// filled with its index.
func window(n, size, last int) [][]byte {
	d := make([][]byte, n)
	for i := range d {
		l := size
		if i == n-1 {
			l = last
		}
		d[i] = bytes.Repeat([]byte{byte(i)}, l)
	}
	return d
}

func expectWindow(t *testing.T, ch <-chan event, dgs [][]byte, from int) {
	t.Helper()
	for i := from; i < len(dgs); i++ {
		r, _ := expect[udp.Received](t, ch)
		if !bytes.Equal(r.Data(), dgs[i]) {
			t.Fatalf("datagram %d: got %d bytes of %x; want %d bytes of %x", i, len(r.Data()), r.Data()[:1], len(dgs[i]), dgs[i][:1])
		}
	}
}

func TestSendMany(t *testing.T) {
	for _, mode := range []struct {
		name  string
		noGSO bool
	}{{"GSO", false}, {"sendmmsg", true}} {
		t.Run(mode.name, func(t *testing.T) {
			forEachFamily(t, func(t *testing.T, lo netip.Addr) {
				reg := prometheus.NewRegistry()
				sys := newSystem(t, 1, reg)
				l := sys.Loops()[0]
				hr, chr := spawnProbe(sys, l)
				_, dst := bind(t, sys, hr, chr, ap(lo, 0), netio.ReceiveBufferSize(4<<20))
				hs, chs := spawnProbe(sys, l)
				udp.Manager(sys).Tell(udp.Bind{Handler: hs, LocalAddr: ap(lo, 0), Batching: udp.Batching{NoGSO: mode.noGSO}})
				b, _ := expect[udp.Bound](t, chs)

				gso := func() float64 { return gather(t, reg, "ioactor_udp_syscalls_total", "op", "sendmsg_gso") }
				mmsg := func() float64 { return gather(t, reg, "ioactor_udp_syscalls_total", "op", "sendmmsg") }

				// A TFTP-like window: 40 blocks of 516 bytes and a short last one.
				w := window(41, 516, 100)
				sm := &udp.SendMany{Datagrams: w, Target: dst, Ack: "w1"}
				b.Socket.Tell(sm)
				if ack, _ := expect[string](t, chs); ack != "w1" {
					t.Fatal(ack)
				}
				expectWindow(t, chr, w, 0)
				if mode.noGSO {
					if g, m := gso(), mmsg(); g != 0 || m != 1 {
						t.Fatalf("%v GSO sends, %v sendmmsg; want 0, 1", g, m)
					}
				} else if g := gso(); g != 1 {
					t.Fatalf("%v GSO sends; want 1", g)
				}

				// 64 × 1,400 bytes is more than one GSO send can carry (65,507).
				w2 := window(64, 1400, 1400)
				b.Socket.Tell(udp.SendMany{Datagrams: w2, Target: dst, Ack: "w2"})
				expect[string](t, chs)
				expectWindow(t, chr, w2, 0)
				if !mode.noGSO {
					if g := gso(); g != 3 {
						t.Fatalf("%v GSO sends; want 3", g)
					}
				}
				if s := gather(t, reg, "ioactor_udp_datagrams_sent_total"); s != 105 {
					t.Fatalf("datagrams sent %v; want 105", s)
				}

				// Unequal sizes and an empty datagram are sent as they are.
				w3 := [][]byte{[]byte("a"), []byte("bbbb"), {}, []byte("cc")}
				b.Socket.Tell(udp.SendMany{Datagrams: w3, Target: dst, Ack: "w3"})
				expect[string](t, chs)
				expectWindow(t, chr, w3, 0)
			})
		})
	}
}

// A SendMany the kernel takes only part of reports how much went out; the
// rest can be resent after WritingResumed.
func TestSendManyPartial(t *testing.T) {
	for _, mode := range []struct {
		name      string
		noGSO     bool
		firstSent int
		allow     []int // the kernel's answers, then all
	}{{"GSO", false, 0, []int{10}}, {"sendmmsg", true, 10, []int{10, 0}}} {
		t.Run(mode.name, func(t *testing.T) {
			forEachFamily(t, func(t *testing.T, lo netip.Addr) {
				allow := mode.allow
				udp.SetFaultHook(func(want int) int {
					if len(allow) > 0 {
						a := allow[0]
						allow = allow[1:]
						return a
					}
					return want
				})
				t.Cleanup(func() { udp.SetFaultHook(nil) })
				sys := newSystem(t, 1, nil)
				l := sys.Loops()[0]
				hr, chr := spawnProbe(sys, l)
				_, dst := bind(t, sys, hr, chr, ap(lo, 0))
				hs, chs := spawnProbe(sys, l)
				udp.Manager(sys).Tell(udp.Bind{Handler: hs, LocalAddr: ap(lo, 0), Batching: udp.Batching{NoGSO: mode.noGSO}})
				b, _ := expect[udp.Bound](t, chs)

				w := window(64, 512, 512)
				sm := &udp.SendMany{Datagrams: w, Target: dst, Ack: "done"}
				b.Socket.Tell(sm)
				f, _ := expect[udp.CommandFailed](t, chs)
				var pe *udp.PartialSendError
				if f.Cmd != sm || !errors.As(f.Cause, &pe) || pe.Sent != mode.firstSent ||
					!errors.Is(f.Cause, udp.ErrWouldBlock) || !errors.Is(f.Cause, syscall.EAGAIN) {
					t.Fatalf("CommandFailed %+v", f)
				}
				// Refused until this sender resumes.
				b.Socket.Tell(udp.Send{Data: []byte("x"), Target: dst})
				if f, _ := expect[udp.CommandFailed](t, chs); f.Cause != udp.ErrWouldBlock {
					t.Fatalf("cause %v", f.Cause)
				}
				b.Socket.Tell(udp.ResumeWriting{})
				expect[udp.WritingResumed](t, chs)
				sm.Datagrams = w[pe.Sent:]
				b.Socket.Tell(sm)
				expect[string](t, chs)
				expectWindow(t, chr, w, 0)
				expectNothing(t, chr, 20*time.Millisecond)
			})
		})
	}
}

// Several Sends processed in one loop turn go out with one system call: one
// GSO sendmsg when they share a target and a size, else one sendmmsg.
func TestSendCoalescing(t *testing.T) {
	for _, mode := range []struct {
		name     string
		noGSO    bool
		wantGSO  float64
		wantMmsg float64
	}{{"GSO", false, 1, 0}, {"sendmmsg", true, 0, 1}} {
		t.Run(mode.name, func(t *testing.T) {
			forEachFamily(t, func(t *testing.T, lo netip.Addr) {
				reg := prometheus.NewRegistry()
				sys := newSystem(t, 1, reg)
				l := sys.Loops()[0]
				hr, chr := spawnProbe(sys, l)
				_, dst := bind(t, sys, hr, chr, ap(lo, 0))
				done := make(chan any, 1)
				var sends [10]udp.Send
				h := sys.SpawnOn(l, netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
					switch m := msg.(type) {
					case udp.Bound:
						buf := []byte("0123456789")
						for i := range sends {
							sends[i] = udp.Send{Data: buf[i : i+1], Target: dst}
							if i == len(sends)-1 {
								sends[i].Ack = "acked"
							}
							ctx.Tell(m.Socket, &sends[i])
						}
						// Overwriting the buffer after the socket processed the
						// Sends does not change what it sends: it copied.
						ctx.Tell(ctx.Self(), buf)
					case []byte:
						copy(m, "XXXXXXXXXX")
					default:
						done <- m
					}
				}))
				udp.Manager(sys).Tell(udp.Bind{Handler: h, LocalAddr: ap(lo, 0), Batching: udp.Batching{NoGSO: mode.noGSO}})
				for i := range 10 {
					expectData(t, chr, string(rune('0'+i)), netip.AddrPort{})
				}
				select {
				case m := <-done:
					if m != "acked" {
						t.Fatalf("got %v", m)
					}
				case <-time.After(wait):
					t.Fatal("no ack")
				}
				for op, want := range map[string]float64{"sendmsg_gso": mode.wantGSO, "sendmmsg": mode.wantMmsg, "sendmsg": 0} {
					if got := gather(t, reg, "ioactor_udp_syscalls_total", "op", op); got != want {
						t.Errorf("%s calls: %v; want %v", op, got, want)
					}
				}
			})
		})
	}
}

// Coalesced Sends to several targets, of several sizes, keep their order per
// target whichever system calls carry them.
func TestSendCoalescingMixed(t *testing.T) {
	forEachFamily(t, func(t *testing.T, lo netip.Addr) {
		sys := newSystem(t, 1, nil)
		l := sys.Loops()[0]
		ha, cha := spawnProbe(sys, l)
		_, da := bind(t, sys, ha, cha, ap(lo, 0))
		hb, chb := spawnProbe(sys, l)
		_, db := bind(t, sys, hb, chb, ap(lo, 0))
		// target and size of each Send, in order
		plan := []struct {
			to   int
			size int
		}{{0, 5}, {0, 5}, {0, 5}, {1, 5}, {0, 5}, {0, 2}, {0, 5}, {1, 7}, {1, 7}, {1, 7}, {1, 1}, {1, 7}, {0, 0}, {0, 9}, {1, 9}}
		var sends [len("0123456789abcde")]udp.Send
		h := sys.SpawnOn(l, netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
			if m, ok := msg.(udp.Bound); ok {
				for i, p := range plan {
					dst := da
					if p.to == 1 {
						dst = db
					}
					sends[i] = udp.Send{Data: bytes.Repeat([]byte{byte(i)}, p.size), Target: dst}
					ctx.Tell(m.Socket, &sends[i])
				}
			}
		}))
		udp.Manager(sys).Tell(udp.Bind{Handler: h, LocalAddr: ap(lo, 0)})
		for i, p := range plan {
			ch := cha
			if p.to == 1 {
				ch = chb
			}
			expectData(t, ch, string(bytes.Repeat([]byte{byte(i)}, p.size)), netip.AddrPort{})
		}
	})
}
