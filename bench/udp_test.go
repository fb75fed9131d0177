package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/loadgen"
)

func startUDPServer(tb testing.TB, impl UDPImpl) *UDPServer {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv, err := StartUDP(ctx, impl, loopback, UDPServerConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			tb.Errorf("close %s: %v", impl, err)
		}
	})
	return srv
}

// udpClient is the load: one connected net.UDPConn that sends numbered
// datagrams (an 8-byte sequence number, then filler) and waits for their
// echoes. UDP may lose datagrams, so every wait has a deadline: a datagram
// not back by then is counted lost, and an echo that arrives later is
// counted late and skipped. The client allocates nothing per datagram.
//
// By default it sends with write(2) and receives with read(2), one datagram
// per call, through the net package. With gso it sends a burst of equal-size
// datagrams with one sendmsg and UDP_SEGMENT (two for 1,400 B: a GSO send
// carries at most 65,507 bytes) and receives with recvmmsg, still through the
// net.UDPConn's netpoller (its RawConn), and counts those calls in own.
type udpClient struct {
	c       *net.UDPConn
	size    int
	out     []byte
	in      []byte
	seq     uint64
	timeout time.Duration
	verify  bool // compare every echoed byte, not only the length
	lost    uint64
	late    uint64
	views   [64][]byte // the echoes receive returns

	gso   bool
	rc    syscall.RawConn
	burst []byte // gso: 64 datagrams back to back
	shdr  unix.Msghdr
	cmsg  []byte // UDP_SEGMENT
	rmsgs [64]unix.Mmsghdr
	iovs  [65]unix.Iovec // 64 to receive, 1 to send
	recvN int            // datagrams the last recvmmsg took
	errno unix.Errno
	own   uint64 // sendmsg and recvmmsg calls made
	wfn   func(fd uintptr) bool
	rfn   func(fd uintptr) bool
}

const udpClientTimeout = 200 * time.Millisecond // loopback round trips take tens of µs

func dialUDPClient(tb testing.TB, srv *UDPServer, size int, gso bool) *udpClient {
	tb.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(srv.Addr))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	if err := c.SetReadBuffer(DefaultUDPReceiveBuffer); err != nil {
		tb.Fatal(err)
	}
	if err := c.SetWriteBuffer(DefaultUDPReceiveBuffer); err != nil {
		tb.Fatal(err)
	}
	size = max(size, 8)
	cl := &udpClient{c: c, size: size, out: make([]byte, size), in: make([]byte, 64<<10),
		timeout: udpClientTimeout, gso: gso}
	rand.Read(cl.out)
	if gso {
		if cl.rc, err = c.SyscallConn(); err != nil {
			tb.Fatal(err)
		}
		const slot = 2048 // bursts are of 1,400 B at most; longer echoes are truncated and fail
		if size > slot {
			tb.Fatalf("gso client: size %d > %d", size, slot)
		}
		cl.in = make([]byte, 64*slot)
		for i := range 64 {
			cl.burst = append(cl.burst, cl.out...)
			cl.iovs[i] = unix.Iovec{Base: &cl.in[i*slot]}
			cl.iovs[i].SetLen(slot)
			cl.rmsgs[i].Hdr.Iov = &cl.iovs[i]
			cl.rmsgs[i].Hdr.SetIovlen(1)
		}
		cl.cmsg = make([]byte, unix.CmsgSpace(2))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&cl.cmsg[0]))
		h.Level, h.Type = unix.SOL_UDP, unix.UDP_SEGMENT
		h.SetLen(unix.CmsgLen(2))
		binary.NativeEndian.PutUint16(cl.cmsg[unix.CmsgLen(0):], uint16(size))
		cl.shdr.Iov = &cl.iovs[64]
		cl.shdr.SetIovlen(1)
		cl.shdr.Control = &cl.cmsg[0]
		cl.shdr.SetControllen(len(cl.cmsg))
		cl.wfn, cl.rfn = cl.sendmsg, cl.recvmmsg
	}
	return cl
}

