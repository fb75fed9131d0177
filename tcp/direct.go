package tcp

import (
	"sync"

	"golang.org/x/sys/unix"
)

// DirectWriter lets goroutines other than the connection's loop write to its
// socket themselves, without a message to the connection and a wake-up of
// its loop, while the connection has no write of its own pending. Create it
// with [NewDirectWriter] and hand it to the connection in [Register]; it is
// attached once the connection processed Register and detached when the
// connection starts to close. Its methods are safe from any goroutine.
//
// A direct write and a Write sent to the connection are ordered only by the
// caller: a handler that uses both must send a Write only after the direct
// writes it follows returned, and write directly only when no Write of its
// is pending (as package raft's writer does).
type DirectWriter struct {
	mu    sync.Mutex
	fd    int  // -1: not attached, or detached
	busy  bool // the connection has a write pending
	stats *loopStats
}

// NewDirectWriter returns a detached DirectWriter.
func NewDirectWriter() *DirectWriter { return &DirectWriter{fd: -1} }

// TryWrite writes as much of b as the socket takes at once (one write(2),
// never blocking). ok is false, and nothing is written, when the writer is
// not attached or the connection has a write pending: then, and for the
// rest b[n:] when ok is true, the caller sends a Write to the connection.
// A socket error is not reported here: the connection meets it on its next
// read or write, and closes as usual.
func (w *DirectWriter) TryWrite(b []byte) (n int, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fd < 0 || w.busy {
		return 0, false
	}
	if len(b) == 0 {
		return 0, true
	}
	// A raw sendto(2) (sysWrite) when short (non-blocking: it returns at once): it does
	// not wake sysmon, as syscall.Syscall does whenever every P was idle
	// (see ReadFile); a long one keeps the runtime's accounting.
	var err error
	if len(b) <= rawIOMax {
		n, err = sysWrite(w.fd, b)
	} else {
		n, err = unix.Write(w.fd, b)
	}
	if err != nil || n < 0 {
		return 0, true
	}
	w.stats.bytesOut.Add(uint64(n))
	return n, true
}

// attach publishes the connection's socket (loop).
func (w *DirectWriter) attach(fd int, busy bool, stats *loopStats) {
	w.mu.Lock()
	w.fd, w.busy, w.stats = fd, busy, stats
	w.mu.Unlock()
}

// setBusy records whether the connection has a write pending (loop): a
// direct write in progress finishes before the connection writes.
func (w *DirectWriter) setBusy(busy bool) {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.busy = busy
	w.mu.Unlock()
}

// detach stops direct writes before the socket is closed (loop).
func (w *DirectWriter) detach() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.fd = -1
	w.mu.Unlock()
}
