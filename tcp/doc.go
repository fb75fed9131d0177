// Package tcp is Akka I/O's TCP model on the netio event loops: a manager
// actor takes Bind and Connect, listener and connection actors own the
// sockets, and a handler drives each connection with messages.
//
// # Usage
//
// Send [Bind] or [Connect] to [Manager]. A listener answers [Bound] and then
// one [Connected] per accepted connection, sent by the new connection actor;
// answer it with [Register] naming the handler. The handler receives
// [Received] events and sends [Write], [WriteFile], [CompoundWrite], flow
// commands and close commands; every close ends with a [ConnectionClosed]
// event. Every event is a value (case tcp.Received, case tcp.Bound); the
// sender of each is the socket's actor.
//
// An echo server that loses no byte paces its writes by their acks: it
// writes what it received, stops reading until the write is in the kernel,
// then reads again (the Example, as it runs in the tests):
//
//	type echo struct{}
//
//	type written struct{}
//
//	func (echo) Receive(ctx *netio.Context, msg any) {
//		switch m := msg.(type) {
//		case tcp.Received:
//			// m.Data() is the loop's read buffer: a Transient write
//			// copies only what the kernel does not take at once.
//			m.Write(ctx, &tcp.Write{Data: m.Data(), Ack: written{}, Transient: true})
//			ctx.Reply(tcp.SuspendReading{})
//		case written:
//			ctx.Reply(tcp.ResumeReading{})
//		case tcp.ConnectionClosed:
//			ctx.Stop()
//		}
//	}
//
//	server := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
//		switch m := msg.(type) {
//		case tcp.Connected:
//			h := ctx.SpawnOn(m.Socket.Loop(), echo{})
//			ctx.Reply(tcp.Register{Handler: h})
//		case tcp.CommandFailed:
//			log.Print(m.Cause) // the Bind failed
//		}
//	}))
//	tcp.Manager(sys).Tell(tcp.Bind{Handler: server, LocalAddr: addr})
//
// Writing each Received without waiting for the ack (Akka's
// SimplisticHandler) loses data: a Write that arrives while the previous
// one is still pending is refused with [CommandFailed] and its bytes are
// gone unless the handler resends them. The connection logs the first such
// refusal of each connection ([LogWriteRefused]) and counts them all;
// package backpressure has the handlers that buffer and resend.
//
// A command needs someone to answer: a Bind or Connect with no Handler, told
// from outside any actor (so it has no sender either), is refused with a
// logged warning and makes no socket.
//
// # Flow control
//
// A connection holds at most one pending write and never buffers on its own.
// A write that arrives while one is pending is answered with [CommandFailed]
// (the NACK); an Ack on a write arrives once its last byte is in the kernel.
// With Register.UseResumeWriting every write after a NACK fails until
// [ResumeWriting] is answered by [WritingResumed]. [SuspendReading] and
// [ResumeReading] stop and restart reading at the socket; in pull mode each
// Received suspends reading until the next ResumeReading. When nobody reads,
// the kernel's receive buffer fills and TCP's window closes: the pressure
// reaches the peer. Package backpressure builds the usual flows on these.
//
// The sockets are registered edge-triggered once, with read and write
// interest, so suspending and resuming reading costs no system call: the
// connection simply stops and restarts reading, which has the same effect on
// the kernel buffer and the TCP window as removing EPOLLIN.
//
// [HandOverReading] gives the reading to a goroutine for good: the answer,
// [ReadingHandedOver], carries a duplicate of the socket on the Go runtime's
// poller ([ReadFile], read with raw read(2)s), and the connection takes EPOLLIN off its registration (one
// epoll_ctl), so arriving data wakes that goroutine and not the loop; the
// peer's FIN is then reported as [FINArrived].
//
// # Ownership
//
// [Received.Data] aliases the loop's read buffer and is valid only until the
// handler's Receive returns (a handler on another loop gets a copy). [Write.Data]
// is read by the connection without a copy until the write completes.
//
// [Received.Write] is the handler's synchronous write: during the Receive of
// a Received delivered directly it adds the Write to the connection's
// current write, so everything the handler writes in that Receive goes out
// in one system call when it returns, with no message in between; otherwise
// it is a Tell to the connection.
//
// A handler on the connection's loop gets its Received and its acks by
// [netio.Context.Deliver]: a direct call within the connection's turn when
// the handler is idle with nothing queued, else a queued message. Either way
// it handles one message at a time, in order; what it sends the connection
// meanwhile is queued and handled right after.
//
// The socket's read, write and writev are raw system calls (the socket is
// non-blocking); sendfile is not.
//
// # Limitations
//
// Linux only. Addresses are numeric ([netip.AddrPort]); resolve names first.
package tcp
