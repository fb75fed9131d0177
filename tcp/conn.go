package tcp

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/netio"
)

// Sentinel causes carried by CommandFailed and ErrorClosed.
var (
	// ErrWritePending: a write arrived while another was pending (the NACK),
	// or while writing is suspended until ResumeWriting.
	ErrWritePending = errors.New("tcp: a write is pending")
	// ErrClosing: a write or close arrived after the connection began closing.
	ErrClosing = errors.New("tcp: connection is closing")
	// ErrConnectTimeout: Connect.Timeout elapsed.
	ErrConnectTimeout = errors.New("tcp: connect timed out")
	// ErrHandlerTerminated: the registered handler stopped, so the connection
	// closed (the death pact).
	ErrHandlerTerminated = errors.New("tcp: handler terminated")
	// ErrShortFile: a WriteFile's file ended before Count bytes.
	ErrShortFile = errors.New("tcp: file shorter than the requested count")
)

// connState is the lifecycle of a connection actor:
//
//	connecting ──► waitingRegister ──► open ──► closing ──► (stopped)
//	                      │              │
//	                      └──────────────┴──► (stopped: register timeout, Abort, error)
type connState uint8

const (
	stateConnecting connState = iota
	stateWaitingRegister
	stateOpen
)

// closeKind is what the connection does once pending writes are flushed.
type closeKind uint8

const (
	closeNone closeKind = iota
	closeClose
	closeConfirmed
	closePeer // the peer's FIN without keepOpenOnPeerClosed
)

type segment struct {
	data      []byte
	file      *os.File
	off, left int64
	ack       any
	transient bool // data must be copied if not written during this drain
}

type registerTimeout struct{}
type connectTimeout struct{}

// conn is the actor that owns one TCP socket. The fields a message touches
// come first (with many connections each cache line is a likely miss),
// after the actor's runtime state, which lives in the same object.
type conn struct {
	netio.ActorCell

	fd    int
	state connState
	pull  bool

	// Reading (edge-triggered: readable is the level we track).
	readable      bool
	hup           bool // the peer's FIN (or an error) has been signalled
	suspended     bool // SuspendReading, or pull mode waiting for ResumeReading
	handedOver    bool // HandOverReading: suspended for good
	finTold       bool // FINArrived sent
	peerClosed    bool // read returned 0
	confirmedWait bool // ConfirmedClose sent FIN: read until the peer's FIN

	// Writing.
	writable     bool
	pending      bool
	writeSuspend bool // useResumeWriting: a write failed, waiting for ResumeWriting
	spillBig     bool // spill grew past maxSpillKept: drop it once idle
	closing      closeKind

	keepOpen, useResume bool
	nackLogged          bool // refused has logged this connection's first plain NACK
	registered          bool // fd is in the loop's poller (netio closes it at stop)

	handler    netio.Ref
	ackTo      netio.Ref
	stats      *loopStats
	rs         recvState // what the same-loop Received points to
	delivering bool      // the handler is being handed a Received: Received.Write batches
	batched    bool      // segs holds the writes Received.Write batched, not yet tried
	ctx        *netio.Context
	segs       []segment
	segi       int
	seg1       [1]segment // segs' first backing: a single write needs no other memory

	resumeWaiters []netio.Ref
	iov           []unix.Iovec
	spill         []byte // holds the unwritten rest of transient writes

	// Who hears about it.
	commander netio.Ref // sender of Connect, or the bind handler
	connect   any       // the Connect command, for CommandFailed
	regTO     time.Duration

	remote, local netip.AddrPort

	direct *DirectWriter // attached at Register; nil when none

	// Closing.
	closeSender netio.Ref

	timer *netio.Timer
}

// newAcceptedConn is a connection accepted by a listener.
func newAcceptedConn(fd int, remote netip.AddrPort, bindHandler netio.Ref, pull bool, regTO time.Duration) *conn {
	c := &conn{fd: fd, state: stateWaitingRegister, remote: remote, commander: bindHandler, pull: pull, suspended: pull, regTO: regTO, writable: true}
	c.segs = c.seg1[:0]
	return c
}

func newOutgoingConn(cmd any, cc *Connect, commander netio.Ref) *conn {
	c := &conn{fd: -1, state: stateConnecting, remote: cc.RemoteAddr, commander: commander, connect: cmd, pull: cc.PullMode, suspended: cc.PullMode, regTO: cc.RegisterTimeout}
	c.segs = c.seg1[:0]
	return c
}