// exchange sends n numbered datagrams back to back (n ≤ 64), then reads
// until all n echoes are back or the deadline passes. It returns how many
// came back; an error is anything but a loss.
func (c *udpClient) exchange(n int) (int, error) {
	base := c.seq
	c.seq += uint64(n)
	if err := c.send(base, n); err != nil {
		return 0, fmt.Errorf("send: %w", err)
	}
	if err := c.c.SetReadDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	var seen uint64
	got := 0
	for got < n {
		echoes, err := c.receive()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				c.lost += uint64(n - got)
				return got, nil
			}
			return got, fmt.Errorf("receive: %w", err)
		}
		for _, e := range echoes {
			if len(e) < 8 {
				return got, fmt.Errorf("echo of %d bytes, sent %d", len(e), c.size)
			}
			s := binary.LittleEndian.Uint64(e)
			switch {
			case s < base:
				c.late++
				continue
			case s >= base+uint64(n):
				return got, fmt.Errorf("echo of datagram %d, never sent", s)
			case seen&(1<<(s-base)) != 0:
				return got, fmt.Errorf("datagram %d echoed twice", s)
			case len(e) != c.size:
				return got, fmt.Errorf("echo of %d bytes, sent %d", len(e), c.size)
			case c.verify && !bytes.Equal(e[8:], c.out[8:]):
				return got, fmt.Errorf("echo of datagram %d differs", s)
			}
			seen |= 1 << (s - base)
			got++
		}
	}
	return got, nil
}

func (c *udpClient) send(base uint64, n int) error {
	if !c.gso {
		for i := range n {
			binary.LittleEndian.PutUint64(c.out, base+uint64(i))
			if _, err := c.c.Write(c.out); err != nil {
				return err
			}
		}
		return nil
	}
	for i := range n {
		binary.LittleEndian.PutUint64(c.burst[i*c.size:], base+uint64(i))
	}
	per := min(n, 65507/c.size)
	for off := 0; off < n; off += per {
		k := min(per, n-off)
		c.iovs[64] = unix.Iovec{Base: &c.burst[off*c.size]}
		c.iovs[64].SetLen(k * c.size)
		c.errno = 0
		if err := c.rc.Write(c.wfn); err != nil {
			return err
		}
		if c.errno != 0 {
			return fmt.Errorf("sendmsg with UDP_SEGMENT: %w", c.errno)
		}
	}
	return nil
}

// receive returns the next echoes: one, or with gso as many as one recvmmsg
// takes. They are valid until the next call.
func (c *udpClient) receive() ([][]byte, error) {
	if !c.gso {
		m, err := c.c.Read(c.in)
		if err != nil {
			return nil, err
		}
		c.views[0] = c.in[:m]
		return c.views[:1], nil
	}
	c.recvN, c.errno = 0, 0
	if err := c.rc.Read(c.rfn); err != nil {
		return nil, err
	}
	if c.errno != 0 {
		return nil, c.errno
	}
	for i := range c.recvN {
		m := &c.rmsgs[i]
		if m.Hdr.Flags&unix.MSG_TRUNC != 0 {
			return nil, fmt.Errorf("echo longer than %d bytes", m.Hdr.Iov.Len)
		}
		c.views[i] = unsafe.Slice(m.Hdr.Iov.Base, m.Len)
	}
	return c.views[:c.recvN], nil
}

func (c *udpClient) sendmsg(fd uintptr) bool {
	for {
		_, _, e := unix.Syscall(unix.SYS_SENDMSG, fd, uintptr(unsafe.Pointer(&c.shdr)), 0)
		c.own++
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait until writable
		}
		c.errno = e
		return true
	}
}

func (c *udpClient) recvmmsg(fd uintptr) bool {
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.rmsgs[0])), uintptr(len(c.rmsgs)), 0, 0, 0)
		c.own++
		switch e {
		case 0:
			c.recvN = int(r)
			return true
		case unix.EINTR:
		case unix.EAGAIN:
			return false // wait until readable (or the deadline)
		default:
			c.errno = e
			return true
		}
	}
}

