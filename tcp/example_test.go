package tcp_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"time"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// echo is the package doc's echo handler: it writes back what it received
// and reads again once the write is in the kernel, so it never has two
// writes pending and loses no byte.
type echo struct{}

type written struct{}

func (echo) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case tcp.Received:
		// m.Data() is the loop's read buffer: a Transient write
		// copies only what the kernel does not take at once.
		m.Write(ctx, &tcp.Write{Data: m.Data(), Ack: written{}, Transient: true})
		ctx.Reply(tcp.SuspendReading{})
	case written:
		ctx.Reply(tcp.ResumeReading{})
	case tcp.ConnectionClosed:
		ctx.Stop()
	}
}

// The echo server of the package doc, and a client sending it 896 KiB at once
// (far more than one read: every chunk goes back, in order, none lost).
func Example() {
	sys, err := netio.NewSystem(netio.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer sys.Shutdown(context.Background())

	bound := make(chan netip.AddrPort, 1)
	server := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch m := msg.(type) {
		case tcp.Bound:
			bound <- m.LocalAddr
		case tcp.Connected:
			h := ctx.SpawnOn(m.Socket.Loop(), echo{})
			ctx.Reply(tcp.Register{Handler: h})
		case tcp.CommandFailed:
			log.Print(m.Cause) // the Bind failed
		}
	}))
	addr := netip.MustParseAddrPort("127.0.0.1:0")
	tcp.Manager(sys).Tell(tcp.Bind{Handler: server, LocalAddr: addr})

	c, err := net.Dial("tcp", (<-bound).String())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	sent := bytes.Repeat([]byte("hello, actors "), 1<<16) // 896 KiB
	go c.Write(sent)
	got := make([]byte, len(sent))
	if _, err := io.ReadFull(c, got); err != nil {
		log.Fatal(err)
	}
	fmt.Println(bytes.Equal(got, sent), string(got[:13]))
	// Output: true hello, actors
}