const connEvents = netio.EventIn | netio.EventOut | netio.EventRdHup | unix.EPOLLET

func (c *conn) PreStart(ctx *netio.Context) {
	c.stats = statsFor(ctx)
	c.ctx = ctx
	c.rs.c, c.rs.conn = c, ctx.Self()
	if c.state == stateConnecting {
		c.startConnect(ctx)
		return
	}
	if err := ctx.Register(c.fd, connEvents, c); err != nil {
		ctx.Logger().Error("tcp: register accepted connection", "err", err)
		ctx.Stop()
		return
	}
	c.registered = true
	c.local, _ = netio.LocalAddr(c.fd)
	c.stats.opened.Add(1)
	c.announce(ctx)
}

func (c *conn) startConnect(ctx *netio.Context) {
	cmd := c.connect
	cc := asConnect(cmd)
	fail := func(err error) {
		ctx.Tell(c.commander, CommandFailed{Cmd: cmd, Cause: fmt.Errorf("tcp: connect %v: %w", cc.RemoteAddr, err)})
		ctx.Stop()
	}
	fd, err := netio.Socket(cc.RemoteAddr, unix.SOCK_STREAM, unix.IPPROTO_TCP)
	if err != nil {
		fail(err)
		return
	}
	c.fd = fd
	// From here the fd is the actor's: netio closes it when the actor stops.
	if err := ctx.Register(fd, connEvents, c); err != nil {
		fail(err)
		return
	}
	c.registered = true
	if err := applyConnOptions(fd, cc.Options); err != nil {
		fail(err)
		return
	}
	if cc.LocalAddr.IsValid() {
		if err := unix.Bind(fd, netio.Sockaddr(cc.LocalAddr)); err != nil {
			fail(os.NewSyscallError("bind", err))
			return
		}
	}
	err = unix.Connect(fd, netio.Sockaddr(cc.RemoteAddr))
	switch {
	case err == nil:
		c.connected(ctx)
	case errors.Is(err, unix.EINPROGRESS):
		if cc.Timeout > 0 {
			c.timer = ctx.After(cc.Timeout, connectTimeout{})
		}
	default:
		fail(os.NewSyscallError("connect", err))
	}
}

func (c *conn) connected(ctx *netio.Context) {
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	c.state = stateWaitingRegister
	c.writable = true
	c.local, _ = netio.LocalAddr(c.fd)
	c.stats.opened.Add(1)
	c.announce(ctx)
}

// announce sends Connected and arms the register timeout.
func (c *conn) announce(ctx *netio.Context) {
	ctx.Tell(c.commander, Connected{Socket: ctx.Self(), LocalAddr: c.local, RemoteAddr: c.remote})
	to := c.regTO
	if to == 0 {
		to = 5 * time.Second
	}
	if to > 0 {
		c.timer = ctx.After(to, registerTimeout{})
	}
}

func (c *conn) OnEvents(ctx *netio.Context, ev uint32) {
	if c.state == stateConnecting {
		if ev&(netio.EventOut|netio.EventErr|netio.EventHup) == 0 {
			return
		}
		soerr, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err == nil && soerr != 0 {
			err = unix.Errno(soerr)
		}
		if err != nil {
			ctx.Tell(c.commander, CommandFailed{Cmd: c.connect, Cause: fmt.Errorf("tcp: connect %v: %w", c.remote, os.NewSyscallError("connect", err))})
			ctx.Stop()
			return
		}
		c.connected(ctx)
		return
	}
	if ev&netio.EventOut != 0 {
		c.writable = true
		if c.pending {
			c.flush(ctx)
			if c.fd < 0 {
				return
			}
		}
	}
	if ev&(netio.EventRdHup|netio.EventHup|netio.EventErr) != 0 {
		c.hup = true // sticky: the edge will not come again
	}
	if c.handedOver {
		c.handedOverEvents(ctx, ev)
		return
	}
	if ev&(netio.EventIn|netio.EventRdHup|netio.EventHup|netio.EventErr) != 0 {
		c.readable = true
		c.read(ctx)
	}
}

