package netio

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Readiness bits given to [FDHandler.OnEvents] and accepted by
// [Context.Register] and [Context.Modify]. They are epoll's.
const (
	EventIn    = unix.EPOLLIN
	EventOut   = unix.EPOLLOUT
	EventErr   = unix.EPOLLERR
	EventHup   = unix.EPOLLHUP
	EventRdHup = unix.EPOLLRDHUP
)

// FDHandler receives readiness events for a descriptor registered with
// [Context.Register]. It runs on the loop, with the owning actor's Context.
type FDHandler interface {
	OnEvents(ctx *Context, events uint32)
}

// readBufferSize is the size of each loop's shared read buffer. A socket
// read that fills it may have left bytes behind, so the connection reads
// again (edge-triggered: no new event comes for bytes already there); a
// read that does not fill it drained the socket. At 64 KiB a request-reply
// flow with 64 KiB in flight (16 messages of 4 KiB) filled it on every read,
// and every second read returned EAGAIN: a third of the reads, which gnet
// (level-triggered, one read per event) does not make. At 128 KiB only a
// bulk stream fills it, and then the next read finds bytes.
const readBufferSize = 128 << 10

// Loop is one event loop: a goroutine in epoll_wait, the actors pinned to it,
// their descriptors and timers.
type Loop struct {
	id  int
	sys *System

	epfd   int
	wakefd int // eventfd
	// parkFile is an epoll descriptor of its own in the runtime's
	// poller: a loop with nothing to do for longer than rawWait adds
	// epfd to it and parks its goroutine on it instead of sleeping in
	// epoll_wait (see park). Nil when the runtime's poller refused it:
	// the loop then always sleeps in epoll_wait.
	parkFile *os.File
	parkFD   int // parkFile's descriptor (its Fd method would make it blocking)
	parkConn syscallConn
	rawWait  time.Duration // Config.RawWait; 0: park at once

	// Owned by the loop goroutine.
	local  ring
	fds    []fdEntry
	actors map[*actor]struct{}
	timers timerHeap
	ready  []readyEntry
	spare  []readyEntry
	now    time.Time
	buf    []byte
	events []unix.EpollEvent

	// Remote queue: any goroutine appends under mu.
	mu      sync.Mutex
	remote  []envelope
	closed  bool
	wakeSet atomic.Bool

	delivered uint64    // owned by the loop; published to messages once per drain
	depth     int       // nesting of direct deliveries (Context.Deliver)
	yield     bool      // a goroutine was readied: yield before blocking
	yielded   time.Time // the last yield
	messages  atomic.Uint64
	wakeups   atomic.Uint64
}

type fdEntry struct {
	a *actor
	h FDHandler
}

type readyEntry struct {
	fd     int
	events uint32
}

func newLoop(sys *System, id int) (*Loop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	wfd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	l := &Loop{
		id: id, sys: sys, epfd: epfd, wakefd: wfd,
		actors: make(map[*actor]struct{}),
		buf:    make([]byte, readBufferSize),
		events: make([]unix.EpollEvent, 256),
		now:    time.Now(),
	}
	l.parkFile, l.parkFD, l.parkConn = newParkFile()
	return l, nil
}

// ID is the loop's index in its system, from 0.
func (l *Loop) ID() int { return l.id }

// ReadBuffer returns the loop's shared read buffer. Only socket actors of this
// loop may use it, inside an FDHandler callback; bytes read into it stay valid
// until the loop finishes the queue drain that follows the callback.
func (l *Loop) ReadBuffer() []byte { return l.buf }

func (l *Loop) pushRemote(e envelope) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		l.sys.deadLetters.Add(1)
		if e.kind == kindStart {
			e.to.discard()
		}
		return
	}
	l.remote = append(l.remote, e)
	l.mu.Unlock()
	l.wakeups.Add(1)
	l.wake()
}

// wake makes the loop's epoll_wait return; concurrent wakes coalesce into one
// eventfd write until the loop has consumed it.
func (l *Loop) wake() {
	if l.wakeSet.CompareAndSwap(false, true) {
		var one = [8]byte{1}
		unix.Write(l.wakefd, one[:])
	}
}

func (l *Loop) takeRemote(spare []envelope) []envelope {
	var b [8]byte
	unix.Read(l.wakefd, b[:])
	l.wakeSet.Store(false)
	l.mu.Lock()
	q := l.remote
	l.remote = spare[:0]
	l.mu.Unlock()
	return q
}

