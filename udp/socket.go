package udp

import (
	"fmt"
	"net/netip"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/netio"
)

const (
	defaultReadBatch  = 32
	maxBatch          = 1024 // UIO_MAXIOV: the kernel's limit per recvmmsg/sendmmsg
	maxDatagram       = 65535
	defaultWriteBatch = 64
	coalesceMaxLen    = 16 << 10 // longer Sends go to the kernel directly
	coalesceBufLen    = 64 << 10 // a socket flushes before its copy buffer grows past this
	gsoMaxSegments    = 64       // UDP_MAX_SEGMENTS on every kernel with UDP GSO
	gsoMaxBytes       = 65507    // IPv4's payload limit, also used for IPv6
	evFlush           = 1 << 27  // a Wake bit epoll never reports: flush coalesced Sends
	readInterest      = netio.EventIn
	writeInterest     = netio.EventOut
)

// socket is the actor that owns one UDP socket. All its fields belong to its
// loop; counters are atomic because the metrics collector reads them.
//
// Writing has two states: normal, and full (the kernel answered EAGAIN;
// EPOLLOUT is armed). Independently each sender that got ErrWouldBlock is in
// the blocked list until it sends ResumeWriting and the socket is writable
// again; its Sends are refused meanwhile, so retries keep their order.
type socket struct {
	e  *ext
	sp spec

	handler   netio.Ref
	fd        int
	fam       int
	local     netip.AddrPort
	remote    netip.AddrPort
	connected bool
	sameLoop  bool
	bufs      *loopBufs
	interest  uint32

	// Reading.
	readBatch int
	slot      int
	reading   bool // push mode: not suspended; pull mode: one read is owed
	lastOvfl  uint32

	// Writing.
	writeBatch     int
	gso            bool
	q              []pending // coalesced Sends, in order
	qbuf           []byte    // their copied payloads
	flushScheduled bool
	full           bool
	blocked        []blockedSender

	// Scratch for one direct sendmsg.
	name  rawAddr
	msg   unix.Msghdr
	iov   unix.Iovec
	zones zoneCache

	c counters
}

type pending struct {
	off, n  int
	name    rawAddr
	namelen uint32
	target  netip.AddrPort
	to      netio.Ref
	ack     any
	cmd     any
}

type blockedSender struct {
	ref    netio.Ref
	resume bool // ResumeWriting received; answer once writable
}

func (s *socket) PreStart(ctx *netio.Context) {
	s.handler = s.sp.handler
	if err := s.open(ctx); err != nil {
		if s.fd >= 0 {
			unix.Close(s.fd)
			s.fd = -1
		}
		ctx.Tell(s.handler, CommandFailed{Cmd: s.sp.cmd, Cause: err})
		ctx.Stop()
		return
	}
	s.bufs = s.e.loopBufs(ctx.Loop())
	s.sameLoop = s.handler.Loop() == ctx.Loop()
	b := s.sp.batch
	s.readBatch = batchSize(b.ReadBatch, defaultReadBatch)
	s.writeBatch = batchSize(b.WriteBatch, defaultWriteBatch)
	s.slot = b.MaxDatagramSize
	if s.slot <= 0 || s.slot > maxDatagram {
		s.slot = maxDatagram
	}
	s.gso = !b.NoGSO
	ctx.Watch(s.handler)
	s.e.add(s)
	self := ctx.Self()
	switch s.sp.kind {
	case kindBind:
		ctx.Tell(s.handler, Bound{Socket: self, LocalAddr: s.local})
	case kindConnect:
		ctx.Tell(s.handler, Connected{Socket: self, LocalAddr: s.local, RemoteAddr: s.remote})
	case kindSender:
		ctx.Tell(s.handler, SimpleSenderReady{Socket: self, LocalAddr: s.local})
	}
}

func batchSize(v, def int) int {
	switch {
	case v == 0:
		return def
	case v < 1:
		return 1
	case v > maxBatch:
		return maxBatch
	}
	return v
}