// read performs one recvfrom(2) if the handler wants data, and schedules another
// turn if the socket may hold more.
func (c *conn) read(ctx *netio.Context) {
	if c.state != stateOpen || c.suspended || !c.readable || c.peerClosed || c.fd < 0 {
		return
	}
	l := ctx.Loop()
	buf := l.ReadBuffer()
	n, err := sysRead(c.fd, buf)
	switch {
	case n > 0:
		addOwned(&c.stats.bytesIn, uint64(n))
		if c.pull {
			c.suspended = true
		}
		// A short read drained the socket; with edge-triggered polling the
		// next arrival raises a new event, so no read is wasted on EAGAIN.
		c.readable = n == len(buf) || c.hup
		if c.readable && !c.suspended {
			ctx.Wake(c.fd, netio.EventIn)
		}
		// Last: a handler of this loop runs now, within this turn (what it
		// sends the connection is queued behind this callback).
		if c.handler.Loop() == l {
			c.rs.data = buf[:n]
			c.delivering = true
			ctx.Deliver(c.handler, Received{&c.rs})
			c.delivering = false
			if c.batched {
				c.flushBatch(ctx)
			}
		} else {
			ctx.Tell(c.handler, Received{&recvState{data: append([]byte(nil), buf[:n]...), conn: ctx.Self()}})
		}
	case n == 0 && err == nil:
		c.readable = false
		c.onPeerFIN(ctx)
	case errors.Is(err, unix.EAGAIN):
		c.readable = false
	case errors.Is(err, unix.EINTR):
		ctx.Wake(c.fd, netio.EventIn)
	default:
		c.fail(ctx, "read", err)
	}
}

func (c *conn) onPeerFIN(ctx *netio.Context) {
	c.peerClosed = true
	switch {
	case c.confirmedWait:
		c.finish(ctx, ConfirmedClosed{}, "confirmed")
	case c.keepOpen:
		ctx.Tell(c.handler, PeerClosed{})
	default:
		c.startClose(ctx, closePeer, netio.Ref{})
	}
}

func (c *conn) Receive(ctx *netio.Context, msg any) {
	if m, ok := msg.(*Write); ok { // the hot path's command, before the type switch
		c.write(ctx, msg, segment{data: m.Data, ack: m.Ack, transient: m.Transient})
		return
	}
	switch m := msg.(type) {
	case Write:
		c.write(ctx, msg, segment{data: m.Data, ack: m.Ack, transient: m.Transient})
	case *Write:
		c.write(ctx, msg, segment{data: m.Data, ack: m.Ack, transient: m.Transient})
	case WriteFile, *WriteFile, CompoundWrite:
		c.writeCompound(ctx, msg)
	case Register:
		c.register(ctx, m)
	case *Register:
		c.register(ctx, *m)
	case SuspendReading, *SuspendReading:
		c.suspended = true
	case HandOverReading, *HandOverReading:
		c.handOverReading(ctx, msg)
	case ResumeReading, *ResumeReading:
		if c.handedOver {
			break
		}
		c.suspended = false
		if c.readable {
			ctx.Wake(c.fd, netio.EventIn)
		}
	case ResumeWriting, *ResumeWriting:
		if !c.pending {
			c.writeSuspend = false
			ctx.Tell(replyTo(ctx, c.handler), WritingResumed{})
			return
		}
		c.resumeWaiters = append(c.resumeWaiters, replyTo(ctx, c.handler))
	case Close, *Close:
		c.startClose(ctx, closeClose, replyTo(ctx, c.handler))
	case ConfirmedClose, *ConfirmedClose:
		c.startClose(ctx, closeConfirmed, replyTo(ctx, c.handler))
	case Abort, *Abort:
		c.abort(ctx, replyTo(ctx, c.handler))
	case registerTimeout:
		if c.state == stateWaitingRegister {
			ctx.Logger().Debug("tcp: no Register in time; closing", "remote", c.remote)
			c.stats.closed(reasonRegisterTimeout)
			c.closeNow(ctx)
		}
	case connectTimeout:
		if c.state == stateConnecting {
			ctx.Tell(c.commander, CommandFailed{Cmd: c.connect, Cause: fmt.Errorf("tcp: connect %v: %w", c.remote, ErrConnectTimeout)})
			ctx.Stop()
		}
	case netio.Terminated:
		if m.Ref == c.handler {
			c.stats.closed(reasonHandler)
			c.closeNow(ctx)
		}
	}
}