// run is the loop goroutine.
func (l *Loop) run() {
	var spare []envelope
	for {
		timeout := time.Duration(-1)
		if l.local.n > 0 || len(l.ready) > 0 {
			timeout = 0
		} else if t := l.timers.next(); t != nil {
			timeout = max(time.Until(t.when), 0)
		}
		if timeout != 0 && (l.yield || l.now.Sub(l.yielded) >= yieldEvery) {
			// About to block after waking a goroutine: let it (it sits in
			// this P's runnext) run first, instead of stranding it until
			// sysmon retakes the P while the loop sleeps in the kernel.
			// Only then: a yield on every block costs a thread hand-off
			// per lock-step packet. And every yieldEvery: a goroutine
			// that never passes through the scheduler looks stuck to
			// sysmon after 10 ms, which then takes its P away in the
			// middle of a system call (a thread hand-off) and polls every
			// 20 µs for a millisecond after.
			l.yield, l.yielded = false, l.now
			runtime.Gosched()
		}
		n, err := l.waitEvents(timeout)
		if err != nil && !errors.Is(err, unix.EINTR) {
			l.sys.logger.Error("netio: epoll_wait failed; loop stops", "loop", l.id, "err", err)
			l.shutdown()
			return
		}
		l.now = time.Now()
		for i := 0; i < n; i++ {
			ev := &l.events[i]
			fd := int(ev.Fd)
			if fd == l.wakefd {
				q := l.takeRemote(spare)
				for j := range q {
					l.local.pushEnvelope(q[j])
					q[j] = envelope{}
				}
				spare = q
				if l.drain() {
					return
				}
				continue
			}
			l.dispatch(fd, ev.Events)
			if l.drain() {
				return
			}
		}
		// Fire due timers; timers that come due while their messages are
		// handled fire in the same turn (bounded), not one epoll_wait each.
		for i := 0; i < 64; i++ {
			if !l.timers.fire(l) {
				break
			}
			if l.drain() {
				return
			}
			l.now = time.Now()
		}
		if len(l.ready) > 0 {
			r := l.ready
			l.ready = l.spare[:0]
			for _, e := range r {
				l.dispatch(e.fd, e.events)
				if l.drain() {
					return
				}
			}
			l.spare = r[:0]
		}
	}
}

// quit is a sentinel envelope kind target: an envelope to nil asks the loop to
// shut down.
func (l *Loop) drain() (quit bool) {
	for {
		if quit, done := l.drainSome(); done {
			l.messages.Store(l.delivered)
			return quit
		}
	}
}

// drainSome delivers queued messages until the queue is empty (done) or an
// actor panics (not done: the panic was handled, call again).
func (l *Loop) drainSome() (quit, done bool) {
	var cur *actor
	defer func() {
		if !done {
			cur.failed(recover())
		}
	}()
	for l.local.n > 0 {
		e := l.local.pop()
		if e.to == nil {
			l.shutdown()
			return true, true
		}
		l.delivered++
		cur = e.to
		cur.invoke(e)
	}
	return false, true
}

func (l *Loop) dispatch(fd int, events uint32) {
	if fd >= len(l.fds) {
		return
	}
	ent := l.fds[fd]
	if ent.h == nil || ent.a.state != stateRunning {
		return
	}
	a := ent.a
	a.busy = true
	a.safely(func() { ent.h.OnEvents(&a.ctx, events) })
	a.busy = false
	if a.stopReq {
		a.stop()
	}
}

// shutdown stops every actor of the loop, then closes the loop's descriptors.
func (l *Loop) shutdown() {
	l.mu.Lock()
	l.closed = true
	rest := l.remote
	l.remote = nil
	l.mu.Unlock()
	for _, e := range rest {
		if e.to != nil {
			l.local.pushEnvelope(e)
		}
	}
	// Deliver what was already queued (close commands, stops), then stop all.
	l.drainForShutdown()
	for len(l.actors) > 0 {
		for a := range l.actors {
			a.stop()
		}
		l.drainForShutdown()
	}
	if l.parkFile != nil {
		l.parkFile.Close()
	}
	unix.Close(l.epfd)
	unix.Close(l.wakefd)
}

