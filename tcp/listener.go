package tcp

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/netio"
)

// listener is the actor that owns a listening socket.
type listener struct {
	cmd     any
	bind    *Bind
	handler netio.Ref
	fd      int

	acceptable bool
	batch      int // pull mode: connections still allowed before ResumeAccepting
	stats      *loopStats
}

// acceptBurst bounds the accepts done per readiness event, for fairness.
const acceptBurst = 64

func (l *listener) PreStart(ctx *netio.Context) {
	l.stats = statsFor(ctx)
	b := l.bind
	fail := func(err error) {
		ctx.Tell(l.handler, CommandFailed{Cmd: l.cmd, Cause: fmt.Errorf("tcp: bind %v: %w", b.Addr, err)})
		ctx.Stop()
	}
	fd, err := netio.Socket(b.Addr, unix.SOCK_STREAM, unix.IPPROTO_TCP)
	if err != nil {
		fail(err)
		return
	}
	if err := ctx.Register(fd, netio.EventIn|unix.EPOLLET, l); err != nil {
		unix.Close(fd)
		fail(err)
		return
	}
	l.fd = fd
	if err := netio.ApplyOptions(fd, append([]netio.SocketOption{netio.ReuseAddr(true)}, b.Options...)); err != nil {
		fail(err)
		return
	}
	if err := unix.Bind(fd, netio.Sockaddr(b.Addr)); err != nil {
		fail(os.NewSyscallError("bind", err))
		return
	}
	backlog := b.Backlog
	if backlog <= 0 {
		backlog = 1024
	}
	if err := unix.Listen(fd, backlog); err != nil {
		fail(os.NewSyscallError("listen", err))
		return
	}
	local, err := netio.LocalAddr(fd)
	if err != nil {
		fail(err)
		return
	}
	ctx.Watch(l.handler)
	ctx.Tell(l.handler, Bound{LocalAddr: local, Listener: ctx.Self()})
}

func (l *listener) OnEvents(ctx *netio.Context, ev uint32) {
	l.acceptable = true
	l.accept(ctx)
}

func (l *listener) accept(ctx *netio.Context) {
	for i := 0; l.acceptable && i < acceptBurst; i++ {
		if l.bind.PullMode && l.batch == 0 {
			return
		}
		nfd, sa, err := unix.Accept4(l.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			switch {
			case errors.Is(err, unix.EAGAIN):
				l.acceptable = false
			case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
				continue
			default:
				// EMFILE and friends: log, back off a little, retry later.
				ctx.Logger().Warn("tcp: accept failed", "addr", l.bind.Addr, "err", err)
				l.stats.acceptErrors.Add(1)
				ctx.After(10*time.Millisecond, resumeAccept{})
				return
			}
			return
		}
		if err := applyConnOptions(nfd, l.bind.ConnOptions); err != nil {
			ctx.Logger().Warn("tcp: options on accepted connection", "err", err)
			unix.Close(nfd)
			continue
		}
		if l.bind.PullMode {
			l.batch--
		}
		c := newAcceptedConn(nfd, netio.AddrPortOf(sa), l.handler, l.bind.PullMode, l.bind.RegisterTimeout)
		ctx.SpawnOn(ctx.System().NextLoop(), c)
	}
	if l.acceptable {
		ctx.Wake(l.fd, netio.EventIn)
	}
}

type resumeAccept struct{}

func (l *listener) Receive(ctx *netio.Context, msg any) {
	switch m := msg.(type) {
	case ResumeAccepting:
		l.batch = m.BatchSize
		l.accept(ctx)
	case *ResumeAccepting:
		l.batch = m.BatchSize
		l.accept(ctx)
	case resumeAccept:
		l.acceptable = true
		l.accept(ctx)
	case Unbind, *Unbind:
		ctx.CloseFD(l.fd)
		l.fd = -1
		ctx.Reply(Unbound{})
		if s := ctx.Sender(); s != l.handler {
			ctx.Tell(l.handler, Unbound{})
		}
		ctx.Stop()
	case netio.Terminated:
		if m.Ref == l.handler {
			ctx.Stop() // netio closes the listening socket
		}
	}
}