// replyTo is the sender of the current message, or def when it has none.
func replyTo(ctx *netio.Context, def netio.Ref) netio.Ref {
	if s := ctx.Sender(); !s.IsZero() {
		return s
	}
	return def
}

func (c *conn) register(ctx *netio.Context, r Register) {
	if c.state != stateWaitingRegister {
		return // a second Register is ignored, as in Akka
	}
	c.handler = r.Handler
	if c.handler.IsZero() {
		c.handler = ctx.Sender()
	}
	if c.handler.IsZero() {
		ctx.Logger().Error("tcp: Register without a handler; closing", "remote", c.remote)
		c.closeNow(ctx)
		return
	}
	c.keepOpen, c.useResume = r.KeepOpenOnPeerClosed, r.UseResumeWriting
	c.state = stateOpen
	if c.timer != nil {
		c.timer.Stop()
		c.timer = nil
	}
	ctx.Watch(c.handler)
	if r.Direct != nil && c.closing == closeNone {
		c.direct = r.Direct
		c.direct.attach(c.fd, c.pending, c.stats)
	}
	// Reading may have been suspended or resumed before Register: that state
	// stands. The socket may already hold data (edge-triggered: the edge may
	// have passed before Register), so try a read.
	c.readable = true
	ctx.Wake(c.fd, netio.EventIn)
}

func (c *conn) nack(ctx *netio.Context, cmd any, cause error) {
	ctx.Tell(replyTo(ctx, c.handler), CommandFailed{Cmd: cmd, Cause: cause})
}

// canWrite refuses a write that cannot start now, telling the sender.
func (c *conn) canWrite(ctx *netio.Context, cmd any) bool {
	switch {
	case c.closing != closeNone || c.fd < 0:
		c.nack(ctx, cmd, ErrClosing)
		return false
	case c.pending || c.writeSuspend:
		if c.useResume {
			c.writeSuspend = true
		} else {
			c.refused(ctx, cmd)
		}
		c.nack(ctx, cmd, ErrWritePending)
		return false
	}
	return true
}

// refused makes a plain NACK loud: the refused write is lost unless the
// handler resends it, and a handler written without flow control (Akka's
// SimplisticHandler, an echo that ignores CommandFailed) loses bytes
// silently otherwise. Go cannot tell whether the handler's Receive handled
// the CommandFailed, so the connection counts every plain NACK
// (ioactor_tcp_writes_refused_total) and logs its first one. With
// UseResumeWriting the NACK is the protocol the handler asked for: no log.
func (c *conn) refused(ctx *netio.Context, cmd any) {
	c.stats.writesRefused.Add(1)
	if !c.nackLogged {
		c.nackLogged = true
		ctx.Logger().Warn(LogWriteRefused, "remote", c.remote, "cmd", fmt.Sprintf("%T", cmd))
	}
}

// LogWriteRefused is the message of the warning a connection logs the first
// time it refuses a write because another is pending, without
// Register.UseResumeWriting: the refused bytes are lost unless the handler
// resends them on CommandFailed.
const LogWriteRefused = "tcp: write refused while another is pending (NACK): its bytes are lost unless the handler resends them; pace writes by their acks or use package backpressure"

func (c *conn) write(ctx *netio.Context, cmd any, s segment) {
	if c.canWrite(ctx, cmd) {
		c.send(ctx, s)
	}
}

// batch is a Write given by Received.Write while the handler handles a
// Received delivered directly from read (the connection's code is on the
// stack, below the handler's, in a consistent state): it joins the writes
// flushBatch sends once the delivery returns. It runs on the handler's
// goroutine, which is the connection's, and uses the connection's Context
// (valid: the connection's read callback is running).
func (c *conn) batch(w *Write) {
	if !c.batched {
		if !c.canWrite(c.ctx, w) {
			return
		}
		c.batched = true
		c.segs = c.segs[:0]
	}
	c.segs = append(c.segs, segment{data: w.Data, ack: w.Ack, transient: w.Transient})
}

// flushBatch writes what batch gathered: one sendto(2) for one Write, one
// writev(2) for several.
func (c *conn) flushBatch(ctx *netio.Context) {
	c.batched = false // nothing but batch reached the connection meanwhile
	if len(c.segs) == 1 {
		s := c.segs[0]
		c.segs[0] = segment{}
		c.segs = c.segs[:0]
		c.send(ctx, s)
		return
	}
	c.start(ctx)
}