// defaultRawWait is the longest a loop sleeps in epoll_wait, holding its P
// in a system call; a longer wait parks the goroutine on the runtime's
// poller. sysmon takes the P of a goroutine that is more than 10 ms in a system
// call (a thread hand-off), then polls every 20 µs for a millisecond: an
// idle loop woken every few tens of milliseconds (a raft heartbeat, a
// timer) paid that every time, and kept sysmon from its deep sleep, which
// it enters only when every P is idle.
const defaultRawWait = 2 * time.Millisecond

type syscallConn interface {
	Read(f func(fd uintptr) (done bool)) error
}

// newParkFile registers a new epoll descriptor, non-blocking, with the
// runtime's poller: an epoll descriptor is readable while events are ready,
// and this one holds the loop's epfd only while the loop is parked (see
// park). It is not epfd itself (a duplicate of it, as it was): the
// runtime's poller then woke one of its threads for every event the loop
// got, also while the loop was busy or in its raw wait, two context switches
// for nothing, a quarter of a one-connection echo's CPU.
func newParkFile() (*os.File, int, syscallConn) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, -1, nil
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, -1, nil
	}
	f := os.NewFile(uintptr(fd), "epoll-park")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, -1, nil
	}
	return f, fd, rc
}

// waitEvents waits for events at most d (d < 0: no bound). It sleeps in
// epoll_wait for up to rawWait, which keeps the wake-up of a busy loop at
// one system call; past that the goroutine parks on the runtime's poller
// until the epoll descriptor is readable or d is over, so an idle loop
// holds no P and costs sysmon nothing.
func (l *Loop) waitEvents(d time.Duration) (int, error) {
	if d >= 0 && d <= l.rawWait || l.parkFile == nil {
		return epollWait(l.epfd, l.events, d)
	}
	start := time.Now()
	var n int
	var err error
	if l.rawWait > 0 {
		// (With no raw wait, the first look is the one in the Read below.)
		if n, err = epollWait(l.epfd, l.events, l.rawWait); n != 0 || err != nil {
			return n, err
		}
	}
	var deadline time.Time
	if d >= 0 {
		deadline = start.Add(d)
	}
	if err := l.parkFile.SetReadDeadline(deadline); err != nil {
		return epollWait(l.epfd, l.events, max(time.Until(deadline), 0))
	}
	return l.park()
}

// park waits on the runtime's poller. It is a function of its own because
// what its closure captures is moved to the heap: in waitEvents that was
// an allocation on every wait, one per message in a closed-loop echo.
//
// The loop's epfd is in the park descriptor only for the park: added
// before (already-ready events make it readable at once), removed after.
func (l *Loop) park() (int, error) {
	var n int
	var werr error
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(l.epfd)}
	if err := unix.EpollCtl(l.parkFD, unix.EPOLL_CTL_ADD, l.epfd, &ev); err != nil {
		// (Cannot happen: it is removed after every park.) Sleep in
		// epoll_wait; the loop computes its timeout again.
		return epollWait(l.epfd, l.events, max(l.rawWait, time.Millisecond))
	}
	err := l.parkConn.Read(func(fd uintptr) bool {
		n, werr = epollWait(l.epfd, l.events, 0)
		return n != 0 || werr != nil && !errors.Is(werr, unix.EINTR)
	})
	unix.EpollCtl(l.parkFD, unix.EPOLL_CTL_DEL, l.epfd, nil)
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, err
	}
	return n, werr
}

// drainForShutdown delivers the queue, skipping further shutdown requests.
func (l *Loop) drainForShutdown() {
	for l.local.n > 0 {
		if _, done := l.drainSome(); done {
			return
		}
	}
}

// register adds fd to the loop's epoll set, owned by a.
func (l *Loop) register(a *actor, fd int, events uint32, h FDHandler) error {
	if fd < 0 {
		return fmt.Errorf("netio: register fd %d: %w", fd, unix.EBADF)
	}
	for fd >= len(l.fds) {
		l.fds = append(l.fds, make([]fdEntry, len(l.fds)+64)...)
	}
	if l.fds[fd].h != nil {
		return fmt.Errorf("netio: register fd %d: already registered", fd)
	}
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl add", err)
	}
	l.fds[fd] = fdEntry{a: a, h: h}
	a.fds = append(a.fds, fd)
	return nil
}

func (l *Loop) forget(fd int) {
	if fd < len(l.fds) {
		l.fds[fd] = fdEntry{}
	}
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, fd, nil)
}

func closeFD(fd int) { unix.Close(fd) }