// open creates, configures, binds or connects and registers the socket.
func (s *socket) open(ctx *netio.Context) error {
	sp := &s.sp
	op, addr := "bind", sp.local
	switch sp.kind {
	case kindConnect:
		op, addr = "connect", sp.remote
		if !sp.remote.IsValid() {
			return fmt.Errorf("udp: connect %v: invalid address", sp.remote)
		}
	case kindSender:
		op = "open"
	}
	if sp.kind == kindBind && !sp.local.IsValid() {
		return fmt.Errorf("udp: bind %v: invalid address", sp.local)
	}
	famAddr := sp.local
	if !famAddr.IsValid() {
		famAddr = sp.remote
	}
	if !famAddr.IsValid() { // a simple sender: dual stack if the host has IPv6
		famAddr = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
	}
	s.fd = -1
	fd, err := netio.Socket(famAddr, unix.SOCK_DGRAM, unix.IPPROTO_UDP)
	if err != nil && sp.kind == kindSender && !sp.local.IsValid() {
		famAddr = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
		fd, err = netio.Socket(famAddr, unix.SOCK_DGRAM, unix.IPPROTO_UDP)
	}
	if err != nil {
		return fmt.Errorf("udp: %s %v: %w", op, addr, err)
	}
	s.fd = fd
	s.fam = unix.AF_INET
	if a := famAddr.Addr(); a.Is6() && !a.Is4In6() {
		s.fam = unix.AF_INET6
		if a.IsUnspecified() { // a wildcard: carry IPv4 too, unless an option says otherwise
			unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0)
		}
	}
	if sp.kind != kindSender {
		// Best effort: kernels without it just do not report drops.
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
	}
	if err := netio.ApplyOptions(fd, sp.options); err != nil {
		return fmt.Errorf("udp: %s %v: %w", op, addr, err)
	}
	if sp.local.IsValid() {
		if err := unix.Bind(fd, netio.Sockaddr(sp.local)); err != nil {
			return fmt.Errorf("udp: bind %v: %w", sp.local, os.NewSyscallError("bind", err))
		}
	}
	if sp.kind == kindConnect {
		if err := unix.Connect(fd, s.sockaddr(sp.remote)); err != nil {
			return fmt.Errorf("udp: connect %v: %w", sp.remote, os.NewSyscallError("connect", err))
		}
		s.connected = true
		s.remote = netip.AddrPortFrom(sp.remote.Addr().Unmap(), sp.remote.Port())
	}
	if s.local, err = netio.LocalAddr(fd); err != nil {
		return fmt.Errorf("udp: %s %v: %w", op, addr, err)
	}
	if a := s.local.Addr(); a.Is4In6() {
		s.local = netip.AddrPortFrom(a.Unmap(), s.local.Port())
	}
	var ev uint32
	if sp.kind != kindSender && !sp.pull {
		ev = readInterest
		s.reading = true
	}
	if err := ctx.Register(fd, ev, s); err != nil {
		return fmt.Errorf("udp: %s %v: %w", op, addr, err)
	}
	s.interest = ev
	return nil
}

// sockaddr converts ap for this socket's family (mapping IPv4 for IPv6).
func (s *socket) sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if s.fam == unix.AF_INET6 && ap.Addr().Is4() {
		return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	}
	return netio.Sockaddr(ap)
}

func (s *socket) PostStop(ctx *netio.Context) {
	if s.fd >= 0 {
		s.flush(ctx)
	}
	s.e.remove(s)
	s.q, s.qbuf, s.blocked = nil, nil, nil
}

func (s *socket) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case *Send:
		s.send(ctx, msg, m.Data, m.Target, m.Ack)
	case Send:
		s.send(ctx, msg, m.Data, m.Target, m.Ack)
	case *SendMany:
		s.sendMany(ctx, msg, m.Datagrams, m.Target, m.Ack)
	case SendMany:
		s.sendMany(ctx, msg, m.Datagrams, m.Target, m.Ack)
	case ResumeWriting, *ResumeWriting:
		s.resumeWriting(ctx, s.replyTo(ctx))
	case SuspendReading, *SuspendReading:
		s.suspendReading(ctx)
	case ResumeReading, *ResumeReading:
		s.resumeReading(ctx)
	case Unbind, *Unbind:
		s.close(ctx, Unbound{})
	case Disconnect, *Disconnect:
		s.close(ctx, Disconnected{})
	case netio.Terminated:
		if m.Ref == s.handler {
			ctx.Stop() // death pact: the socket closes with its handler
		}
	}
}

func (s *socket) replyTo(ctx *netio.Context) netio.Ref {
	if r := ctx.Sender(); !r.IsZero() {
		return r
	}
	return s.handler
}