// TestUDPContendersEcho checks that every UDP contender echoes datagrams of
// every size byte for byte, one at a time and in pipelined bursts (from both
// clients), and that it stops cleanly.
func TestUDPContendersEcho(t *testing.T) {
	for _, impl := range UDPImpls() {
		t.Run(string(impl), func(t *testing.T) {
			leakcheck.Check(t)
			srv := startUDPServer(t, impl)
			for _, size := range []int{8, 64, 1400, 9000, 65507} {
				c := dialUDPClient(t, srv, size, false)
				c.verify, c.timeout = true, 2*time.Second
				for range 3 {
					if n, err := c.exchange(1); err != nil || n != 1 {
						t.Fatalf("size %d: %d echoes, %v", size, n, err)
					}
				}
				if size > 1400 {
					continue
				}
				if n, err := c.exchange(64); err != nil || n != 64 {
					t.Fatalf("size %d: burst: %d echoes of 64, %v", size, n, err)
				}
				c = dialUDPClient(t, srv, size, true)
				c.verify, c.timeout = true, 2*time.Second
				for range 3 {
					if n, err := c.exchange(64); err != nil || n != 64 {
						t.Fatalf("size %d: gso burst: %d echoes of 64, %v", size, n, err)
					}
				}
			}
		})
	}
}

// BenchmarkThroughputUDP is the UDP echo matrix, every contender in this
// process behind the same client, one connected socket:
//
//   - reqresp: send one datagram, wait for its echo (write, read);
//   - burst=64: send 64 back to back, wait for the 64 echoes (64 writes, then
//     reads, one datagram per system call);
//   - burst=64-gso: the same burst sent with one or two UDP GSO sendmsg and
//     read back with recvmmsg, so that the client costs a few system calls
//     and one trip down the stack per burst instead of 128 and 64, and the
//     server, not the client, is the bottleneck.
//
// One op is one round trip (reqresp) or one burst, so ns/op and allocs/op
// are per round trip or per burst; the metrics are per datagram:
//
//   - datagrams/s: echoes received per second;
//   - p50-ns, p99-ns: the round trip (reqresp) or the whole burst, from the
//     first send to the last echo (loadgen.Histogram, within 6.25 %);
//   - allocs/datagram: allocs/op / datagrams per op, server and client (the
//     client allocates nothing);
//   - syscalls/datagram: the server's receive and send system calls per
//     datagram sent by the client, EAGAIN reads included (see
//     syscallCounter); ioactor's own counter when perf is not available;
//   - proc-syscalls/datagram: every system call of the process, client,
//     server and Go runtime (futex, epoll_wait, nanosleep...) together;
//   - lost/datagram: datagrams not echoed within udpClientTimeout;
//   - cpu-ns/datagram: the process's CPU time (user and system, client and
//     server) per datagram, which other load on the machine inflates far less
//     than it does the rate;
//   - ctxsw/datagram: the process's voluntary context switches (a thread
//     going to sleep: a loop in epoll_wait, a parked M in futex) per datagram.
//
// Each sub-benchmark runs for -benchtime (b.Loop) after a 100 ms warm-up, so
// the 24 of them take about 40 s at the default 1s on 2 cores (2 min with
// -count 3); -benchtime 300ms gives a quicker, noisier look:
//
//	go test -run '^$' -bench ThroughputUDP -benchmem -count 3 ./bench/
func BenchmarkThroughputUDP(b *testing.B) {
	for _, impl := range UDPImpls() {
		b.Run(string(impl), func(b *testing.B) {
			leakcheck.Check(b)
			srv := startUDPServer(b, impl)
			for _, mode := range []struct {
				name  string
				burst int
				gso   bool
			}{{"reqresp", 1, false}, {"burst=64", 64, false}, {"burst=64-gso", 64, true}} {
				for _, size := range []int{64, 1400} {
					name := fmt.Sprintf("%s/size=%d", mode.name, size)
					b.Run(name, func(b *testing.B) { benchUDPEcho(b, srv, mode.burst, size, mode.gso) })
				}
			}
		})
	}
}

