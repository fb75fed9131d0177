// Package udp is Akka I/O's UDP model on the netio event loops: unconnected
// sockets (Bind, Send, Received, Unbind), send-only sockets (SimpleSender),
// connected sockets (Connect, Disconnect), flow control in both directions,
// and batched system calls (recvmmsg, sendmmsg, UDP GSO).
//
// # Usage
//
// A handler is an actor. It tells the system's manager, [Manager], what it
// wants; the manager spawns a socket actor on the handler's loop, and from
// then on the handler and its socket talk through messages:
//
//	udp.Manager(sys).Tell(udp.Bind{Handler: h, LocalAddr: netip.MustParseAddrPort("127.0.0.1:0")})
//
//	func (h *handler) Receive(ctx *netio.Context, msg any) {
//		switch m := msg.(type) {
//		case udp.Bound: // m.Socket (also ctx.Sender()) takes commands
//			h.sock = m.Socket
//		case udp.Received: // m.Data is valid until Receive returns
//			ctx.Tell(h.sock, udp.Send{Data: m.Data, Target: m.Sender, Ack: sent{}})
//		case udp.CommandFailed: // m.Cmd failed because of m.Cause
//		}
//	}
//
// Commands to the manager: [Bind] → [Bound]; [Connect] → [Connected];
// [SimpleSender] → [SimpleSenderReady]; or [CommandFailed]. Commands to a
// socket: [Send], [SendMany], [SuspendReading], [ResumeReading],
// [ResumeWriting], [Unbind] → [Unbound], [Disconnect] → [Disconnected]. A
// socket tells its handler [Received] for each datagram and [ErrorReceived]
// for an ICMP error on a connected socket. Every command is accepted as a
// value or as a pointer; replies go to the command's sender, or to the
// handler when the sender is zero (a Tell from outside any actor). A socket
// closes when its handler stops.
//
// Socket options are typed values: [Broadcast], [IPv6Only], [MulticastJoin],
// [MulticastInterface], [MulticastLoopback], [MulticastHops], and netio's
// ReuseAddr, ReusePort, ReceiveBufferSize and SendBufferSize.
//
// # No allocation per datagram
//
// A socket reads into buffers its loop owns and hands a same-loop handler a
// [Received] whose bytes the socket owns (see [Received] for how long they live);
// a handler on another loop, or a blocking one, gets a copy. A sender that
// keeps one *[Send] (or one *[SendMany]) per datagram in flight, and acks
// that are pointers, zero-size or nil, costs no allocation either: the socket
// sends while it processes the command, or copies into its own buffer when
// it coalesces, and keeps no reference to the caller's memory.
//
// # Flow control
//
// Reading: [SuspendReading] turns EPOLLIN off. The kernel queues what fits
// in SO_RCVBUF and drops the rest, and the drops are counted (SO_RXQ_OVFL);
// the process buffers nothing. In pull mode (Bind.PullMode) the socket reads
// only when asked, one read per [ResumeReading].
//
// Writing: a send the kernel refuses with EAGAIN is answered with
// [CommandFailed] and [ErrWouldBlock]; from then on every Send of that sender
// is refused likewise until it sends [ResumeWriting], which the socket
// answers with [WritingResumed] once EPOLLOUT reports room. Retrying the
// refused datagrams then keeps their order (Akka's NACK-with-resume). Acks
// give the ACK-paced alternative: an ack means the datagram is in the kernel.
//
// # Batching
//
// A read takes up to Batching.ReadBatch datagrams with one recvmmsg. The
// Sends a socket processes in one loop turn are coalesced
// (Batching.WriteBatch): a run of them to one target with equal sizes leaves
// as one sendmsg with UDP GSO (up to 64 datagrams, 65,507 bytes), the rest
// with one sendmmsg. An echo handler answering a burst of datagrams thus costs a few
// system calls per burst. [SendMany] sends a window of datagrams at once, the
// same way, without a copy.
//
// # Metrics
//
// When the system has a Registerer, one collector per system exports
// counters summed over its sockets: ioactor_udp_datagrams_received_total,
// ioactor_udp_datagrams_sent_total, ioactor_udp_received_bytes_total,
// ioactor_udp_sent_bytes_total, ioactor_udp_kernel_drops_total,
// ioactor_udp_datagrams_truncated_total,
// ioactor_udp_send_failures_total{reason}, ioactor_udp_errors_received_total,
// ioactor_udp_syscalls_total{op}, ioactor_udp_sockets_open and
// ioactor_udp_sockets_opened_total. The sockets update them with atomic adds
// on their loops; the collector reads them at scrape time.
//
// # Limitations
//
//   - Linux only, like netio.
//   - Unconnected sockets do not report ICMP errors (IP_RECVERR is not set),
//     as Linux by default.
//   - Kernel drops are seen only with the next datagram read: the counter
//     moves when reading resumes.
//   - A datagram longer than Batching.MaxDatagramSize is dropped and counted,
//     not delivered truncated.
//   - UDP GRO (coalesced receive) is not used: GSO traffic is segmented by
//     the kernel before it reaches a socket of this package.
//   - IPv6 multicast needs an interface with a multicast route: Linux's lo
//     has none (sending fails with ENETUNREACH); IPv4 multicast works on lo
//     with MulticastInterface("lo").
//   - Linux never answers EAGAIN to a UDP send over loopback (each packet is
//     orphaned from its socket on transmit), so send back-pressure appears
//     only on real interfaces: with a full qdisc or an unresolved neighbour.
package udp
