package backpressure_test

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/ioactor/ioactor/backpressure"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// BenchmarkThroughputEchoRoundTrip measures one 64-byte round trip through
// each echo flow; allocs/op counts both sides (the net client allocates
// nothing per round trip), so it shows the server's allocations per message.
func BenchmarkThroughputEchoRoundTrip(b *testing.B) {
	for _, flow := range []backpressure.Flow{backpressure.FlowAck, backpressure.FlowNack, backpressure.FlowPull} {
		b.Run(string(flow), func(b *testing.B) {
			sys, err := netio.NewSystem(netio.Config{Loops: 1})
			if err != nil {
				b.Fatal(err)
			}
			defer sys.Shutdown(context.Background())
			addr := make(chan string, 1)
			ref := sys.Spawn(&backpressure.EchoServer{Flow: flow, OnBound: func(bd tcp.Bound, err error) { addr <- bd.LocalAddr.String() }})
			tcp.Manager(sys).Tell(tcp.Bind{Handler: ref, LocalAddr: netipLoopback, PullMode: flow == backpressure.FlowPull})
			c, err := net.Dial("tcp", <-addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, 64)
			buf := make([]byte, 64)
			b.SetBytes(64)
			b.ReportAllocs()
			for b.Loop() {
				c.Write(msg)
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
