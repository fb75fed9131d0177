package raft

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ioactor/ioactor/netio"
)

// snapPipe carries a snapshot's data from a server connection to raft,
// which reads it as RPC.Reader.
//
// Without TLS the actor hands the socket's reading over to the pipe
// (tcp.HandOverReading) as soon as the snapshot's header arrived: what the
// loop had read by then is copied into the pipe, and the rest raft's
// goroutine reads at the socket itself, through a duplicate of it on the
// runtime's poller, into raft's buffer when that is large (fileDirect) or
// else into one fileBuf-sized buffer of the pipe — one copy, as a
// net.Conn behind a bufio.Reader makes. The receiver then holds at most the
// socket's receive buffer and fileBuf, and a stalled reader stalls the
// sender through the TCP window.
//
// With TLS the dispatcher, which reads the connection from the start,
// copies what it read of the data into the pipe and gives raft its tls.Conn
// for the rest (tlsSnapSource). Until the hand-over is answered the actor
// copies each read into the pipe; once SnapshotReadAhead bytes wait unread it suspends
// reading at the socket, and the reader resumes it when half of them are
// consumed. So the receiver holds at most read-ahead + one socket read of
// data.
type snapPipe struct {
	t     *Transport
	actor netio.Ref

	remaining int64 // bytes still to come from the network (actor only)

	mu       sync.Mutex
	chunks   [][]byte
	off      int // read offset in chunks[0]
	buffered int
	err      error // once buffered data is consumed: io.EOF or the failure
	free     [][]byte

	file snapSource // the socket, once handed over (under mu; closed by finish)
	left int64      // bytes still to come through file (reader, once file is set)
	fbuf []byte     // reader only: file data read ahead of a small Read
	foff int        // read offset in fbuf

	signal     chan struct{}
	wantResume atomic.Bool
	timer      *time.Timer // reader only
}

// snapSource is where a handed-over snapshot's data is read: the socket
// (*tcp.ReadFile), or with TLS the connection's tls.Conn over it
// (tlsSnapSource).
type snapSource interface {
	Read([]byte) (int, error)
	SetReadDeadline(time.Time) error
	Close() error
}

const (
	pipeChunk = 64 << 10
	// fileBuf is the read-ahead of a handed-over socket (NetworkTransport's
	// bufio.Reader has 256 KiB too); a Read of at least fileDirect bytes
	// (raft copies a snapshot with io.Copy's 32 KiB) reads into the
	// caller's buffer directly.
	fileBuf    = 256 << 10
	fileDirect = 32 << 10
)

func newSnapPipe(t *Transport, actor netio.Ref, size int64) *snapPipe {
	p := &snapPipe{t: t, actor: actor, remaining: size, signal: make(chan struct{}, 1)}
	if size == 0 {
		p.err = io.EOF
	}
	return p
}

// write copies up to the remaining snapshot bytes of b (actor). done
// reports that the snapshot's data is complete.
func (p *snapPipe) write(b []byte) (n int, done bool) {
	n = int(min(int64(len(b)), p.remaining))
	b = b[:n]
	p.remaining -= int64(n)
	p.mu.Lock()
	for len(b) > 0 {
		var last []byte
		if k := len(p.chunks); k > 0 {
			last = p.chunks[k-1]
		}
		if last == nil || len(last) == cap(last) {
			if k := len(p.free); k > 0 {
				last = p.free[k-1][:0]
				p.free = p.free[:k-1]
			} else {
				last = make([]byte, 0, pipeChunk)
			}
			p.chunks = append(p.chunks, last)
		}
		c := copy(last[len(last):cap(last)], b)
		p.chunks[len(p.chunks)-1] = last[:len(last)+c]
		b = b[c:]
		p.buffered += c
	}
	if p.remaining == 0 {
		p.err = io.EOF
	}
	p.mu.Unlock()
	p.notify()
	return n, p.remaining == 0
}

// full reports whether the read-ahead is used up (actor); the reader will
// then ask for reading to resume.
func (p *snapPipe) full() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.buffered >= p.t.cfg.SnapshotReadAhead && p.err == nil {
		p.wantResume.Store(true)
		return true
	}
	return false
}

// handOver gives the pipe the socket, with left bytes of the snapshot
// still unread (actor, after its last write).
func (p *snapPipe) handOver(f snapSource, left int64) {
	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		f.Close()
		return
	}
	p.file, p.left = f, left
	p.mu.Unlock()
	p.notify()
}