func (s *socket) close(ctx *netio.Context, ev any) {
	to := s.replyTo(ctx)
	s.flush(ctx)
	if s.fd >= 0 {
		ctx.CloseFD(s.fd)
		s.fd = -1
	}
	ctx.Tell(to, ev)
	ctx.Stop()
}

func (s *socket) setInterest(ctx *netio.Context, ev uint32) {
	if ev == s.interest || s.fd < 0 {
		return
	}
	if err := ctx.Modify(s.fd, ev); err != nil {
		ctx.Logger().Error("udp: cannot change the socket's interest", "local", s.local, "err", err)
		return
	}
	s.interest = ev
}

func (s *socket) OnEvents(ctx *netio.Context, ev uint32) {
	if s.fd < 0 {
		return
	}
	if ev&netio.EventErr != 0 {
		if v, err := unix.GetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
			s.errorReceived(ctx, unix.Errno(v))
		}
	}
	if ev&evFlush != 0 {
		s.flushScheduled = false
		s.flush(ctx)
	}
	if ev&netio.EventOut != 0 && s.full {
		s.writable(ctx)
	}
	if ev&netio.EventIn != 0 && s.reading {
		s.read(ctx)
	}
}

func (s *socket) errorReceived(ctx *netio.Context, e unix.Errno) {
	s.c.errorsRecv.Add(1)
	peer := s.remote
	if !s.connected {
		peer = s.local
	}
	ctx.Tell(s.handler, ErrorReceived{Cause: fmt.Errorf("udp: %v: %w", peer, e)})
}

// ---- reading ----

func (s *socket) suspendReading(ctx *netio.Context) {
	if s.sp.kind == kindSender {
		return
	}
	s.reading = false
	s.setInterest(ctx, s.interest&^readInterest)
}

func (s *socket) resumeReading(ctx *netio.Context) {
	if s.sp.kind == kindSender || s.fd < 0 {
		return
	}
	s.reading = true
	if s.sp.pull {
		// Try at once; the read arms EPOLLIN only if the queue is empty.
		ctx.Wake(s.fd, netio.EventIn)
		return
	}
	s.setInterest(ctx, s.interest|readInterest)
}

// read takes up to readBatch datagrams from the kernel with one system call
// and delivers them. It runs in an FDHandler callback only, so the loop's
// buffers it fills are consumed by same-loop handlers before the next read.
func (s *socket) read(ctx *netio.Context) {
	b := s.bufs
	n := s.readBatch
	b.prepareRecv(n, s.slot)
	var got int
	var e unix.Errno
	if n == 1 {
		var r int
		r, e = recvmsg(s.fd, &b.rmsgs[0].Hdr)
		s.c.sysRecvmsg.Add(1)
		if e == 0 {
			b.rmsgs[0].Len = uint32(r)
			got = 1
		}
	} else {
		got, e = recvmmsg(s.fd, b.rmsgs[:n])
		s.c.sysRecvmmsg.Add(1)
	}
	if e != 0 {
		b.resetRecv(1)
		switch {
		case e == unix.EAGAIN:
			if s.sp.pull && s.interest&readInterest == 0 {
				s.setInterest(ctx, s.interest|readInterest)
			}
		case isAsyncError(e):
			s.errorReceived(ctx, e)
			ctx.Wake(s.fd, netio.EventIn) // the error is consumed; read what follows
		default:
			s.errorReceived(ctx, e)
		}
		return
	}
	var delivered, nbytes uint64
	for i := 0; i < got; i++ {
		m := &b.rmsgs[i]
		if v, ok := rxqOverflow(&b.rctrl[i], int(m.Hdr.Controllen)); ok {
			if d := v - s.lastOvfl; d != 0 {
				s.c.drops.Add(uint64(d))
			}
			s.lastOvfl = v
		}
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
			s.c.truncated.Add(1)
			continue
		}
		l := int(m.Len)
		from := decodeAddr(&b.rname[i], m.Hdr.Namelen, &s.zones)
		off := i * s.slot
		data := b.data[off : off+l : off+l]
		if s.sameLoop {
			r := &b.recvs[i]
			r.data, r.sender = data, from
			ctx.Tell(s.handler, Received{r})
		} else {
			ctx.Tell(s.handler, NewReceived(append([]byte(nil), data...), from))
		}
		delivered++
		nbytes += uint64(l)
	}
	b.resetRecv(got)
	s.c.rxDatagrams.Add(delivered)
	s.c.rxBytes.Add(nbytes)
	if s.sp.pull {
		s.reading = false
		s.setInterest(ctx, s.interest&^readInterest)
	} else if got == n && n > 1 {
		// A full batch: more may be queued; read again this turn rather than
		// after another epoll_wait. (With one datagram per read that guess
		// is wrong too often: level-triggered epoll reports what is left.)
		ctx.Wake(s.fd, netio.EventIn)
	}
}

