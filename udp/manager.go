package udp

import (
	"net/netip"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/netio"
)

type extKey struct{}

// ext is the per-system state of the package: the manager, the per-loop
// buffers and the live sockets (for metrics).
type ext struct {
	sys  *netio.System
	mgr  netio.Ref
	once sync.Once

	mu     sync.Mutex
	bufs   map[*netio.Loop]*loopBufs
	socks  map[*socket]struct{}
	closed counters // totals of the sockets that have stopped
}

func extOf(sys *netio.System) *ext {
	e := sys.Extension(extKey{}, func() any {
		e := &ext{sys: sys, bufs: make(map[*netio.Loop]*loopBufs), socks: make(map[*socket]struct{})}
		e.mgr = sys.Spawn(&manager{e: e})
		return e
	}).(*ext)
	e.once.Do(func() {
		if err := sys.RegisterCollector(&collector{e: e}); err != nil {
			sys.Logger().Warn("udp: metrics are off", "err", err)
		}
	})
	return e
}

// Manager returns the system's UDP manager, an actor created on first use.
// Tell it [Bind], [Connect] or [SimpleSender]; it spawns a socket actor on the
// handler's loop (or, for a blocking handler, on a loop chosen round-robin),
// which answers the handler. Safe from any goroutine.
func Manager(sys *netio.System) netio.Ref { return extOf(sys).mgr }

func (e *ext) loopBufs(l *netio.Loop) *loopBufs {
	e.mu.Lock()
	defer e.mu.Unlock()
	b := e.bufs[l]
	if b == nil {
		b = &loopBufs{}
		e.bufs[l] = b
	}
	return b
}

func (e *ext) add(s *socket) {
	e.mu.Lock()
	e.socks[s] = struct{}{}
	e.closed.opened.Add(1)
	e.mu.Unlock()
}

func (e *ext) remove(s *socket) {
	e.mu.Lock()
	if _, ok := e.socks[s]; ok {
		delete(e.socks, s)
		e.closed.addFrom(&s.c)
	}
	e.mu.Unlock()
}

type manager struct{ e *ext }

func (m *manager) Receive(ctx *netio.Context, msg any) {
	sp := spec{cmd: msg}
	switch c := msg.(type) {
	case Bind:
		sp.fromBind(&c)
	case *Bind:
		sp.fromBind(c)
	case Connect:
		sp.fromConnect(&c)
	case *Connect:
		sp.fromConnect(c)
	case SimpleSender:
		sp.fromSimple(&c)
	case *SimpleSender:
		sp.fromSimple(c)
	default:
		return
	}
	if sp.handler.IsZero() {
		sp.handler = ctx.Sender()
	}
	if sp.handler.IsZero() {
		ctx.Logger().Warn("udp: command without a handler or a sender; ignored", "cmd", msg)
		return
	}
	l := sp.handler.Loop()
	if l == nil {
		l = ctx.System().NextLoop()
	}
	ctx.SpawnOn(l, &socket{e: m.e, sp: sp, fd: -1})
}

type sockKind uint8

const (
	kindBind sockKind = iota
	kindConnect
	kindSender
)

// spec is a socket's creation command, normalised.
type spec struct {
	kind    sockKind
	cmd     any
	handler netio.Ref
	local   netip.AddrPort
	remote  netip.AddrPort
	options []netio.SocketOption
	pull    bool
	batch   Batching
}

func (s *spec) fromBind(c *Bind) {
	s.kind, s.handler, s.local, s.options, s.pull, s.batch = kindBind, c.Handler, c.LocalAddr, c.Options, c.PullMode, c.Batching
}

func (s *spec) fromConnect(c *Connect) {
	s.kind, s.handler, s.local, s.remote, s.options, s.pull, s.batch = kindConnect, c.Handler, c.LocalAddr, c.RemoteAddr, c.Options, c.PullMode, c.Batching
}

func (s *spec) fromSimple(c *SimpleSender) {
	s.kind, s.handler, s.local, s.options, s.batch = kindSender, c.Handler, c.LocalAddr, c.Options, c.Batching
}

// loopBufs are a loop's receive buffers and send scratch headers, shared by
// the UDP sockets of that loop. Only the loop's goroutine touches them: a
// socket fills them in an FDHandler callback (or while processing a command)
// and the loop drains its queue before any other socket's callback, so the
// Received values handed to same-loop handlers are consumed before reuse.
type loopBufs struct {
	data  []byte
	rmsgs []unix.Mmsghdr
	riov  []unix.Iovec
	rname []rawAddr
	rctrl []ctrlBuf
	recvs []datagram
	// The layout the headers have: layoutN slots of layoutSize bytes.
	layoutN, layoutSize int

	smsgs []unix.Mmsghdr
	siov  []unix.Iovec
	sctrl ctrlBuf
}

// prepareRecv lays out n receive slots of size bytes each. The headers keep
// their layout between reads; only the fields the kernel writes are reset
// after each read (resetRecv).
func (b *loopBufs) prepareRecv(n, size int) {
	if n <= b.layoutN && size == b.layoutSize {
		return
	}
	if len(b.data) < n*size {
		b.data = make([]byte, n*size)
	}
	if len(b.rmsgs) < n {
		b.rmsgs = make([]unix.Mmsghdr, n)
		b.riov = make([]unix.Iovec, n)
		b.rname = make([]rawAddr, n)
		b.rctrl = make([]ctrlBuf, n)
		b.recvs = make([]datagram, n)
	}
	for i := 0; i < n; i++ {
		iov := &b.riov[i]
		iov.Base = &b.data[i*size]
		iov.SetLen(size)
		h := &b.rmsgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&b.rname[i]))
		h.Iov = iov
		h.SetIovlen(1)
		h.Control = (*byte)(unsafe.Pointer(&b.rctrl[i]))
	}
	b.layoutN, b.layoutSize = n, size
	b.resetRecv(n)
}

// resetRecv restores what the kernel changed in the first n headers.
func (b *loopBufs) resetRecv(n int) {
	for i := 0; i < n; i++ {
		m := &b.rmsgs[i]
		m.Hdr.Namelen = sizeofInet6
		m.Hdr.SetControllen(int(unsafe.Sizeof(ctrlBuf{})))
		m.Hdr.Flags = 0
		m.Len = 0
	}
}

// sendScratch returns n message headers and n iovecs for a synchronous send.
func (b *loopBufs) sendScratch(n int) ([]unix.Mmsghdr, []unix.Iovec) {
	if len(b.smsgs) < n {
		b.smsgs = make([]unix.Mmsghdr, n)
		b.siov = make([]unix.Iovec, n)
	}
	return b.smsgs[:n], b.siov[:n]
}

// clearSend drops the references the first n scratch headers hold, so the
// loop keeps no caller's buffer alive.
func (b *loopBufs) clearSend(n int) {
	clear(b.smsgs[:n])
	clear(b.siov[:n])
}