// finish ends the data with err unless it is complete already, and closes
// a handed-over socket (any goroutine).
func (p *snapPipe) finish(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	f := p.file
	p.file = nil
	p.mu.Unlock()
	if f != nil {
		f.Close() // a Read blocked on it returns
	}
	p.notify()
}

func (p *snapPipe) notify() {
	select {
	case p.signal <- struct{}{}:
	default:
	}
}

// Read implements io.Reader for raft. It returns io.EOF after exactly Size
// bytes, or the error that cut the data short; it fails with ErrTimeout
// when no data arrives for Config.Timeout.
func (p *snapPipe) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if p.foff < len(p.fbuf) { // read ahead from the socket, before the end
		n := copy(b, p.fbuf[p.foff:])
		p.foff += n
		return n, nil
	}
	p.mu.Lock()
	for p.buffered == 0 {
		if p.err != nil {
			err := p.err
			p.mu.Unlock()
			return 0, err
		}
		if f := p.file; f != nil {
			p.mu.Unlock()
			return p.readFile(f, b)
		}
		p.mu.Unlock()
		if err := p.wait(); err != nil {
			p.finish(err)
		}
		p.mu.Lock()
	}
	n := 0
	for n < len(b) && len(p.chunks) > 0 {
		c := p.chunks[0]
		k := copy(b[n:], c[p.off:])
		n += k
		p.off += k
		if p.off == len(c) {
			p.chunks[0] = nil
			p.chunks = p.chunks[1:]
			p.off = 0
			// Keep what the read-ahead can hold: a snapshot then
			// allocates its buffers once, not once per 64 KiB (the
			// allocations and their page faults were a fifth of the
			// receiving loop's time).
			if len(p.free) <= p.t.cfg.SnapshotReadAhead/pipeChunk+1 {
				p.free = append(p.free, c[:0])
			}
		}
	}
	p.buffered -= n
	resume := p.buffered <= p.t.cfg.SnapshotReadAhead/2
	p.mu.Unlock()
	if resume && p.wantResume.CompareAndSwap(true, false) {
		p.actor.Tell(resumeReading{})
	}
	return n, nil
}

// readFile reads from the handed-over socket (reader; the pipe's chunks
// are consumed).
func (p *snapPipe) readFile(f snapSource, b []byte) (int, error) {
	if p.left == 0 {
		p.finish(io.EOF)
		return 0, io.EOF
	}
	dst := b
	if len(b) < fileDirect {
		if p.fbuf == nil {
			p.fbuf = make([]byte, fileBuf)
		}
		dst = p.fbuf[:cap(p.fbuf)]
	}
	dst = dst[:min(int64(len(dst)), p.left)]
	if err := f.SetReadDeadline(time.Now().Add(p.t.cfg.Timeout)); err != nil {
		return 0, p.fileErr(err)
	}
	n, err := f.Read(dst)
	if n > 0 {
		p.left -= int64(n)
		p.t.m.bytesIn.Add(uint64(n))
		if p.left == 0 {
			p.finish(io.EOF)
		}
		if len(b) < fileDirect {
			p.fbuf, p.foff = dst[:n], copy(b, dst[:n])
			return p.foff, nil
		}
		return n, nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return 0, p.fileErr(err)
}

// fileErr ends the data over a failed read of the socket and returns the
// error the reader sees.
func (p *snapPipe) fileErr(err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		err = fmt.Errorf("%w: no snapshot data for %v", ErrTimeout, p.t.cfg.Timeout)
	case errors.Is(err, io.EOF):
		err = fmt.Errorf("%w: before all snapshot data arrived", ErrConnectionClosed)
	default: // closed by finish (then p.err stands), or a socket error
		err = fmt.Errorf("%w: reading snapshot data: %w", ErrConnectionClosed, err)
	}
	p.finish(err)
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// wait blocks until the actor signals, the transport closes or Timeout.
func (p *snapPipe) wait() error {
	if p.timer == nil {
		p.timer = time.NewTimer(p.t.cfg.Timeout)
	} else {
		p.timer.Reset(p.t.cfg.Timeout)
	}
	select {
	case <-p.signal:
		p.timer.Stop()
		return nil
	case <-p.t.shutdownCh:
		p.timer.Stop()
		return ErrTransportShutdown
	case <-p.timer.C:
		return fmt.Errorf("%w: no snapshot data for %v", ErrTimeout, p.t.cfg.Timeout)
	}
}