// send writes one accepted segment: straight to sendto(2) when the socket is
// writable, the long way (start) for the rest.
func (c *conn) send(ctx *netio.Context, s segment) {
	if c.writable && c.direct == nil {
		// Nothing is pending (canWrite): one sendto(2) straight from the
		// command, and if the kernel takes it all, the ack. What flush
		// does for one segment, without the segment bookkeeping. (With a
		// DirectWriter the long way marks the connection busy first, so
		// that no direct write lands inside a short write's rest.)
		n, err := sysWrite(c.fd, s.data)
		if n > 0 {
			c.stats.bytesOut.Add(uint64(n)) // a DirectWriter adds too: not addOwned
			s.data = s.data[n:]
		}
		switch {
		case err == nil && len(s.data) == 0:
			if s.ack != nil {
				ctx.Deliver(replyTo(ctx, c.handler), s.ack)
			}
			c.afterWrite(ctx)
			return
		case err != nil && !errors.Is(err, unix.EAGAIN):
			c.fail(ctx, "write", err)
			return
		}
		c.writable = false // a short write or EAGAIN: the kernel is full
	}
	c.segs = append(c.segs[:0], s)
	c.start(ctx)
}

func (c *conn) writeCompound(ctx *netio.Context, cmd any) {
	if !c.canWrite(ctx, cmd) {
		return
	}
	c.segs = c.segs[:0]
	if err := c.addSegments(cmd); err != nil {
		c.releaseSegments()
		c.nack(ctx, cmd, err)
		return
	}
	c.start(ctx)
}

func (c *conn) addSegments(cmd any) error {
	switch m := cmd.(type) {
	case Write:
		c.segs = append(c.segs, segment{data: m.Data, ack: m.Ack, transient: m.Transient})
	case *Write:
		c.segs = append(c.segs, segment{data: m.Data, ack: m.Ack, transient: m.Transient})
	case WriteFile:
		return c.addFile(&m)
	case *WriteFile:
		return c.addFile(m)
	case CompoundWrite:
		for _, w := range m {
			if err := c.addSegments(w); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("tcp: unknown write command %T", cmd)
	}
	return nil
}

func (c *conn) addFile(w *WriteFile) error {
	f, err := os.Open(w.Path)
	if err != nil {
		return fmt.Errorf("tcp: write file: %w", err)
	}
	left := w.Count
	if left < 0 {
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return fmt.Errorf("tcp: write file: %w", err)
		}
		left = max(st.Size()-w.Offset, 0)
	}
	c.segs = append(c.segs, segment{file: f, off: w.Offset, left: left, ack: w.Ack})
	return nil
}

func (c *conn) releaseSegments() {
	for i := range c.segs {
		if c.segs[i].file != nil {
			c.segs[i].file.Close()
		}
		c.segs[i] = segment{}
	}
	c.segs = c.segs[:0]
	c.segi = 0
}

func (c *conn) start(ctx *netio.Context) {
	c.pending = true
	c.direct.setBusy(true)
	c.segi = 0
	c.ackTo = replyTo(ctx, c.handler)
	if c.writable {
		c.flush(ctx)
	}
	if c.pending {
		c.spillTransient()
	}
}

// spillTransient copies the unwritten part of transient writes into the
// connection's own buffer, before the loop reuses the memory they point to.
func (c *conn) spillTransient() {
	c.spill = c.spill[:0]
	for i := c.segi; i < len(c.segs); i++ {
		if s := &c.segs[i]; s.transient {
			off := len(c.spill)
			c.spill = append(c.spill, s.data...)
			s.data, s.transient = c.spill[off:len(c.spill):len(c.spill)], false
		}
	}
	if cap(c.spill) > maxSpillKept {
		c.spillBig = true
	}
}

// flush writes as much of the pending write as the kernel takes. Each part's
// ack is sent once its last byte is in the kernel; the pending state is
// cleared before the last ack is sent, so a Write sent in answer to the ack
// is accepted.
func (c *conn) flush(ctx *netio.Context) {
	for c.segi < len(c.segs) {
		s := &c.segs[c.segi]
		var err error
		if s.file != nil {
			err = c.sendFile(s)
		} else {
			err = c.writeData()
		}
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				c.writable = false
				return
			}
			c.fail(ctx, "write", err)
			return
		}
		// Acknowledge every completed part.
		for c.segi < len(c.segs) && c.segs[c.segi].done() {
			s := &c.segs[c.segi]
			if s.file != nil {
				s.file.Close()
				s.file = nil
			}
			ack := s.ack
			c.segi++
			if c.segi == len(c.segs) {
				c.pending = false
				c.releaseSegments()
			}
			if ack != nil {
				ctx.Deliver(c.ackTo, ack)
			}
		}
	}
	c.pending = false
	c.afterWrite(ctx)
}