// ---- writing ----

// refuse answers ErrWouldBlock and returns true when to may not send now.
func (s *socket) refuse(ctx *netio.Context, to netio.Ref, cmd any, datagrams int) bool {
	if !s.full && (len(s.blocked) == 0 || s.findBlocked(to) < 0) {
		return false
	}
	s.block(to)
	s.c.wouldBlock.Add(uint64(datagrams))
	ctx.Tell(to, CommandFailed{Cmd: cmd, Cause: ErrWouldBlock})
	return true
}

func (s *socket) findBlocked(to netio.Ref) int {
	for i := range s.blocked {
		if s.blocked[i].ref == to {
			return i
		}
	}
	return -1
}

func (s *socket) block(to netio.Ref) {
	if s.findBlocked(to) < 0 {
		s.blocked = append(s.blocked, blockedSender{ref: to})
	}
}

func (s *socket) markFull(ctx *netio.Context) {
	if !s.full {
		s.full = true
		s.setInterest(ctx, s.interest|writeInterest)
	}
}

// writable runs when EPOLLOUT reports room after an EAGAIN.
func (s *socket) writable(ctx *netio.Context) {
	s.full = false
	s.setInterest(ctx, s.interest&^writeInterest)
	kept := s.blocked[:0]
	for _, b := range s.blocked {
		if b.resume {
			ctx.Tell(b.ref, WritingResumed{})
		} else {
			kept = append(kept, b)
		}
	}
	clear(s.blocked[len(kept):])
	s.blocked = kept
}

func (s *socket) resumeWriting(ctx *netio.Context, to netio.Ref) {
	i := s.findBlocked(to)
	if !s.full {
		if i >= 0 {
			s.blocked = append(s.blocked[:i], s.blocked[i+1:]...)
		}
		ctx.Tell(to, WritingResumed{})
		return
	}
	if i < 0 {
		s.blocked = append(s.blocked, blockedSender{ref: to, resume: true})
	} else {
		s.blocked[i].resume = true
	}
}

// target encodes a Send's target into dst; 0 means "no address" (connected).
func (s *socket) target(dst *rawAddr, t netip.AddrPort) (uint32, error) {
	if s.connected {
		if !t.IsValid() || (t.Addr().Unmap() == s.remote.Addr() && t.Port() == s.remote.Port()) {
			return 0, nil
		}
		return 0, fmt.Errorf("udp: send to %v: %w (%v)", t, errConnectedTarget, s.remote)
	}
	if !t.IsValid() {
		return 0, fmt.Errorf("udp: send: no target: %w", os.NewSyscallError("sendmsg", unix.EDESTADDRREQ))
	}
	n, ok := encodeAddr(dst, s.fam, t, &s.zones)
	if !ok {
		return 0, fmt.Errorf("udp: send to %v from an IPv4 socket: %w", t, unix.EAFNOSUPPORT)
	}
	return n, nil
}

func (s *socket) sendError(t netip.AddrPort, op string, e unix.Errno) error {
	if s.connected {
		t = s.remote
	}
	return fmt.Errorf("udp: send to %v: %w", t, os.NewSyscallError(op, e))
}

func (s *socket) sent(n int) {
	s.c.txDatagrams.Add(1)
	s.c.txBytes.Add(uint64(n))
}

