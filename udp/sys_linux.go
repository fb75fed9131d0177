package udp

import (
	"encoding/binary"
	"net"
	"net/netip"
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Raw system calls on structures the socket (or its loop) owns, so that the
// hot path allocates nothing: x/sys's Sendmsg/Recvmsg convert addresses to
// heap values and x/sys v0.49 has no recvmmsg/sendmmsg wrappers.

// faultHook, when set (by tests only, before any socket exists), is asked how
// many of want datagrams the "kernel" takes; fewer than want makes the call
// send that many (sendmmsg) or fail with EAGAIN (sendmsg, GSO).
var faultHook func(want int) (allow int)

func sendmsg(fd int, msg *unix.Msghdr, segments int) (int, unix.Errno) {
	if h := faultHook; h != nil && h(segments) < segments {
		return 0, unix.EAGAIN
	}
	for {
		r, _, e := unix.Syscall(unix.SYS_SENDMSG, uintptr(fd), uintptr(unsafe.Pointer(msg)), 0)
		if e != unix.EINTR {
			return int(r), e
		}
	}
}

func sendmmsg(fd int, msgs []unix.Mmsghdr) (int, unix.Errno) {
	n := len(msgs)
	if h := faultHook; h != nil {
		if a := h(n); a < n {
			if a <= 0 {
				return 0, unix.EAGAIN
			}
			n = a
		}
	}
	for {
		r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(n), 0, 0, 0)
		if e != unix.EINTR {
			return int(r), e
		}
	}
}

func recvmsg(fd int, msg *unix.Msghdr) (int, unix.Errno) {
	for {
		r, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(msg)), 0)
		if e != unix.EINTR {
			return int(r), e
		}
	}
}

func recvmmsg(fd int, msgs []unix.Mmsghdr) (int, unix.Errno) {
	for {
		r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
		if e != unix.EINTR {
			return int(r), e
		}
	}
}

// rawAddr holds a sockaddr_in or sockaddr_in6.
type rawAddr = unix.RawSockaddrInet6

const (
	sizeofInet4 = unix.SizeofSockaddrInet4
	sizeofInet6 = unix.SizeofSockaddrInet6
)

// zoneCache remembers one zone name ↔ interface index pair, so that a
// socket talking to one link-local peer does not look the interface up per
// datagram.
type zoneCache struct {
	name  string
	index uint32
}

func (z *zoneCache) indexOf(name string) uint32 {
	if name == "" {
		return 0
	}
	if name == z.name {
		return z.index
	}
	var idx uint32
	if n, err := strconv.ParseUint(name, 10, 32); err == nil {
		idx = uint32(n)
	} else if ifi, err := net.InterfaceByName(name); err == nil {
		idx = uint32(ifi.Index)
	}
	z.name, z.index = name, idx
	return idx
}

func (z *zoneCache) nameOf(index uint32) string {
	if index == 0 {
		return ""
	}
	if index == z.index && z.name != "" {
		return z.name
	}
	name := strconv.FormatUint(uint64(index), 10)
	if ifi, err := net.InterfaceByIndex(int(index)); err == nil {
		name = ifi.Name
	}
	z.name, z.index = name, index
	return name
}

// encodeAddr writes ap into dst in the form a socket of family fam expects
// and returns its length; 0 with ok for an invalid (zero) ap. An IPv4 address
// is mapped for an IPv6 socket; an IPv6 one is refused by an IPv4 socket.
func encodeAddr(dst *rawAddr, fam int, ap netip.AddrPort, z *zoneCache) (n uint32, ok bool) {
	if !ap.IsValid() {
		return 0, true
	}
	ip := ap.Addr()
	port := ap.Port()
	if fam == unix.AF_INET {
		if !ip.Is4() && !ip.Is4In6() {
			return 0, false
		}
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(dst))
		p.Family = unix.AF_INET
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&p.Port))[:], port)
		p.Addr = ip.Unmap().As4()
		p.Zero = [8]uint8{}
		return sizeofInet4, true
	}
	dst.Family = unix.AF_INET6
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&dst.Port))[:], port)
	dst.Flowinfo = 0
	dst.Addr = ip.As16()
	dst.Scope_id = z.indexOf(ip.Zone())
	return sizeofInet6, true
}

// decodeAddr reads the sockaddr the kernel wrote into src.
func decodeAddr(src *rawAddr, n uint32, z *zoneCache) netip.AddrPort {
	switch {
	case src.Family == unix.AF_INET && n >= sizeofInet4:
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(src))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(p.Addr), port)
	case src.Family == unix.AF_INET6 && n >= sizeofInet6:
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&src.Port))[:])
		ip := netip.AddrFrom16(src.Addr)
		if ip.Is4In6() {
			ip = ip.Unmap()
		} else if src.Scope_id != 0 {
			ip = ip.WithZone(z.nameOf(src.Scope_id))
		}
		return netip.AddrPortFrom(ip, port)
	}
	return netip.AddrPort{}
}

// ctrlBuf is a control-message buffer, 8-byte aligned as cmsghdr requires.
type ctrlBuf [4]uint64

var cmsgHdrLen = unix.CmsgLen(0)

// rxqOverflow returns the SO_RXQ_OVFL counter carried by the control data
// ctrl[:n], if any.
func rxqOverflow(ctrl *ctrlBuf, n int) (uint32, bool) {
	b := (*[unsafe.Sizeof(ctrlBuf{})]byte)(unsafe.Pointer(ctrl))[:]
	if n > len(b) {
		n = len(b)
	}
	for off := 0; off+cmsgHdrLen <= n; {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[off]))
		l := int(h.Len)
		if l < cmsgHdrLen || off+l > n {
			return 0, false
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SO_RXQ_OVFL && l >= cmsgHdrLen+4 {
			return *(*uint32)(unsafe.Pointer(&b[off+cmsgHdrLen])), true
		}
		off += unix.CmsgSpace(l - cmsgHdrLen)
	}
	return 0, false
}

// putSegmentSize writes a UDP_SEGMENT control message into ctrl and returns
// its length.
func putSegmentSize(ctrl *ctrlBuf, size uint16) int {
	*ctrl = ctrlBuf{}
	b := (*[unsafe.Sizeof(ctrlBuf{})]byte)(unsafe.Pointer(ctrl))[:]
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.SOL_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	*(*uint16)(unsafe.Pointer(&b[cmsgHdrLen])) = size
	return unix.CmsgSpace(2)
}

// isAsyncError reports whether errno, returned by a send or receive on a
// connected socket, is an error the kernel queued earlier (from ICMP) rather
// than the result of this call.
func isAsyncError(e unix.Errno) bool {
	switch e {
	case unix.ECONNREFUSED, unix.EHOSTUNREACH, unix.ENETUNREACH, unix.EHOSTDOWN:
		return true
	}
	return false
}