func (s *segment) done() bool {
	if s.file != nil {
		return s.left == 0
	}
	return len(s.data) == 0
}

// writeData writes the run of in-memory parts starting at segi with one
// sendto(2) or writev(2).
func (c *conn) writeData() error {
	s := &c.segs[c.segi]
	if len(s.data) == 0 {
		return nil
	}
	var n int
	var err error
	end := c.segi + 1
	for end < len(c.segs) && c.segs[end].file == nil && end-c.segi < 64 {
		end++
	}
	if end-c.segi == 1 {
		n, err = sysWrite(c.fd, s.data)
	} else {
		c.iov = c.iov[:0]
		for i := c.segi; i < end; i++ {
			if d := c.segs[i].data; len(d) > 0 {
				v := unix.Iovec{Base: &d[0]}
				v.SetLen(len(d))
				c.iov = append(c.iov, v)
			}
		}
		n, err = writev(c.fd, c.iov)
	}
	if n > 0 {
		c.stats.bytesOut.Add(uint64(n)) // a DirectWriter adds too: not addOwned
		for i := c.segi; i < end && n > 0; i++ {
			k := min(n, len(c.segs[i].data))
			c.segs[i].data = c.segs[i].data[k:]
			n -= k
		}
	}
	if err != nil {
		return err
	}
	if !c.segs[c.segi].done() {
		return unix.EAGAIN // partial write: the kernel is full
	}
	return nil
}

// The socket's reads and writes are raw system calls: the socket is
// non-blocking, so the call never blocks and the runtime's bookkeeping for a
// call that might (entersyscall, exitsyscall, a processor hand-off when it
// runs long) is pure cost — a quarter of the loop's own instructions per
// message in the echo benchmark. sendfile stays a normal call: reading the
// file may block on the disk.
//
// They are recvfrom(2) and sendto(2) with no address, not read(2) and
// write(2): the same on a connected socket, but they go from the
// descriptor straight to the socket, where read and write pass through the
// file layer first (the file position lock, rw_verify_area, the security
// hook on file access, the kiocb, fsnotify): a few per cent of the
// kernel's time per message in a small-message echo. sendto also takes
// MSG_NOSIGNAL: a write to a connection the peer reset fails with EPIPE
// without raising SIGPIPE first.

// errEAGAIN is EAGAIN as an error made once: the common error needs no
// conversion on the hot path.
var errEAGAIN error = unix.EAGAIN

func errnoErr(e unix.Errno) error {
	if e == unix.EAGAIN {
		return errEAGAIN
	}
	return e
}

func sysRead(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), 0, 0, 0)
	if e != 0 {
		return -1, errnoErr(e)
	}
	return int(n), nil
}

func sysWrite(fd int, p []byte) (int, error) {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)), unix.MSG_NOSIGNAL, 0, 0)
	if e != 0 {
		return -1, errnoErr(e)
	}
	return int(n), nil
}

func writev(fd int, iov []unix.Iovec) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
	if e != 0 {
		return 0, errnoErr(e)
	}
	return int(n), nil
}

func (c *conn) sendFile(s *segment) error {
	for s.left > 0 {
		n, err := unix.Sendfile(c.fd, int(s.file.Fd()), &s.off, int(min(s.left, 1<<30)))
		if n > 0 {
			s.left -= int64(n)
			c.stats.bytesOut.Add(uint64(n)) // a DirectWriter adds too: not addOwned
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("%w: %s", ErrShortFile, s.file.Name())
		}
	}
	return nil
}

// maxSpillKept bounds the spill buffer an idle connection keeps: one read's
// worth (the loop's read buffer is 128 KiB), so that an echo of full reads
// into a full socket does not allocate a spill buffer per read.
const maxSpillKept = 128 << 10