func (s *socket) send(ctx *netio.Context, cmd any, data []byte, t netip.AddrPort, ack any) {
	to := s.replyTo(ctx)
	if s.fd < 0 || s.refuse(ctx, to, cmd, 1) {
		return
	}
	if s.writeBatch > 1 && len(data) <= coalesceMaxLen {
		s.enqueue(ctx, to, cmd, data, t, ack)
		return
	}
	s.flush(ctx) // what was queued goes first
	if s.refuse(ctx, to, cmd, 1) {
		return
	}
	namelen, err := s.target(&s.name, t)
	if err != nil {
		s.c.sendErrors.Add(1)
		ctx.Tell(to, CommandFailed{Cmd: cmd, Cause: err})
		return
	}
	s.iov.Base = unsafe.SliceData(data)
	s.iov.SetLen(len(data))
	s.msg = unix.Msghdr{Iov: &s.iov}
	s.msg.SetIovlen(1)
	if namelen > 0 {
		s.msg.Name = (*byte)(unsafe.Pointer(&s.name))
		s.msg.Namelen = namelen
	}
	retried := false
	for {
		_, e := sendmsg(s.fd, &s.msg, 1)
		s.c.sysSendmsg.Add(1)
		if e == 0 {
			break
		}
		if s.connected && isAsyncError(e) && !retried {
			s.errorReceived(ctx, e) // an ICMP error for an earlier datagram
			retried = true
			continue
		}
		s.iov.Base = nil
		if e == unix.EAGAIN {
			s.markFull(ctx)
			s.block(to)
			s.c.wouldBlock.Add(1)
			ctx.Tell(to, CommandFailed{Cmd: cmd, Cause: ErrWouldBlock})
			return
		}
		s.c.sendErrors.Add(1)
		ctx.Tell(to, CommandFailed{Cmd: cmd, Cause: s.sendError(t, "sendmsg", e)})
		return
	}
	s.iov.Base = nil
	s.sent(len(data))
	if ack != nil {
		ctx.Tell(to, ack)
	}
}

// enqueue copies a Send into the coalescing queue; the queue is flushed after
// the current queue drain (a Wake), or now when it is full.
func (s *socket) enqueue(ctx *netio.Context, to netio.Ref, cmd any, data []byte, t netip.AddrPort, ack any) {
	if len(s.qbuf)+len(data) > coalesceBufLen {
		s.flush(ctx)
		if s.refuse(ctx, to, cmd, 1) {
			return
		}
	}
	s.q = append(s.q, pending{})
	p := &s.q[len(s.q)-1]
	namelen, err := s.target(&p.name, t)
	if err != nil {
		s.q = s.q[:len(s.q)-1]
		s.c.sendErrors.Add(1)
		ctx.Tell(to, CommandFailed{Cmd: cmd, Cause: err})
		return
	}
	p.off, p.n, p.namelen, p.target, p.to, p.ack, p.cmd = len(s.qbuf), len(data), namelen, t, to, ack, cmd
	s.qbuf = append(s.qbuf, data...)
	if !s.flushScheduled {
		s.flushScheduled = true
		ctx.Wake(s.fd, evFlush)
	}
	if len(s.q) >= s.writeBatch {
		s.flush(ctx)
	}
}

// flush sends the coalesced Sends and answers each: its ack, or a
// CommandFailed. A run of Sends to one target with equal sizes (only the last
// shorter) goes out as one GSO sendmsg; the others with sendmmsg. After an
// EAGAIN every remaining one is refused.
func (s *socket) flush(ctx *netio.Context) {
	n := len(s.q)
	if n == 0 || s.fd < 0 {
		return
	}
	msgs, iovs := s.bufs.sendScratch(n)
	for i := range s.q {
		p := &s.q[i]
		iov := &iovs[i]
		iov.Base = nil
		if p.n > 0 {
			iov.Base = &s.qbuf[p.off]
		}
		iov.SetLen(p.n)
		h := &msgs[i].Hdr
		*h = unix.Msghdr{Iov: iov}
		h.SetIovlen(1)
		if p.namelen > 0 {
			h.Name = (*byte)(unsafe.Pointer(&p.name))
			h.Namelen = p.namelen
		}
	}
	retried := false
	for i := 0; i < n; {
		if s.gso {
			if k, total := s.queuedRun(i); k >= 2 {
				e := s.sendQueuedGSO(i, k, total)
				s.c.sysGSO.Add(1)
				switch {
				case e == 0:
					s.acked(ctx, i, i+k)
					i += k
					continue
				case s.connected && isAsyncError(e) && !retried:
					s.errorReceived(ctx, e)
					retried = true
					continue
				case e == unix.EAGAIN:
					s.refuseQueued(ctx, i)
					i = n
					continue
				}
				ctx.Logger().Debug("udp: GSO refused; falling back to sendmmsg", "local", s.local, "err", e)
				s.gso = false
			}
		}
		j := n // send up to the next GSO run
		if s.gso {
			for j = i + 1; j < n; j++ {
				if k, _ := s.queuedRun(j); k >= 2 {
					break
				}
			}
		}
		var k int
		var e unix.Errno
		op := "sendmmsg"
		if j-i == 1 {
			op = "sendmsg"
			_, e = sendmsg(s.fd, &msgs[i].Hdr, 1)
			s.c.sysSendmsg.Add(1)
			if e == 0 {
				k = 1
			}
		} else {
			k, e = sendmmsg(s.fd, msgs[i:j])
			s.c.sysSendmmsg.Add(1)
		}
		switch {
		case e == 0:
			s.acked(ctx, i, i+k)
			i += k
		case s.connected && isAsyncError(e) && !retried:
			s.errorReceived(ctx, e)
			retried = true
		case e == unix.EAGAIN:
			s.refuseQueued(ctx, i)
			i = n
		default:
			p := &s.q[i] // the kernel refused this one; go on with the rest
			s.c.sendErrors.Add(1)
			ctx.Tell(p.to, CommandFailed{Cmd: p.cmd, Cause: s.sendError(p.target, op, e)})
			i++
		}
	}
	s.bufs.clearSend(n)
	clear(s.q)
	s.q = s.q[:0]
	s.qbuf = s.qbuf[:0]
}