// Register adds fd to the loop's poller with the given interest (EventIn,
// EventOut, …), owned by this actor: the actor's stop closes it. The loop
// calls h.OnEvents when fd is ready. Only actors of a loop may register.
func (c *Context) Register(fd int, events uint32, h FDHandler) error {
	if c.a.loop == nil {
		return errors.New("netio: a blocking actor cannot register descriptors")
	}
	return c.a.loop.register(c.a, fd, events, h)
}

// Modify changes the interest set of a descriptor this actor registered.
func (c *Context) Modify(fd int, events uint32) error {
	ev := unix.EpollEvent{Events: events, Fd: int32(fd)}
	if err := unix.EpollCtl(c.a.loop.epfd, unix.EPOLL_CTL_MOD, fd, &ev); err != nil {
		return os.NewSyscallError("epoll_ctl mod", err)
	}
	return nil
}

// YieldBeforeBlocking tells the loop that this actor made a goroutine
// runnable (a channel send or close that a goroutine waits on): the loop
// yields its processor once before it next blocks in epoll_wait, so that the
// goroutine runs at once rather than when the scheduler takes the processor
// back from the blocked loop (tens of microseconds). Telling a blocking
// actor does this by itself.
func (c *Context) YieldBeforeBlocking() {
	if c.a.loop != nil {
		c.a.loop.yield = true
	}
}

// CloseFD removes fd from the poller and closes it.
func (c *Context) CloseFD(fd int) error {
	a := c.a
	for i, f := range a.fds {
		if f == fd {
			a.fds = append(a.fds[:i], a.fds[i+1:]...)
			a.loop.forget(fd)
			break
		}
	}
	return os.NewSyscallError("close", unix.Close(fd))
}

// Wake asks the loop to call the FDHandler of fd with events later in this
// turn, after the current queue drain, as if epoll had reported them. Socket
// actors use it to read again without waiting for the poller.
func (c *Context) Wake(fd int, events uint32) {
	c.a.loop.ready = append(c.a.loop.ready, readyEntry{fd: fd, events: events})
}

// ring is the loop's local queue: a growable power-of-two ring of envelopes.
type ring struct {
	buf     []envelope
	head, n int
}

// push appends a message, writing the slot in place.
func (r *ring) push(to, from *actor, msg any, k kind) {
	if r.n == len(r.buf) {
		r.grow()
	}
	s := &r.buf[(r.head+r.n)&(len(r.buf)-1)]
	s.to, s.from, s.msg, s.kind = to, from, msg, k
	r.n++
	if to != nil {
		to.queued++
	}
}

func (r *ring) pushEnvelope(e envelope) { r.push(e.to, e.from, e.msg, e.kind) }

func (r *ring) grow() {
	nb := make([]envelope, max(64, 2*len(r.buf)))
	for i := 0; i < r.n; i++ {
		nb[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
	}
	r.buf, r.head = nb, 0
}

func (r *ring) pop() envelope {
	e := r.buf[r.head]
	r.buf[r.head] = envelope{}
	r.head = (r.head + 1) & (len(r.buf) - 1)
	r.n--
	if e.to != nil {
		e.to.queued--
	}
	return e
}

// yieldEvery is how often a busy loop passes through the scheduler at
// least: well within sysmon's 10 ms preemption period.
const yieldEvery = 5 * time.Millisecond

// pwait2 is 1 while epoll_pwait2 (Linux 5.11) is believed to work, 0 once
// it returned ENOSYS or EPERM.
var pwait2 atomic.Int32

func init() { pwait2.Store(1) }

// epollWait waits for events at most d, or without a bound if d < 0. With
// epoll_pwait2 the timeout has nanosecond resolution, so timers fire when
// due rather than at the next millisecond; without it, d is rounded up to
// a millisecond.
func epollWait(epfd int, events []unix.EpollEvent, d time.Duration) (int, error) {
	if d > 0 && pwait2.Load() == 1 {
		ts := unix.NsecToTimespec(int64(d))
		r, _, e := unix.Syscall6(unix.SYS_EPOLL_PWAIT2, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
		switch e {
		case 0:
			return int(r), nil
		case unix.ENOSYS, unix.EPERM:
			// Not in this kernel, or refused by a seccomp filter
			// (older container runtimes): use epoll_wait from now on.
			pwait2.Store(0)
		default:
			return 0, e
		}
	}
	ms := -1
	if d >= 0 {
		ms = int((d + time.Millisecond - 1) / time.Millisecond)
	}
	return unix.EpollWait(epfd, events, ms)
}
