package tcp_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// echoHandler writes every chunk back, like Akka's SimplisticHandler: it
// copies Received data (valid only during Receive) and ignores flow control,
// so a write that arrives while one is pending would be refused. Package
// backpressure has the handlers that never drop a byte.
type echoHandler struct{}

func (h *echoHandler) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case *tcp.Received:
		ctx.Reply(tcp.Write{Data: append([]byte(nil), m.Data...)})
	case tcp.ConnectionClosed:
		ctx.Stop()
	}
}

// A minimal echo server: bind, register a handler per connection, echo.
func Example() {
	sys, _ := netio.NewSystem(netio.Config{})
	defer sys.Shutdown(context.Background())

	bound := make(chan netip.AddrPort, 1)
	server := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch m := msg.(type) {
		case tcp.Bound:
			bound <- m.LocalAddr
		case tcp.Connected:
			h := ctx.SpawnOn(m.Conn.Loop(), &echoHandler{})
			ctx.Reply(tcp.Register{Handler: h})
		}
	}))
	tcp.Manager(sys).Tell(tcp.Bind{Handler: server, Addr: netip.MustParseAddrPort("127.0.0.1:0")})

	c, _ := net.Dial("tcp", (<-bound).String())
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	c.Write([]byte("hello, actors"))
	buf := make([]byte, 13)
	io.ReadFull(c, buf)
	fmt.Println(string(buf))
	// Output: hello, actors
}
