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

	// The retry after a failed accept (EMFILE, ENFILE, ENOBUFS, ENOMEM):
	// one chain per listener, whatever the readiness events meanwhile,
	// with a back-off that doubles from minAcceptBackoff to
	// maxAcceptBackoff and resets on the next successful accept.
	retrying bool
	backoff  time.Duration
	failures uint64 // failed accepts since the last success
}

// acceptBurst bounds the accepts done per readiness event, for fairness.
const acceptBurst = 64

// The back-off of accept retries, as net/http's Server.Serve.
const (
	minAcceptBackoff = 5 * time.Millisecond
	maxAcceptBackoff = time.Second
)

func (l *listener) PreStart(ctx *netio.Context) {
	l.stats = statsFor(ctx)
	b := l.bind
	fail := func(err error) {
		ctx.Tell(l.handler, CommandFailed{Cmd: l.cmd, Cause: fmt.Errorf("tcp: bind %v: %w", b.LocalAddr, err)})
		ctx.Stop()
	}
	fd, err := netio.Socket(b.LocalAddr, unix.SOCK_STREAM, unix.IPPROTO_TCP)
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
	if err := unix.Bind(fd, netio.Sockaddr(b.LocalAddr)); err != nil {
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
	ctx.Tell(l.handler, Bound{Socket: ctx.Self(), LocalAddr: local})
}

func (l *listener) OnEvents(ctx *netio.Context, ev uint32) {
	l.acceptable = true
	if l.retrying {
		return // the pending retry accepts
	}
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
				l.acceptFailed(ctx, err)
			}
			return
		}
		if l.failures > 0 {
			ctx.Logger().Info("tcp: accepting again", "addr", l.bind.LocalAddr, "failed_accepts", l.failures)
			l.failures, l.backoff = 0, 0
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

// acceptFailed schedules the listener's one retry after a failed accept
// (EMFILE and friends: the pending connection stays in the backlog), with
// back-off. It logs the first failure of a run and then each time the
// back-off doubles, so a listener at the descriptor limit writes a few
// lines, then one a second.
func (l *listener) acceptFailed(ctx *netio.Context, err error) {
	l.stats.acceptErrors.Add(1)
	l.failures++
	if l.retrying {
		return // a retry is pending already (ResumeAccepting accepted meanwhile)
	}
	if l.backoff == 0 {
		l.backoff = minAcceptBackoff
	} else {
		l.backoff = min(2*l.backoff, maxAcceptBackoff)
	}
	if l.failures == 1 || l.backoff < maxAcceptBackoff || l.failures%10 == 0 {
		ctx.Logger().Warn("tcp: accept failed; retrying", "addr", l.bind.LocalAddr, "err", err, "retry_in", l.backoff, "failed_accepts", l.failures)
	}
	l.retrying = true
	ctx.After(l.backoff, resumeAccept{})
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
		l.retrying = false
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
