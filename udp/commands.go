package udp

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"github.com/ioactor/ioactor/netio"
)

// Commands to the manager ([Manager]). Each is accepted as a value or as a
// pointer. The manager spawns a socket actor, which answers the handler.

// Bind opens an unconnected socket bound to LocalAddr. The socket answers
// [Bound] or [CommandFailed] and then delivers every datagram it reads to
// Handler as a [Received].
type Bind struct {
	// Handler receives the socket's events; zero means the command's sender.
	Handler netio.Ref
	// LocalAddr is the address to bind; port 0 picks a free port. An IPv6
	// wildcard ("[::]:p") also receives IPv4 unless IPv6Only(true) is given.
	LocalAddr netip.AddrPort
	// Options are applied in order before the socket is bound. The slice
	// must not be modified after the command is sent.
	Options []netio.SocketOption
	// PullMode starts the socket with reading suspended; each ResumeReading
	// then performs one read (one datagram, or up to Batching.ReadBatch).
	PullMode bool
	// Batching tunes batched system calls; the zero value is the default.
	Batching Batching
}

// Connect opens a connected socket: it sends only to RemoteAddr and the
// kernel delivers only datagrams from RemoteAddr. The socket answers
// [Connected] or [CommandFailed]. ICMP errors for the peer (port
// unreachable, host unreachable) arrive as [ErrorReceived].
type Connect struct {
	// Handler receives the socket's events; zero means the command's sender.
	Handler netio.Ref
	// RemoteAddr is the peer.
	RemoteAddr netip.AddrPort
	// LocalAddr, when valid, is bound before connecting.
	LocalAddr netip.AddrPort
	// Options are applied in order before the socket is bound or connected.
	Options []netio.SocketOption
	// PullMode: see [Bind].
	PullMode bool
	// Batching tunes batched system calls; the zero value is the default.
	Batching Batching
}

// SimpleSender opens a send-only socket, for clients that never listen. The
// socket answers [SimpleSenderReady] or [CommandFailed]. Datagrams sent back
// to it are not read (the kernel drops them once its queue is full).
type SimpleSender struct {
	// Handler receives the socket's events; zero means the command's sender.
	Handler netio.Ref
	// LocalAddr, when valid, is bound and chooses the family. When zero the
	// socket is a dual-stack IPv6 socket (IPv4 if the host has no IPv6) that
	// can send to IPv4 and IPv6 targets.
	LocalAddr netip.AddrPort
	// Options are applied in order when the socket is opened.
	Options []netio.SocketOption
	// Batching tunes batched system calls; the zero value is the default.
	Batching Batching
}

// Batching tunes the batched system calls of one socket. The zero value is
// the default; a negative value turns the feature off.
type Batching struct {
	// ReadBatch is the most datagrams one read takes from the kernel, with
	// recvmmsg. Zero means 32; 1 or a negative value means one recvmsg per
	// datagram. The largest accepted value is 1024.
	ReadBatch int
	// MaxDatagramSize is the longest datagram the socket receives whole.
	// Longer ones are truncated by the kernel: the socket drops them and
	// counts them (ioactor_udp_datagrams_truncated_total). Zero means 65535,
	// any UDP datagram. The receive buffer, ReadBatch × MaxDatagramSize
	// bytes, belongs to the loop and is shared by its UDP sockets.
	MaxDatagramSize int
	// WriteBatch is the most [Send]s the socket coalesces. The Sends it
	// processes in one turn of its loop (up to 16 KiB each) are copied into
	// a socket buffer and go to the kernel together after the turn's queue
	// drain: one GSO sendmsg for each run to one target with equal sizes,
	// one sendmmsg for the rest; their acks follow. Zero means 64; 1 or a
	// negative value sends each Send when the socket processes it, without
	// a copy.
	WriteBatch int
	// NoGSO turns off UDP generic segmentation offload (UDP_SEGMENT). It is
	// used by default, for SendMany and coalesced Sends; if the kernel
	// refuses it (an old kernel, a segment larger than the path MTU allows,
	// no checksum offload) the socket falls back to sendmmsg for good.
	NoGSO bool
}

// Commands to a socket (the Socket of Bound, Connected, SimpleSenderReady, or
// the sender of any of its events). Each is accepted as a value or as a
// pointer.

// Send sends one datagram. The ack, when not nil, is sent back as is to the
// command's sender (the handler if the sender is zero) once the datagram is
// in the kernel. When the kernel's send buffer is full the socket answers
// [CommandFailed] with [ErrWouldBlock] and rejects every later Send and
// SendMany from that sender until it sends [ResumeWriting] and gets
// [WritingResumed]; the datagrams it retries then go out in order.
//
// Data belongs to the socket until the ack, or the CommandFailed, arrives.
// The socket never keeps it after processing the command: it either sends it
// at once or, when it coalesces Sends (Batching.WriteBatch), copies it. A
// sender may therefore reuse one *Send, and one buffer, per datagram in
// flight, with no allocation.
type Send struct {
	Data []byte
	// Target is the destination. On a connected socket it must be zero or
	// the remote address.
	Target netip.AddrPort
	// Ack, when not nil, is sent back once the datagram is in the kernel.
	Ack any
}

