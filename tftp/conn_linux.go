package tftp

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchReader takes up to a window of datagrams from a UDP socket with one
// recvmmsg(2) and hands them out one by one. It waits through Go's
// netpoller (syscall.RawConn.Read), so read deadlines still apply.
type batchReader struct {
	rc    syscall.RawConn
	slot  int
	data  []byte
	msgs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6
	fn    func(fd uintptr) bool // bound once: no allocation per read
	n     int                   // datagrams received by the last call
	next  int                   // the next one to hand out
	errno unix.Errno
}

func newBatchReader(rc syscall.RawConn, count, slot int) *batchReader {
	b := &batchReader{
		rc: rc, slot: slot, data: make([]byte, count*slot),
		msgs: make([]unix.Mmsghdr, count), iovs: make([]unix.Iovec, count), names: make([]unix.RawSockaddrInet6, count),
	}
	for i := range count {
		b.iovs[i].Base = &b.data[i*slot]
		b.iovs[i].SetLen(slot)
		h := &b.msgs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Iov = &b.iovs[i]
		h.SetIovlen(1)
	}
	b.fn = b.recv
	return b
}

func (b *batchReader) recv(fd uintptr) bool {
	for i := range b.msgs {
		b.msgs[i].Hdr.Namelen = unix.SizeofSockaddrInet6
		b.msgs[i].Hdr.Flags = 0
		b.msgs[i].Len = 0
	}
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.msgs[0])), uintptr(len(b.msgs)), unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // wait until readable
		}
		b.n, b.next, b.errno = int(r), 0, e
		return true
	}
}

// read copies the next datagram into p. A datagram longer than the slot
// comes truncated to the slot's length.
func (b *batchReader) read(p []byte) (int, netip.AddrPort, error) {
	for b.next >= b.n {
		if err := b.rc.Read(b.fn); err != nil {
			return 0, netip.AddrPort{}, err
		}
		if b.errno != 0 {
			b.n = 0
			return 0, netip.AddrPort{}, b.errno
		}
	}
	i := b.next
	b.next++
	m := &b.msgs[i]
	n := copy(p, b.data[i*b.slot:i*b.slot+int(m.Len)])
	return n, sockaddrToAddrPort(&b.names[i]), nil
}

func sockaddrToAddrPort(sa *unix.RawSockaddrInet6) netip.AddrPort {
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port)
	case unix.AF_INET6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port)
	}
	return netip.AddrPort{}
}
