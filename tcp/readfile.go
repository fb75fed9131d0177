package tcp

import (
	"io"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ReadFile is the read side of a connection whose reading was handed over
// ([ReadingHandedOver]): a duplicate of the socket on the Go runtime's
// poller. Read blocks the goroutine, not a thread, and honours
// SetReadDeadline, as an [os.File]'s does; unlike os.File's, its read(2) is
// a raw system call (the socket is non-blocking: it returns at once),
// which does not wake the runtime's sysmon thread out of its sleep. An
// os.File read, through syscall.Syscall, does whenever every P was idle —
// the state of a mostly idle process at each of its wake-ups — and sysmon
// then polls every 20 µs until the process is idle again: for a raft
// leader at rest that was a third of its system calls.
//
// Read, SetReadDeadline and Close are safe from any goroutine; only one
// goroutine may Read at a time.
type ReadFile struct {
	f      *os.File
	rc     syscall.RawConn
	closed atomic.Bool
}

// rawIOMax is the largest read or direct write made as a raw system call: a larger one
// may spend long enough copying to want the runtime's system call
// accounting (sysmon can hand the P to another thread meanwhile).
const rawIOMax = 64 << 10

func newReadFile(fd int) (*ReadFile, error) {
	// The duplicate shares the socket's O_NONBLOCK, so os.NewFile puts it
	// on the runtime's poller.
	f := os.NewFile(uintptr(fd), "tcp-read")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &ReadFile{f: f, rc: rc}, nil
}

// Read reads up to len(b) bytes, waiting on the runtime's poller until some
// arrive, the peer's FIN (io.EOF), the read deadline
// (os.ErrDeadlineExceeded) or Close (os.ErrClosed).
func (r *ReadFile) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	var n int
	var errno unix.Errno
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			var v uintptr
			if len(b) <= rawIOMax {
				v, _, errno = unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
			} else {
				v, _, errno = unix.Syscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)))
			}
			if errno != unix.EINTR {
				n = int(v)
				return errno != unix.EAGAIN
			}
		}
	})
	switch {
	case err != nil:
		if r.closed.Load() {
			return 0, os.ErrClosed
		}
		return 0, err // os.ErrDeadlineExceeded, for errors.Is
	case errno != 0:
		return 0, os.NewSyscallError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// SetReadDeadline sets the deadline of Reads, as os.File's does.
func (r *ReadFile) SetReadDeadline(t time.Time) error { return r.f.SetReadDeadline(t) }

// Close closes the duplicate; a Read blocked on it returns os.ErrClosed.
// The socket itself stays open until the connection closes too.
func (r *ReadFile) Close() error {
	r.closed.Store(true)
	return r.f.Close()
}