// SendMany sends several datagrams to one target with as few system calls as
// the kernel allows: one sendmsg with UDP_SEGMENT (GSO) for each run of
// equal-size datagrams (only the last may be shorter), up to 64 datagrams and
// 65,507 bytes per call, otherwise sendmmsg. This is the command for a window
// of packets (TFTP DATA blocks, for instance).
//
// The ack is sent once every datagram is in the kernel. When the kernel takes
// only some of them the answer is CommandFailed whose Cause is a
// *[PartialSendError] giving how many went out (in order, from the first).
// Datagrams and the slices they hold belong to the socket until the ack or
// the CommandFailed; the socket sends them while it processes the command and
// keeps no reference afterwards.
type SendMany struct {
	Datagrams [][]byte
	// Target is the destination; see [Send].
	Target netip.AddrPort
	// Ack, when not nil, is sent back once all datagrams are in the kernel.
	Ack any
}

// Unbind closes the socket; it answers [Unbound] (to the command's sender, or
// the handler if the sender is zero) once the descriptor is closed, and
// stops. Sends it coalesced before are flushed first.
type Unbind struct{}

// Disconnect closes a socket like [Unbind] and answers [Disconnected].
type Disconnect struct{}

// SuspendReading stops reading: the socket turns EPOLLIN off, the kernel's
// queue fills and then the kernel drops datagrams, counted in
// ioactor_udp_kernel_drops_total. Nothing is buffered in the process.
type SuspendReading struct{}

// ResumeReading starts reading again after [SuspendReading]. In pull mode it
// asks for one read.
type ResumeReading struct{}

// ResumeWriting asks for [WritingResumed] once the socket can take Sends from
// this sender again, after a CommandFailed with [ErrWouldBlock]. Send it
// after the last CommandFailed you expect; the socket rejects every Send of
// yours until then, so your retries cannot overtake earlier datagrams.
type ResumeWriting struct{}

// Events from a socket to its handler. The socket is the sender of each
// (ctx.Sender() in the handler), as in Akka I/O.

// Bound answers Bind.
type Bound struct {
	Socket    netio.Ref
	LocalAddr netip.AddrPort
}

// Connected answers Connect.
type Connected struct {
	Socket     netio.Ref
	LocalAddr  netip.AddrPort
	RemoteAddr netip.AddrPort
}

// SimpleSenderReady answers SimpleSender.
type SimpleSenderReady struct {
	Socket    netio.Ref
	LocalAddr netip.AddrPort
}

// CommandFailed answers a command the socket could not carry out. Cmd is the
// command as it was sent (value or pointer). Cause wraps the system error
// (errors.Is works with syscall errnos); [ErrWouldBlock] means retry after
// [WritingResumed].
type CommandFailed struct {
	Cmd   any
	Cause error
}

// Unbound answers Unbind: the socket is closed.
type Unbound struct{}

// Disconnected answers Disconnect: the socket is closed.
type Disconnected struct{}

// WritingResumed answers ResumeWriting once the socket can take Sends again.
type WritingResumed struct{}

// ErrorReceived reports an error the kernel queued on the socket: on a
// connected socket, an ICMP error for an earlier datagram (errors.Is(Cause,
// syscall.ECONNREFUSED) for "port unreachable"). The socket stays open.
// Unconnected sockets do not get ICMP errors (Linux's default).
type ErrorReceived struct {
	Cause error
}

// Received is one datagram; match it as a value, like every other event
// (case udp.Received). It is one pointer wide, so the socket hands it over
// with no allocation.
//
// When the handler runs on the socket's loop (the socket is spawned there
// whenever the handler is an actor of a loop), the Received and its Data
// belong to the socket: Data aliases the loop's receive buffer and both are
// valid only until the handler's Receive returns — copy what you keep. The
// loop reads again only after it has drained its queue, so Data may be handed
// unchanged to a Send to a socket of the same loop (an echo), which sends or
// copies it in the same drain. When the handler is on another loop or is a
// blocking actor, the socket delivers a fresh copy that the handler owns.
type Received struct{ d *datagram }

type datagram struct {
	data   []byte
	sender netip.AddrPort
}

// NewReceived makes a Received carrying data from sender, for code that
// produces the event itself (a test, a layer in front of a handler).
func NewReceived(data []byte, sender netip.AddrPort) Received {
	return Received{&datagram{data, sender}}
}

// Data is the datagram's payload; nil for the zero Received.
func (r Received) Data() []byte {
	if r.d == nil {
		return nil
	}
	return r.d.data
}

// Sender is the datagram's source; an IPv4-mapped IPv6 source is given as
// plain IPv4. Zero for the zero Received.
func (r Received) Sender() netip.AddrPort {
	if r.d == nil {
		return netip.AddrPort{}
	}
	return r.d.sender
}

// ErrWouldBlock is the Cause of CommandFailed for a Send (or SendMany) the
// socket could not take: the kernel's send buffer was full (EAGAIN), or an
// earlier Send of the same sender failed so and it has not got
// [WritingResumed] since. errors.Is(ErrWouldBlock, syscall.EAGAIN) holds.
var ErrWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string        { return "udp: send buffer full; resume writing and retry" }
func (wouldBlock) Is(target error) bool { return target == syscall.EAGAIN }

// PartialSendError is the Cause of CommandFailed for a SendMany of which only
// the first Sent datagrams reached the kernel.
type PartialSendError struct {
	Sent int
	Err  error
}

func (e *PartialSendError) Error() string {
	return fmt.Sprintf("udp: sent %d datagrams, then: %v", e.Sent, e.Err)
}

func (e *PartialSendError) Unwrap() error { return e.Err }

var errConnectedTarget = errors.New("udp: a connected socket sends only to its remote address")
