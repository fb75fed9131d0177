// Package vip moves a virtual IP address with a cluster's leadership: the
// leader adds the address to one of its host's interfaces, announces it
// (gratuitous ARP for IPv4, unsolicited neighbour advertisements for IPv6)
// and keeps renewing its lifetime; when it stops leading it deletes it.
// Addresses go through netlink (github.com/vishvananda/netlink), the
// announcements through github.com/mdlayher/arp and github.com/mdlayher/ndp;
// nothing shells out to ip or arping.
//
// # Usage
//
//	m, err := vip.New(vip.Config{Interface: "eth0", Prefixes: []netip.Prefix{p}, Registerer: reg})
//	m.Release()             // at start: remove a copy a previous run left
//	m.Acquire(leaderSince)  // on gaining leadership, before binding on the address
//	m.Release()             // on losing it, after the port is released
//	m.Close()
//
// # Order
//
// Gaining leadership: add the address, send the first announcement, then
// bind the service's port on it. The address must exist before the bind
// (no IP_FREEBIND needed), and the announcement must go out before the
// first resumed packet does: a client's reply to a packet sent before the
// announcement would still go to the old holder's link-layer address, and
// a host that still has the address but no socket answers it with an ICMP
// port unreachable. The remaining announcements follow, spaced, in the
// background (a lost one is repeated).
//
// Losing leadership (step-down, lost lease, SIGTERM) is the reverse, in
// this order, and the owner keeps it: first stop sending (close the
// transfers), then release the port, then [Manager.Release] deletes the
// address. Sending stops first because the next leader may already be
// serving: once this node knows it no longer leads, not one more packet
// may leave it. The port goes before the address because a socket bound to
// an address that vanished fails its sends with EINVAL: on the SIGTERM path
// this node still leads while it closes, its transfers would fail instead
// of stopping at an exact position, and a failed transfer ends in the
// replicated state, so the next leader would not resume it. The address
// goes last, right after, so that the window in which the host has the
// address but no socket (and answers with ICMP port unreachable) is a few
// microseconds, and so that a quick re-election never finds a lingering
// socket of the previous term on it.
//
// # Stale copies
//
// A process killed with SIGKILL, or a frozen or cut-off host, cannot delete
// its address. So the address is added with a short valid and preferred
// lifetime ([Config.Lifetime], 3 s by default) that the holder renews every
// third of it while [Config.StillOwner] says it still leads: a copy nobody
// renews is dropped by the kernel itself, within the lifetime plus the
// kernel's lifetime check (about one more second). The next leader needs
// nothing from the old one: it adds its own copy and announces it, and the
// clients' neighbour caches follow the announcement (a gratuitous ARP and
// an NA with the override flag replace an existing entry). A node that
// starts, or becomes a follower, deletes any copy it holds
// ([Manager.Release] is idempotent and deletes whatever the interface has).
//
// A holder that was stopped (SIGSTOP, a frozen VM) longer than the
// lifetime wakes up believing it leads, for as long as its raft takes to
// notice it does not (a lease, 150 ms). If its first renewal re-added the
// expired addresses, it would answer clients meanwhile (a test saw a DATA
// and an ERROR packet reach the client that way). So a renewal that comes
// about a lifetime late and finds the addresses gone waits (1 s) and
// re-adds them only if [Config.StillOwner] still says so; until then the
// woken process has no address to send from. A stop shorter than the
// lifetime is not covered: the woken leader may send a packet or two
// before it steps down (raft's own limit; the tftp server holds a download
// whose checkpoints stop committing, which narrows it).
//
// IPv6 addresses are added with IFA_F_NODAD (duplicate address detection
// would keep the address tentative, unbindable, for a second; a copy left
// by a dead leader must not make the new one fail either) and
// IFA_F_NOPREFIXROUTE (the host's own address in the subnet carries the
// route; an address with a lifetime would otherwise give the prefix route
// its lifetime too). IPv4 addresses need neither.
//
// # Limitations
//
// Linux only. The process needs CAP_NET_ADMIN (addresses) and CAP_NET_RAW
// (the ARP socket and the ICMPv6 socket of the announcements). The
// interface must be up and, for IPv4 announcements, already have an IPv4
// address of its own. Lifetimes are whole seconds (the kernel's unit).
package vip