func benchUDPEcho(b *testing.B, srv *UDPServer, burst, size int, gso bool) {
	c := dialUDPClient(b, srv, size, gso)
	// Warm up: buffers grow to their steady size, threads start.
	for t0 := time.Now(); time.Since(t0) < 100*time.Millisecond; {
		if _, err := c.exchange(burst); err != nil {
			b.Fatal(err)
		}
	}
	c.lost, c.late = 0, 0
	sc, scErr := openSyscallCounter()
	if scErr != nil {
		b.Logf("no perf counters (%v): server syscalls only from ioactor's own counter", scErr)
	} else {
		defer sc.close()
	}
	ctr0, hasCtr := srv.Syscalls()
	var sys0 []uint64
	if sc != nil {
		sys0 = sc.read()
	}
	own0, late0 := c.own, 0
	if sc != nil {
		late0 = sc.lateThreads()
	}
	h := new(loadgen.Histogram)
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	var ru0, ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.SetBytes(int64(burst * size))
	b.ReportAllocs()
	echoed, ops := 0, 0
	start := time.Now()
	for b.Loop() {
		t0 := time.Now()
		n, err := c.exchange(burst)
		h.Record(time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		echoed += n
		ops++
	}
	elapsed := time.Since(start)
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	runtime.ReadMemStats(&m1)
	var sys1 []uint64
	if sc != nil {
		sys1 = sc.read()
	}
	ctr1, _ := srv.Syscalls()
	own := c.own - own0

	sent := float64(ops * burst)
	b.ReportMetric(float64(echoed)/elapsed.Seconds(), "datagrams/s")
	b.ReportMetric(float64(h.Quantile(0.50).Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(h.Quantile(0.99).Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(m1.Mallocs-m0.Mallocs)/sent, "allocs/datagram")
	b.ReportMetric(float64(c.lost)/sent, "lost/datagram")
	if c.lost > 0 {
		b.Logf("%d datagrams not echoed within %v, %d of them seen later", c.lost, c.timeout, c.late)
	}
	cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	b.ReportMetric(float64(cpu.Nanoseconds())/sent, "cpu-ns/datagram")
	b.ReportMetric(float64(ru1.Nvcsw-ru0.Nvcsw)/sent, "ctxsw/datagram")
	switch {
	case sc != nil:
		var io uint64
		for i := 1; i < len(sys1); i++ {
			io += sys1[i] - sys0[i]
		}
		io -= min(io, own) // the gso client's sendmsg and recvmmsg
		b.ReportMetric(float64(io)/sent, "syscalls/datagram")
		b.ReportMetric(float64(sys1[0]-sys0[0])/sent, "proc-syscalls/datagram")
		if hasCtr && !within(float64(ctr1-ctr0), float64(io), 0.02) {
			b.Logf("ioactor counted %d socket syscalls, perf %d", ctr1-ctr0, io)
		}
		if n := sc.lateThreads() - late0; n > 0 {
			b.Logf("%d threads started during the measurement: their first ≤10 ms of syscalls are not counted", n)
		}
	case hasCtr:
		b.ReportMetric(float64(ctr1-ctr0)/sent, "syscalls/datagram")
	}
}

func within(a, b, tol float64) bool { return a >= b*(1-tol) && a <= b*(1+tol) }

// syscallCounter counts system calls with the kernel's syscall tracepoints,
// one perf counter per thread of this process and tracepoint (what `perf
// stat -e 'syscalls:sys_enter_*' -t TID` does), read before and after the
// measurement; a goroutine adds counters for threads that start meanwhile
// (its own system calls, about 3 per 10 ms, are in proc-syscalls/datagram).
// strace cannot attach to its own process, and the client shares the
// process with the server. But the servers receive and send with
// recvfrom/sendto (net, gnet) or recvmsg/recvmmsg/sendmsg/sendmmsg
// (ioactor), Go's runtime uses none of these, and the client uses write(2)
// and read(2), or counts the sendmsg and recvmmsg calls it makes itself. So
// the sum over the six receive and send tracepoints, less the client's own
// calls, is exactly the server's socket I/O, for every contender alike; for
// ioactor it is checked against ioactor_udp_syscalls_total.
//
// What it cannot attribute is the wake-up machinery: epoll_wait and futex
// serve client and server alike (Go's netpoller wakes the client and the net
// echo; gnet and ioactor have epoll loops of their own). Those are only in
// proc-syscalls/datagram, the whole process's count.
type syscallCounter struct {
	ids    []uint64
	mu     sync.Mutex
	tids   map[int]bool
	fds    []int
	ev     []int // tracepoint index of fds[i]
	late   int   // threads found after the first scan
	taskFD int   // /proc/self/task
	dents  [4096]byte
	stop   chan struct{}
	done   chan struct{}
}

var syscallTracepoints = []string{
	"raw_syscalls/sys_enter", // every system call; the rest are socket I/O
	"syscalls/sys_enter_recvfrom", "syscalls/sys_enter_sendto",
	"syscalls/sys_enter_recvmsg", "syscalls/sys_enter_sendmsg",
	"syscalls/sys_enter_recvmmsg", "syscalls/sys_enter_sendmmsg",
}

var tracepointIDs = sync.OnceValues(func() ([]uint64, error) {
	ids := make([]uint64, 0, len(syscallTracepoints))
	for _, tp := range syscallTracepoints {
		var raw []byte
		var err error
		for _, root := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
			if raw, err = os.ReadFile(root + "/events/" + tp + "/id"); err == nil {
				break
			}
		}
		if err != nil {
			return nil, err
		}
		id, err := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("tracepoint %s: %w", tp, err)
		}
		ids = append(ids, id)
	}
	return ids, nil
})

func openSyscallCounter() (*syscallCounter, error) {
	ids, err := tracepointIDs()
	if err != nil {
		return nil, err
	}
	sc := &syscallCounter{ids: ids, tids: make(map[int]bool), taskFD: -1, stop: make(chan struct{}), done: make(chan struct{})}
	if _, err := sc.scan(); err != nil {
		sc.closeFDs()
		return nil, err
	}
	go func() {
		defer close(sc.done)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-sc.stop:
				return
			case <-t.C:
				n, _ := sc.scan()
				sc.mu.Lock()
				sc.late += n
				sc.mu.Unlock()
			}
		}
	}()
	return sc, nil
}