// acked counts the queued Sends [i, j) as sent and acks them.
func (s *socket) acked(ctx *netio.Context, i, j int) {
	for ; i < j; i++ {
		p := &s.q[i]
		s.sent(p.n)
		if p.ack != nil {
			ctx.Tell(p.to, p.ack)
		}
	}
}

// refuseQueued answers ErrWouldBlock to the queued Sends from i on.
func (s *socket) refuseQueued(ctx *netio.Context, i int) {
	s.markFull(ctx)
	for ; i < len(s.q); i++ {
		p := &s.q[i]
		s.block(p.to)
		s.c.wouldBlock.Add(1)
		ctx.Tell(p.to, CommandFailed{Cmd: p.cmd, Cause: ErrWouldBlock})
	}
}

// queuedRun is gsoRun for the queue from i: how many Sends to the same
// target one GSO send can carry.
func (s *socket) queuedRun(i int) (k, total int) {
	p := &s.q[i]
	seg := p.n
	if seg == 0 {
		return 1, 0
	}
	k, total = 1, seg
	for i+k < len(s.q) && k < gsoMaxSegments {
		r := &s.q[i+k]
		if r.n == 0 || r.n > seg || total+r.n > gsoMaxBytes || r.namelen != p.namelen || r.name != p.name {
			break
		}
		total += r.n
		k++
		if r.n < seg {
			break
		}
	}
	return k, total
}

// sendQueuedGSO sends the queued run [i, i+k), contiguous in qbuf, as one
// sendmsg with UDP_SEGMENT.
func (s *socket) sendQueuedGSO(i, k, total int) unix.Errno {
	p := &s.q[i]
	s.iov.Base = &s.qbuf[p.off]
	s.iov.SetLen(total)
	s.msg = unix.Msghdr{Iov: &s.iov}
	s.msg.SetIovlen(1)
	if p.namelen > 0 {
		s.msg.Name = (*byte)(unsafe.Pointer(&p.name))
		s.msg.Namelen = p.namelen
	}
	cl := putSegmentSize(&s.bufs.sctrl, uint16(p.n))
	s.msg.Control = (*byte)(unsafe.Pointer(&s.bufs.sctrl))
	s.msg.SetControllen(cl)
	_, e := sendmsg(s.fd, &s.msg, k)
	s.iov.Base = nil
	s.msg = unix.Msghdr{}
	return e
}

func (s *socket) sendMany(ctx *netio.Context, cmd any, dgs [][]byte, t netip.AddrPort, ack any) {
	to := s.replyTo(ctx)
	if s.fd < 0 {
		return
	}
	s.flush(ctx)
	if s.refuse(ctx, to, cmd, len(dgs)) {
		return
	}
	namelen, err := s.target(&s.name, t)
	if err != nil {
		s.c.sendErrors.Add(uint64(len(dgs)))
		ctx.Tell(to, CommandFailed{Cmd: cmd, Cause: &PartialSendError{Err: err}})
		return
	}
	sent, e := s.sendBatch(ctx, dgs, namelen)
	switch {
	case e == 0:
		if ack != nil {
			ctx.Tell(to, ack)
		}
	case e == unix.EAGAIN:
		s.markFull(ctx)
		s.block(to)
		s.c.wouldBlock.Add(uint64(len(dgs) - sent))
		ctx.Tell(to, CommandFailed{Cmd: cmd, Cause: &PartialSendError{Sent: sent, Err: ErrWouldBlock}})
	default:
		s.c.sendErrors.Add(uint64(len(dgs) - sent))
		ctx.Tell(to, CommandFailed{Cmd: cmd, Cause: &PartialSendError{Sent: sent, Err: s.sendError(t, "sendmmsg", e)}})
	}
}

