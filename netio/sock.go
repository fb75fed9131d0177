package netio

import (
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// SocketOption is a typed socket option, applied to a socket before it is
// bound or connected. Packages tcp and udp add their own.
type SocketOption interface {
	// Apply sets the option on fd.
	Apply(fd int) error
}

type boolOpt struct {
	name       string
	level, opt int
	on         bool
}

func (o boolOpt) Apply(fd int) error {
	v := 0
	if o.on {
		v = 1
	}
	return os.NewSyscallError("setsockopt "+o.name, unix.SetsockoptInt(fd, o.level, o.opt, v))
}

type intOpt struct {
	name       string
	level, opt int
	v          int
}

func (o intOpt) Apply(fd int) error {
	return os.NewSyscallError("setsockopt "+o.name, unix.SetsockoptInt(fd, o.level, o.opt, o.v))
}

// BoolOption returns a SocketOption that sets an integer option to 0 or 1.
func BoolOption(name string, level, opt int, on bool) SocketOption {
	return boolOpt{name: name, level: level, opt: opt, on: on}
}

// IntOption returns a SocketOption that sets an integer option.
func IntOption(name string, level, opt, v int) SocketOption {
	return intOpt{name: name, level: level, opt: opt, v: v}
}

// ReuseAddr sets SO_REUSEADDR.
func ReuseAddr(on bool) SocketOption {
	return BoolOption("SO_REUSEADDR", unix.SOL_SOCKET, unix.SO_REUSEADDR, on)
}

// ReusePort sets SO_REUSEPORT.
func ReusePort(on bool) SocketOption {
	return BoolOption("SO_REUSEPORT", unix.SOL_SOCKET, unix.SO_REUSEPORT, on)
}

// ReceiveBufferSize sets SO_RCVBUF (the kernel doubles it and clamps it).
func ReceiveBufferSize(n int) SocketOption {
	return IntOption("SO_RCVBUF", unix.SOL_SOCKET, unix.SO_RCVBUF, n)
}

// SendBufferSize sets SO_SNDBUF (the kernel doubles it and clamps it).
func SendBufferSize(n int) SocketOption {
	return IntOption("SO_SNDBUF", unix.SOL_SOCKET, unix.SO_SNDBUF, n)
}

// KeepAlive sets SO_KEEPALIVE.
func KeepAlive(on bool) SocketOption {
	return BoolOption("SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, on)
}

type lingerOpt time.Duration

func (o lingerOpt) Apply(fd int) error {
	l := unix.Linger{}
	if o >= 0 {
		l.Onoff, l.Linger = 1, int32(time.Duration(o)/time.Second)
	}
	return os.NewSyscallError("setsockopt SO_LINGER", unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &l))
}

// Linger sets SO_LINGER to d (whole seconds); a negative d turns it off.
func Linger(d time.Duration) SocketOption { return lingerOpt(d) }

// ApplyOptions applies opts in order and returns the first error.
func ApplyOptions(fd int, opts []SocketOption) error {
	for _, o := range opts {
		if err := o.Apply(fd); err != nil {
			return err
		}
	}
	return nil
}

// Socket opens a non-blocking, close-on-exec socket of the family of addr.
func Socket(addr netip.AddrPort, typ, proto int) (int, error) {
	fam := unix.AF_INET
	if addr.Addr().Is6() && !addr.Addr().Is4In6() {
		fam = unix.AF_INET6
	}
	fd, err := unix.Socket(fam, typ|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	return fd, os.NewSyscallError("socket", err)
}

// Sockaddr converts addr to the unix form; an IPv4-mapped IPv6 address
// becomes a plain IPv4 one.
func Sockaddr(addr netip.AddrPort) unix.Sockaddr {
	ip := addr.Addr()
	if ip.Is4() || ip.Is4In6() {
		return &unix.SockaddrInet4{Port: int(addr.Port()), Addr: ip.Unmap().As4()}
	}
	sa := &unix.SockaddrInet6{Port: int(addr.Port()), Addr: ip.As16()}
	if z := ip.Zone(); z != "" {
		if ifi, err := interfaceIndex(z); err == nil {
			sa.ZoneId = uint32(ifi)
		}
	}
	return sa
}

// AddrPortOf converts a unix socket address to netip form (zero for other
// families).
func AddrPortOf(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// LocalAddr returns the address fd is bound to.
func LocalAddr(fd int) (netip.AddrPort, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return netip.AddrPort{}, os.NewSyscallError("getsockname", err)
	}
	return AddrPortOf(sa), nil
}
