package tcp_test

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// batchServer binds and serves each connection with the handler made by
// mk, spawned on the connection's loop (sameLoop) or on another one; events
// the handler forwards reach the probe.
func batchServer(t *testing.T, sys *netio.System, p *probe, sameLoop bool, mk func() netio.Actor) net.Conn {
	t.Helper()
	srv := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch m := msg.(type) {
		case tcp.Bound:
			p.ref.Tell(m)
		case tcp.Connected:
			l := m.Socket.Loop()
			if !sameLoop {
				for _, o := range sys.Loops() {
					if o != l {
						l = o
						break
					}
				}
			}
			ctx.Reply(tcp.Register{Handler: ctx.SpawnOn(l, mk())})
		}
	}))
	tcp.Manager(sys).Tell(tcp.Bind{Handler: srv, LocalAddr: loopback})
	b := expect[tcp.Bound](t, p)
	peer, err := net.Dial("tcp", b.LocalAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	peer.SetDeadline(time.Now().Add(20 * time.Second))
	return peer
}

// handlerFunc is an actor that forwards to the probe what f does not take.
type handlerFunc func(ctx *netio.Context, msg any)

func (f handlerFunc) Receive(ctx *netio.Context, msg any) { f(ctx, msg) }

// Received.Write during the Receive of a Received: several writes of one
// Receive go out together, in order, each acked in order; the same from a
// handler on another loop (where it is a plain Tell).
func TestReceivedWriteBatchesInOrder(t *testing.T) {
	for _, same := range []bool{true, false} {
		t.Run(map[bool]string{true: "same-loop", false: "other-loop"}[same], func(t *testing.T) {
			sys := newSystem(t)
			p := newProbe(sys)
			peer := batchServer(t, sys, p, same, func() netio.Actor {
				return handlerFunc(func(ctx *netio.Context, msg any) {
					switch m := msg.(type) {
					case tcp.Received:
						d := m.Data()
						m.Write(ctx, &tcp.Write{Data: []byte("<"), Ack: "a"})
						m.Write(ctx, &tcp.Write{Data: d, Ack: "b", Transient: true})
						m.Write(ctx, &tcp.Write{Data: []byte(">"), Ack: "c"})
					case string:
						p.ref.Tell(m)
					case tcp.ConnectionClosed:
						ctx.Stop()
					}
				})
			})
			for _, word := range []string{"one", "two"} {
				peer.Write([]byte(word))
				got := make([]byte, len(word)+2)
				if _, err := io.ReadFull(peer, got); err != nil {
					t.Fatal(err)
				}
				if string(got) != "<"+word+">" {
					t.Fatalf("peer read %q", got)
				}
				for _, a := range []string{"a", "b", "c"} {
					if m := p.next(t); m != a {
						t.Fatalf("ack %v, want %v", m, a)
					}
				}
			}
		})
	}
}

// A command the handler told the connection before a Received.Write in the
// same Receive goes first: Received.Write does not overtake it.
func TestReceivedWriteKeepsOrderWithToldCommands(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer := batchServer(t, sys, p, true, func() netio.Actor {
		return handlerFunc(func(ctx *netio.Context, msg any) {
			switch m := msg.(type) {
			case tcp.Received:
				ctx.Reply(tcp.Write{Data: []byte("told ")})
				m.Write(ctx, &tcp.Write{Data: []byte("batched")})
				ctx.Reply(tcp.Close{})
			case tcp.ConnectionClosed:
				p.ref.Tell(m)
				ctx.Stop()
			}
		})
	})
	peer.Write([]byte("go"))
	got, err := io.ReadAll(peer)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "told batched" {
		t.Fatalf("peer read %q, want the told write first, then the batched one, then EOF", got)
	}
	expect[tcp.Closed](t, p)
}

// A Received.Write while a write is pending is refused as a told Write is,
// loudly (TestPlainNackIsLoud), and the writes after it in the same Receive
// too; once the pending write completes the next batch goes out.
func TestReceivedWriteWhilePendingIsNacked(t *testing.T) {
	sys, logs := newLoggedSystem(t, nil)
	p := newProbe(sys)
	big := bytes.Repeat([]byte{'z'}, 32<<20)
	peer := batchServer(t, sys, p, true, func() netio.Actor {
		first := true
		return handlerFunc(func(ctx *netio.Context, msg any) {
			switch m := msg.(type) {
			case tcp.Received:
				if first {
					first = false
					m.Write(ctx, &tcp.Write{Data: big, Ack: "big"})
					return
				}
				m.Write(ctx, &tcp.Write{Data: []byte("x"), Ack: "x"})
			case tcp.CommandFailed, string:
				p.ref.Tell(m)
			}
		})
	})
	peer.Write([]byte("big"))
	time.Sleep(50 * time.Millisecond) // most likely two reads; if one, the
	peer.Write([]byte("small"))       // third write below is the second read
	peer.Write([]byte("third"))
	f := expect[tcp.CommandFailed](t, p)
	if !errors.Is(f.Cause, tcp.ErrWritePending) {
		t.Fatalf("CommandFailed %v", f.Cause)
	}
	if _, err := io.CopyN(io.Discard, peer, int64(len(big))); err != nil {
		t.Fatal(err)
	}
	for m := p.next(t); m != "big"; m = p.next(t) {
		if _, ok := m.(tcp.CommandFailed); !ok {
			t.Fatalf("got %v, want the big write's ack", m)
		}
	}
	logs.waitLog(t, tcp.LogWriteRefused, 1)
	peer.Write([]byte("again"))
	if m := p.next(t); m != "x" {
		t.Fatalf("got %v, want the ack of the write after the pending one", m)
	}
}