// sendBatch sends dgs to the address in s.name, in order, with GSO runs
// where it can and sendmmsg otherwise. It stops at the first error.
func (s *socket) sendBatch(ctx *netio.Context, dgs [][]byte, namelen uint32) (sent int, e unix.Errno) {
	var name *byte
	if namelen > 0 {
		name = (*byte)(unsafe.Pointer(&s.name))
	}
	retried := false
	for sent < len(dgs) {
		rest := dgs[sent:]
		if s.gso {
			if k, total := gsoRun(rest); k >= 2 {
				e = s.sendGSO(rest[:k], name, namelen)
				s.c.sysGSO.Add(1)
				switch {
				case e == 0:
					s.c.txDatagrams.Add(uint64(k))
					s.c.txBytes.Add(uint64(total))
					sent += k
					continue
				case e == unix.EAGAIN:
					return sent, e
				case s.connected && isAsyncError(e) && !retried:
					s.errorReceived(ctx, e)
					retried = true
					continue
				}
				// GSO refused (an old kernel, a segment over the path MTU, no
				// checksum offload): use sendmmsg on this socket from now on.
				ctx.Logger().Debug("udp: GSO refused; falling back to sendmmsg", "local", s.local, "err", e)
				s.gso = false
			}
		}
		chunk := min(len(rest), maxBatch)
		msgs, iovs := s.bufs.sendScratch(chunk)
		for i := 0; i < chunk; i++ {
			iovs[i].Base = unsafe.SliceData(rest[i])
			iovs[i].SetLen(len(rest[i]))
			h := &msgs[i].Hdr
			*h = unix.Msghdr{Name: name, Namelen: namelen, Iov: &iovs[i]}
			h.SetIovlen(1)
		}
		var k int
		if chunk == 1 {
			_, e = sendmsg(s.fd, &msgs[0].Hdr, 1)
			s.c.sysSendmsg.Add(1)
			if e == 0 {
				k = 1
			}
		} else {
			k, e = sendmmsg(s.fd, msgs)
			s.c.sysSendmmsg.Add(1)
		}
		s.bufs.clearSend(chunk)
		if e != 0 {
			if s.connected && isAsyncError(e) && !retried {
				s.errorReceived(ctx, e)
				retried = true
				continue
			}
			return sent, e
		}
		for _, d := range rest[:k] {
			s.sent(len(d))
		}
		sent += k
	}
	return sent, 0
}

// gsoRun returns how many leading datagrams of dgs one GSO send can carry:
// equal sizes, only the last shorter, at most 64 and 65,507 bytes in all.
func gsoRun(dgs [][]byte) (k, total int) {
	seg := len(dgs[0])
	if seg == 0 {
		return 1, 0
	}
	k, total = 1, seg
	for k < len(dgs) && k < gsoMaxSegments {
		l := len(dgs[k])
		if l == 0 || l > seg || total+l > gsoMaxBytes {
			break
		}
		total += l
		k++
		if l < seg {
			break
		}
	}
	return k, total
}

// sendGSO sends dgs (a gsoRun) as one sendmsg with UDP_SEGMENT.
func (s *socket) sendGSO(dgs [][]byte, name *byte, namelen uint32) unix.Errno {
	msgs, iovs := s.bufs.sendScratch(len(dgs))
	for i, d := range dgs {
		iovs[i].Base = unsafe.SliceData(d)
		iovs[i].SetLen(len(d))
	}
	h := &msgs[0].Hdr
	*h = unix.Msghdr{Name: name, Namelen: namelen, Iov: &iovs[0]}
	h.SetIovlen(len(dgs))
	cl := putSegmentSize(&s.bufs.sctrl, uint16(len(dgs[0])))
	h.Control = (*byte)(unsafe.Pointer(&s.bufs.sctrl))
	h.SetControllen(cl)
	_, e := sendmsg(s.fd, h, len(dgs))
	s.bufs.clearSend(len(dgs))
	return e
}