// scan opens counters on the threads it has not seen yet. It reads
// /proc/self/task with getdents on a descriptor it keeps, and allocates
// nothing unless it finds a thread, so that polling does not show in
// allocs/datagram.
func (sc *syscallCounter) scan() (added int, err error) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.taskFD < 0 {
		if sc.taskFD, err = unix.Open("/proc/self/task", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
			return 0, err
		}
	} else if _, err := unix.Seek(sc.taskFD, 0, 0); err != nil {
		return 0, err
	}
	for {
		n, err := unix.Getdents(sc.taskFD, sc.dents[:])
		if err != nil {
			return added, err
		}
		if n <= 0 {
			return added, nil
		}
		for b := sc.dents[:n]; len(b) >= 19; {
			// struct linux_dirent64: ino, off, reclen (u16 at 16), type, name
			reclen := int(binary.NativeEndian.Uint16(b[16:]))
			if reclen < 19 || reclen > len(b) {
				break
			}
			tid := 0
			for _, ch := range b[19:reclen] {
				if ch < '0' || ch > '9' {
					break
				}
				tid = tid*10 + int(ch-'0')
			}
			b = b[reclen:]
			if tid == 0 || sc.tids[tid] {
				continue
			}
			sc.tids[tid] = true
			added++
			if err := sc.open(tid); err != nil {
				return added, err
			}
		}
	}
}

func (sc *syscallCounter) open(tid int) error {
	for i, id := range sc.ids {
		attr := unix.PerfEventAttr{Type: unix.PERF_TYPE_TRACEPOINT, Config: id}
		attr.Size = uint32(unsafe.Sizeof(attr))
		fd, err := unix.PerfEventOpen(&attr, tid, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
		if errors.Is(err, unix.ESRCH) {
			return nil // the thread has exited
		}
		if err != nil {
			return fmt.Errorf("perf_event_open %s: %w", syscallTracepoints[i], err)
		}
		sc.fds = append(sc.fds, fd)
		sc.ev = append(sc.ev, i)
	}
	return nil
}

// read returns the counts so far, summed over threads, per tracepoint.
func (sc *syscallCounter) read() []uint64 {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	sums := make([]uint64, len(syscallTracepoints))
	var buf [8]byte
	for i, fd := range sc.fds {
		if n, err := unix.Read(fd, buf[:]); err == nil && n == 8 {
			sums[sc.ev[i]] += binary.NativeEndian.Uint64(buf[:])
		}
	}
	return sums
}

func (sc *syscallCounter) lateThreads() int {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.late
}

func (sc *syscallCounter) close() {
	close(sc.stop)
	<-sc.done
	sc.closeFDs()
}

func (sc *syscallCounter) closeFDs() {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	for _, fd := range sc.fds {
		unix.Close(fd)
	}
	sc.fds = nil
	if sc.taskFD >= 0 {
		unix.Close(sc.taskFD)
		sc.taskFD = -1
	}
}
