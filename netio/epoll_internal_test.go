package netio

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// epollWait waits its timeout with epoll_pwait2 and, once that is known
// not to work, with epoll_wait rounded up to milliseconds.
func TestEpollWaitTimeout(t *testing.T) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(epfd)
	events := make([]unix.EpollEvent, 4)
	defer pwait2.Store(pwait2.Load())
	for _, mode := range []int32{1, 0} {
		pwait2.Store(mode)
		for _, d := range []time.Duration{0, 300 * time.Microsecond, 2 * time.Millisecond} {
			start := time.Now()
			n, err := epollWait(epfd, events, d)
			if el := time.Since(start); n != 0 || err != nil && err != unix.EINTR || err == nil && el < d {
				t.Fatalf("pwait2=%d, timeout %v: %d events, %v, after %v", mode, d, n, err, el)
			}
		}
	}
}
