package udp

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/netio"
)

// UDP socket options, typed values implementing [netio.SocketOption]. The
// generic ones live in netio: [netio.ReuseAddr], [netio.ReusePort],
// [netio.ReceiveBufferSize], [netio.SendBufferSize].
//
// An option that has an IPv4 and an IPv6 form is applied in the form of the
// socket's family; on a dual-stack IPv6 socket the IPv4 form is set too, on a
// best-effort basis, for the IPv4 traffic it carries.

// Broadcast sets SO_BROADCAST, which sending to a broadcast address needs.
type Broadcast bool

// Apply implements netio.SocketOption.
func (o Broadcast) Apply(fd int) error {
	return netio.BoolOption("SO_BROADCAST", unix.SOL_SOCKET, unix.SO_BROADCAST, bool(o)).Apply(fd)
}

// IPv6Only sets IPV6_V6ONLY on an IPv6 socket: true keeps IPv4 traffic off a
// wildcard-bound socket, so that an IPv4 socket can bind the same port.
type IPv6Only bool

// Apply implements netio.SocketOption.
func (o IPv6Only) Apply(fd int) error {
	return netio.BoolOption("IPV6_V6ONLY", unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, bool(o)).Apply(fd)
}

// MulticastJoin joins Group on Interface (a name such as "eth0" or "lo", or an
// index; empty lets the kernel choose by route): IP_ADD_MEMBERSHIP for an
// IPv4 group, IPV6_JOIN_GROUP for an IPv6 one. Bind the socket to the group's
// port (or to the group address itself) to receive its datagrams; closing the
// socket leaves the group.
type MulticastJoin struct {
	Group     netip.Addr
	Interface string
}

// Apply implements netio.SocketOption.
func (o MulticastJoin) Apply(fd int) error {
	idx, err := ifIndex(o.Interface)
	if err != nil {
		return err
	}
	g := o.Group.Unmap()
	switch {
	case g.Is4():
		m := unix.IPMreqn{Multiaddr: g.As4(), Ifindex: int32(idx)}
		return os.NewSyscallError("setsockopt IP_ADD_MEMBERSHIP", unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, unix.IP_ADD_MEMBERSHIP, &m))
	case g.Is6():
		m := unix.IPv6Mreq{Multiaddr: g.As16(), Interface: uint32(idx)}
		return os.NewSyscallError("setsockopt IPV6_JOIN_GROUP", unix.SetsockoptIPv6Mreq(fd, unix.IPPROTO_IPV6, unix.IPV6_JOIN_GROUP, &m))
	}
	return fmt.Errorf("udp: multicast join: invalid group %v", o.Group)
}

// MulticastInterface sets the interface outgoing multicast datagrams leave by
// (IP_MULTICAST_IF / IPV6_MULTICAST_IF): a name such as "lo", or an index.
type MulticastInterface string

// Apply implements netio.SocketOption.
func (o MulticastInterface) Apply(fd int) error {
	idx, err := ifIndex(string(o))
	if err != nil {
		return err
	}
	v4 := func(fd int) error {
		m := unix.IPMreqn{Ifindex: int32(idx)}
		return os.NewSyscallError("setsockopt IP_MULTICAST_IF", unix.SetsockoptIPMreqn(fd, unix.IPPROTO_IP, unix.IP_MULTICAST_IF, &m))
	}
	v6 := func(fd int) error {
		return os.NewSyscallError("setsockopt IPV6_MULTICAST_IF", unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, idx))
	}
	return byFamily(fd, v4, v6)
}

// MulticastLoopback sets whether multicast datagrams this socket sends are
// looped back to local members (IP_MULTICAST_LOOP / IPV6_MULTICAST_LOOP; on
// by default in Linux).
type MulticastLoopback bool

// Apply implements netio.SocketOption.
func (o MulticastLoopback) Apply(fd int) error {
	return byFamily(fd,
		netio.BoolOption("IP_MULTICAST_LOOP", unix.IPPROTO_IP, unix.IP_MULTICAST_LOOP, bool(o)).Apply,
		netio.BoolOption("IPV6_MULTICAST_LOOP", unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_LOOP, bool(o)).Apply)
}

// MulticastHops sets the TTL / hop limit of outgoing multicast datagrams
// (IP_MULTICAST_TTL / IPV6_MULTICAST_HOPS; 1 by default).
type MulticastHops int

// Apply implements netio.SocketOption.
func (o MulticastHops) Apply(fd int) error {
	return byFamily(fd,
		netio.IntOption("IP_MULTICAST_TTL", unix.IPPROTO_IP, unix.IP_MULTICAST_TTL, int(o)).Apply,
		netio.IntOption("IPV6_MULTICAST_HOPS", unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, int(o)).Apply)
}

// byFamily applies v4 to an IPv4 socket; v6, then v4 best-effort, to an IPv6
// one.
func byFamily(fd int, v4, v6 func(int) error) error {
	fam, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return os.NewSyscallError("getsockopt SO_DOMAIN", err)
	}
	if fam == unix.AF_INET {
		return v4(fd)
	}
	if err := v6(fd); err != nil {
		return err
	}
	_ = v4(fd)
	return nil
}

// ifIndex resolves an interface name or index; "" is 0.
func ifIndex(name string) (int, error) {
	if name == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(name); err == nil {
		return n, nil
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return 0, fmt.Errorf("udp: interface %q: %w", name, err)
	}
	return ifi.Index, nil
}
