package raft

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// Limits of the listening side: what a stranger who reaches the port can
// make the transport hold, TLS or not.
//
//   - a frame's buffer grows as its bytes arrive (an announced length costs
//     nothing until the bytes behind it came), up to Config.MaxFrameSize;
//   - the bytes of incoming frames, in reassembly and queued for raft, of
//     all connections together are bounded by Config.MaxBuffered: the
//     connection whose frame would exceed it is closed (ErrOverloaded);
//   - a connection must send its preamble within Config.Timeout; with
//     TLS it must finish its handshake within Config.Timeout and then
//     send its preamble within another Config.Timeout (the dispatcher
//     reads a TLS connection from the start and enforces these with read
//     deadlines, not the actor's guard). A failed handshake is counted
//     once as a rejected connection and logged at Debug, and until its
//     handshake is done a TLS connection holds no read buffer;
//   - a frame once begun must keep coming: a connection silent for
//     Config.Timeout in the middle of a frame is closed (ErrStalled),
//     unless it is this side that stopped reading;
//   - a connection's answers not yet taken by the kernel are bounded by
//     min(Config.MaxBuffered, 4 MiB) plus what raft is already working on
//     for it (at most 128 requests): past that its dispatcher takes no
//     more of its requests, so that it stops reading the socket and TCP
//     holds the peer back; if none of its answers is taken for
//     Config.Timeout meanwhile, the connection is closed (ErrSlowPeer);
//   - at most Config.MaxConnections accepted connections at a time; more
//     are reset at once;
//   - what a closed connection held goes back to the budget, and its
//     buffers to the garbage collector.
var (
	// ErrOverloaded: incoming frames would exceed Config.MaxBuffered.
	ErrOverloaded = errors.New("raft transport: incoming frames exceed the transport's buffer budget")
	// ErrStalled: a connection stopped sending in the middle of its
	// preamble or of a frame.
	ErrStalled = errors.New("raft transport: connection stalled")
	// ErrSlowPeer: a connection read none of its answers for
	// Config.Timeout while more than outCap of them waited.
	ErrSlowPeer = errors.New("raft transport: peer does not read its answers")
)

const (
	defaultMaxConns    = 256
	defaultMaxBuffered = 2 * defaultMaxFrame
)

// outCap is the bytes of answers a server connection may have pending
// before its dispatcher takes no more requests (limits.go's list).
func (t *Transport) outCap() int {
	return min(t.cfg.MaxBuffered, maxSpare)
}

// budget counts bytes against a maximum, for every connection of a
// transport.
type budget struct {
	used atomic.Int64
	max  int64
}

// take charges n bytes, unless that would exceed the maximum.
func (b *budget) take(n int) bool {
	if n <= 0 {
		return true
	}
	if b.used.Add(int64(n)) > b.max {
		b.used.Add(-int64(n))
		return false
	}
	return true
}

func (b *budget) give(n int) {
	if n > 0 {
		b.used.Add(-int64(n))
	}
}

type guardTick struct{}

// guardInterval is how often a server connection checks its deadlines:
// they hold within 1.5 × Config.Timeout, and an idle connection costs one
// timer event per half Timeout.
func guardInterval(timeout time.Duration) time.Duration {
	return max(timeout/2, 10*time.Millisecond)
}

// startGuard arms the connection's deadlines (actor, PreStart).
func (s *serverConn) startGuard(ctx *netio.Context) {
	s.born = ctx.Now()
	s.lastRead = s.born
	s.rd.bud = &s.t.bud
	s.guard = ctx.Every(guardInterval(s.t.cfg.Timeout), guardTick{})
}

// checkGuard closes the connection if it is late with its preamble or
// silent in the middle of a frame (actor).
func (s *serverConn) checkGuard(ctx *netio.Context) {
	if s.closing || s.handOff {
		return // handed off: the dispatcher owns rd and checks it
	}
	now, limit := ctx.Now(), s.t.cfg.Timeout
	switch {
	case s.pre < len(preamble) && now.Sub(s.born) > limit:
		s.reject(ctx, fmt.Errorf("%w: no preamble within %v", ErrStalled, limit))
	case s.rd.partial() && s.snap == nil && !s.suspended && now.Sub(s.lastRead) > limit:
		s.reject(ctx, fmt.Errorf("%w: silent for %v in the middle of a frame", ErrStalled, limit))
	}
}

// stopGuard stops the timer and gives back what the connection held of
// the budget (actor, PostStop); rd only when the actor owns it (ownRd),
// else the dispatcher releases it.
func (s *serverConn) stopGuard(ownRd bool) {
	if s.guard != nil {
		s.guard.Stop()
	}
	if ownRd {
		s.rd.buf = nil
		s.rd.release()
	}
	s.qmu.Lock()
	for _, in := range s.q {
		s.t.bud.give(in.charge)
	}
	s.q = nil
	s.qmu.Unlock()
}

// admit reports whether another accepted connection fits under
// Config.MaxConnections; when not, it resets conn.
func (t *Transport) admit(conn netio.Ref) bool {
	t.mu.Lock()
	ok := len(t.servers) < t.cfg.MaxConnections
	t.mu.Unlock()
	if !ok {
		t.m.rejected.Add(1)
		conn.Tell(tcp.Abort{})
	}
	return ok
}
