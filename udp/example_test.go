package udp_test

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/udp"
)

// An echo server and a client on one loop.
func Example() {
	sys, err := netio.NewSystem(netio.Config{Loops: 1})
	if err != nil {
		panic(err)
	}
	defer sys.Shutdown(context.Background())

	// The server sends every datagram back where it came from. m.Data is
	// valid until Receive returns; a Send to a socket of the same loop may
	// carry it as is.
	bound := make(chan netip.AddrPort, 1)
	server := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch m := msg.(type) {
		case udp.Bound:
			bound <- m.LocalAddr
		case udp.Received:
			ctx.Reply(udp.Send{Data: m.Data(), Target: m.Sender()})
		}
	}))
	udp.Manager(sys).Tell(udp.Bind{Handler: server, LocalAddr: netip.MustParseAddrPort("127.0.0.1:0")})
	serverAddr := <-bound

	// The client binds, sends once it is bound, and reports the echo.
	replies := make(chan string, 1)
	client := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch m := msg.(type) {
		case udp.Bound:
			ctx.Reply(udp.Send{Data: []byte("hello"), Target: serverAddr})
		case udp.Received:
			replies <- string(m.Data()) // a copy
		case udp.CommandFailed:
			replies <- m.Cause.Error()
		}
	}))
	udp.Manager(sys).Tell(udp.Bind{Handler: client, LocalAddr: netip.MustParseAddrPort("127.0.0.1:0")})
	fmt.Println(<-replies)
	// Output: hello
}