// afterWrite runs when no write is pending any more.
func (c *conn) afterWrite(ctx *netio.Context) {
	c.direct.setBusy(false)
	if c.spillBig {
		c.spill, c.spillBig = nil, false
	}
	if len(c.resumeWaiters) > 0 {
		c.writeSuspend = false
		for _, w := range c.resumeWaiters {
			ctx.Tell(w, WritingResumed{})
		}
		c.resumeWaiters = c.resumeWaiters[:0]
	}
	if c.closing != closeNone {
		c.closeFlushed(ctx)
	}
}

func (c *conn) startClose(ctx *netio.Context, k closeKind, sender netio.Ref) {
	if c.fd < 0 {
		return
	}
	if c.closing != closeNone && k != closePeer {
		ctx.Tell(sender, CommandFailed{Cmd: closeCommand(k), Cause: ErrClosing})
		return
	}
	if c.state != stateOpen {
		// Not registered yet: nothing to flush to anyone.
		c.handler = sender
	}
	c.closing, c.closeSender = k, sender
	c.direct.detach()
	if c.state != stateOpen || !c.pending {
		c.closeFlushed(ctx)
	}
}

func closeCommand(k closeKind) any {
	if k == closeConfirmed {
		return ConfirmedClose{}
	}
	return Close{}
}

// closeFlushed runs when every pending write of a closing connection is in
// the kernel.
func (c *conn) closeFlushed(ctx *netio.Context) {
	switch c.closing {
	case closeClose:
		c.shutdownWrite()
		c.discardInput()
		c.finish(ctx, Closed{}, "closed")
	case closePeer:
		c.finish(ctx, PeerClosed{}, "peer")
	case closeConfirmed:
		c.shutdownWrite()
		if c.peerClosed {
			c.finish(ctx, ConfirmedClosed{}, "confirmed")
			return
		}
		c.confirmedWait = true
		// The FIN may be waiting already.
		c.readable = true
		ctx.Wake(c.fd, netio.EventIn)
	}
}

func (c *conn) shutdownWrite() { unix.Shutdown(c.fd, unix.SHUT_WR) }

// discardInput reads and drops what is left in the receive buffer, so that
// close(2) sends FIN, not RST (which would destroy data still in flight to
// the peer). It runs while the loop drains its queue, so it must not use the
// loop's shared read buffer.
func (c *conn) discardInput() {
	var buf [4096]byte
	for range 64 {
		n, err := unix.Read(c.fd, buf[:])
		if n <= 0 || err != nil {
			return
		}
	}
}

// finish closes the socket, tells the handler (and the close's sender) ev,
// and stops the actor.
func (c *conn) finish(ctx *netio.Context, ev ConnectionClosed, reason string) {
	c.stats.closed(reason)
	c.closeNow(ctx)
	ctx.Tell(c.handler, ev)
	if c.closeSender != c.handler {
		ctx.Tell(c.closeSender, ev)
	}
}

func (c *conn) closeNow(ctx *netio.Context) {
	c.direct.detach()
	if c.fd >= 0 {
		ctx.CloseFD(c.fd)
		c.fd = -1
	}
	c.releaseSegments()
	ctx.Stop()
}

func (c *conn) abort(ctx *netio.Context, sender netio.Ref) {
	if c.fd < 0 {
		return
	}
	unix.SetsockoptLinger(c.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	if c.state != stateOpen {
		c.handler = sender
	}
	c.closeSender = sender
	c.finish(ctx, Aborted{}, "aborted")
}

func (c *conn) fail(ctx *netio.Context, op string, err error) {
	cause := &net.OpError{Op: op, Net: "tcp", Source: net.TCPAddrFromAddrPort(c.local), Addr: net.TCPAddrFromAddrPort(c.remote), Err: os.NewSyscallError(op, err)}
	if errors.Is(err, io.EOF) || errors.Is(err, ErrShortFile) {
		cause.Err = err
	}
	c.stats.closed("error")
	c.closeNow(ctx)
	ctx.Tell(c.handler, ErrorClosed{Cause: cause})
}

func (c *conn) PostStop(ctx *netio.Context) {
	c.direct.detach()
	if c.fd >= 0 && !c.registered {
		unix.Close(c.fd) // never reached its loop (the system shut down)
	}
	c.releaseSegments()
	if c.timer != nil {
		c.timer.Stop()
	}
}

func asConnect(cmd any) *Connect {
	switch m := cmd.(type) {
	case Connect:
		return &m
	case *Connect:
		return m
	}
	return nil
}
