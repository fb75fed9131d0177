package tcp

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/netio"
)

// HandOverReading gives the reading of a connection to a goroutine, for a
// bulk stream (package raft's snapshot data) that the goroutine then reads
// at the socket into its own buffers, without the loop's read buffer and
// the copy out of it. The connection stops reading for good (as after
// SuspendReading; a later ResumeReading is ignored) and answers with [ReadingHandedOver], whose File is a
// duplicate of its socket on the Go runtime's poller ([ReadFile]: Read
// blocks the goroutine, not a thread; SetReadDeadline works), or with CommandFailed
// when it is not open.
//
// The connection's loop is no longer woken by arriving data; the peer's FIN
// is reported as [FINArrived], and a reset or hang-up of the socket still
// ends the connection as a failed read would. Every byte the connection read before it took the command reached the
// handler as Received before ReadingHandedOver; what the File reads comes
// after them. The caller must Close the File: the socket stays open, and a
// reset (Abort) is not sent, until both the connection and the File are
// closed. Writing and closing stay the connection's; write nothing to the
// File.
type HandOverReading struct{}

// ReadingHandedOver answers HandOverReading.
type ReadingHandedOver struct{ File *ReadFile }

// FINArrived tells the handler of a connection whose reading was handed
// over that the peer's FIN arrived: the connection stays open (the File's
// reader reads what came before it, then io.EOF); a handler that keeps
// idle connections can drop this one now instead of on its next use.
type FINArrived struct{}

// handOverReading duplicates the socket for HandOverReading (loop).
func (c *conn) handOverReading(ctx *netio.Context, cmd any) {
	to := replyTo(ctx, c.handler)
	if c.state != stateOpen || c.fd < 0 || c.closing != closeNone {
		ctx.Tell(to, CommandFailed{Cmd: cmd, Cause: fmt.Errorf("hand over reading: %w", ErrClosing)})
		return
	}
	fd, err := unix.FcntlInt(uintptr(c.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		ctx.Tell(to, CommandFailed{Cmd: cmd, Cause: fmt.Errorf("hand over reading: dup: %w", err)})
		return
	}
	f, err := newReadFile(fd)
	if err != nil {
		ctx.Tell(to, CommandFailed{Cmd: cmd, Cause: fmt.Errorf("hand over reading: %w", err)})
		return
	}
	// Nor wake the loop for what arrives: EPOLLIN off (EPOLLRDHUP stays,
	// for FINArrived).
	if err := ctx.Modify(c.fd, connEvents&^netio.EventIn); err != nil {
		f.Close()
		ctx.Tell(to, CommandFailed{Cmd: cmd, Cause: fmt.Errorf("hand over reading: %w", err)})
		return
	}
	c.suspended, c.handedOver = true, true
	ctx.Tell(to, ReadingHandedOver{File: f})
}

// handedOverEvents handles the read side's events of a connection whose
// reading was handed over (loop). A reset or hang-up (EPOLLERR, EPOLLHUP)
// ends it, since the File's reader, if any, may be waiting for something
// else (a raft dispatcher waits for raft's answer): the handler learns it as
// from a failed read. The peer's FIN (EPOLLRDHUP) is told once.
func (c *conn) handedOverEvents(ctx *netio.Context, ev uint32) {
	if c.state != stateOpen || c.fd < 0 || c.closing != closeNone {
		return
	}
	if ev&(netio.EventHup|netio.EventErr) == 0 {
		if ev&netio.EventRdHup != 0 && !c.finTold {
			c.finTold = true
			ctx.Tell(c.handler, FINArrived{})
		}
		return
	}
	soerr, err := unix.GetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_ERROR)
	switch {
	case err != nil:
	case soerr != 0:
		err = unix.Errno(soerr)
	default:
		err = unix.EPIPE // hung up both ways
	}
	c.fail(ctx, "read", err)
}
