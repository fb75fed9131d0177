package tftp

import (
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/netio"
)

// pathBlockSize returns the largest blksize whose DATA packets cross the
// path from local to remote unfragmented, as the kernel's route knows its
// MTU, or 0 if that cannot be told. It connects a throw-away UDP socket to
// remote (nothing is sent) and asks for IP_MTU.
func pathBlockSize(local, remote netip.AddrPort) int {
	if !remote.IsValid() {
		return 0
	}
	fd, err := netio.Socket(remote, unix.SOCK_DGRAM, unix.IPPROTO_UDP)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	if local.IsValid() && !local.Addr().IsUnspecified() {
		unix.Bind(fd, netio.Sockaddr(netip.AddrPortFrom(local.Addr(), 0)))
	}
	if err := unix.Connect(fd, netio.Sockaddr(remote)); err != nil {
		return 0
	}
	ip6 := remote.Addr().Is6() && !remote.Addr().Is4In6()
	var mtu, header int
	if ip6 {
		mtu, err = unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MTU)
		header = 40 + 8 + 4
	} else {
		mtu, err = unix.GetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_MTU)
		header = 20 + 8 + 4
	}
	if err != nil || mtu <= header {
		return 0
	}
	return min(mtu-header, MaxBlockSize)
}
