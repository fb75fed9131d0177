package vip

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Config configures a [Manager]. Zero fields take the defaults noted.
type Config struct {
	// Interface is the name of the interface the addresses go on; required.
	Interface string
	// Prefixes are the virtual addresses with their subnet's length: at
	// most one IPv4 and one IPv6; at least one.
	Prefixes []netip.Prefix
	// Lifetime is the valid and preferred lifetime the addresses are added
	// with, renewed every third of it; zero means 3 s. It is rounded up to
	// whole seconds.
	Lifetime time.Duration
	// Announce are the delays, from Acquire, of the announcements; nil
	// means 0, 50 ms, 200 ms, 500 ms and 1 s. The first one is sent
	// before Acquire returns, whatever its delay.
	Announce []time.Duration
	// StillOwner, when set, is asked before every renewal; once it says
	// false the renewals stop (the kernel drops the address at the end of
	// its lifetime even if Release is never called).
	StillOwner func() bool
	Logger     *slog.Logger
	// Registerer, when not nil, receives the metrics.
	Registerer prometheus.Registerer
}

// DefaultLifetime is the addresses' lifetime when Config.Lifetime is zero.
const DefaultLifetime = 3 * time.Second

var defaultAnnounce = []time.Duration{0, 50 * time.Millisecond, 200 * time.Millisecond, 500 * time.Millisecond, time.Second}

// Status is what one host holds of one virtual address.
type Status struct {
	Addr      string `json:"addr"`
	Interface string `json:"interface"`
	// Held: the address is on the interface now (read from the kernel,
	// so a copy left by a previous run shows too).
	Held bool `json:"held"`
	// Owner: this process holds it as the leader, and renews it.
	Owner bool `json:"owner"`
	// ValidLifetime is the kernel's remaining valid lifetime in seconds
	// (0: the address is absent).
	ValidLifetime int `json:"valid_lft,omitempty"`
}

// Manager adds, announces, renews and deletes the virtual addresses of one
// node. Its methods may be called from any goroutine; Acquire and Release
// are serialized.
type Manager struct {
	cfg      Config
	log      *slog.Logger
	lifetime int // seconds
	m        *metrics

	mu   sync.Mutex // Acquire, Release, Close
	held bool
	stop chan struct{} // closes the renewer and announcer of the current holding
	done chan struct{} // closed when they have returned
}

// New checks the configuration and the interface; it changes nothing.
func New(cfg Config) (*Manager, error) {
	if cfg.Interface == "" {
		return nil, errors.New("vip: an interface is required")
	}
	if len(cfg.Prefixes) == 0 {
		return nil, errors.New("vip: no address")
	}
	var v4, v6 int
	for i, p := range cfg.Prefixes {
		if !p.IsValid() || p.Addr().Zone() != "" {
			return nil, fmt.Errorf("vip: %v: not an address with a prefix length", p)
		}
		if p.Addr().Is4In6() {
			return nil, fmt.Errorf("vip: %v: an IPv4-mapped address; give it as IPv4", p)
		}
		if p.Addr().Is4() {
			v4++
		} else {
			v6++
		}
		if !p.Addr().IsGlobalUnicast() {
			return nil, fmt.Errorf("vip: %v: not a unicast address", p)
		}
		cfg.Prefixes[i] = netip.PrefixFrom(p.Addr(), p.Bits())
	}
	if v4 > 1 || v6 > 1 {
		return nil, fmt.Errorf("vip: %d IPv4 and %d IPv6 addresses; at most one of each", v4, v6)
	}
	if _, err := net.InterfaceByName(cfg.Interface); err != nil {
		return nil, fmt.Errorf("vip: interface %s: %w", cfg.Interface, err)
	}
	if cfg.Lifetime <= 0 {
		cfg.Lifetime = DefaultLifetime
	}
	if cfg.Announce == nil {
		cfg.Announce = defaultAnnounce
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Manager{cfg: cfg, log: cfg.Logger, lifetime: int((cfg.Lifetime + time.Second - 1) / time.Second), m: newMetrics(cfg.Registerer)}, nil
}

// Lifetime is the addresses' valid lifetime, in whole seconds.
func (m *Manager) Lifetime() time.Duration { return time.Duration(m.lifetime) * time.Second }

func (m *Manager) link() (netlink.Link, *net.Interface, error) {
	l, err := netlink.LinkByName(m.cfg.Interface)
	if err != nil {
		return nil, nil, fmt.Errorf("vip: interface %s: %w", m.cfg.Interface, err)
	}
	ifi, err := net.InterfaceByIndex(l.Attrs().Index)
	if err != nil {
		return nil, nil, fmt.Errorf("vip: interface %s: %w", m.cfg.Interface, err)
	}
	return l, ifi, nil
}

func (m *Manager) addr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{
		IPNet:       &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		ValidLft:    m.lifetime,
		PreferedLft: m.lifetime,
	}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD | unix.IFA_F_NOPREFIXROUTE
	}
	return a
}

// put adds the addresses, or renews their lifetime.
func (m *Manager) put(l netlink.Link) error {
	var errs []error
	for _, p := range m.cfg.Prefixes {
		if err := netlink.AddrReplace(l, m.addr(p)); err != nil {
			errs = append(errs, fmt.Errorf("vip: add %v to %s: %w", p, m.cfg.Interface, err))
		}
	}
	return errors.Join(errs...)
}

// Acquire adds the addresses (with their lifetime), sends the first
// announcement of each, and starts renewing them and sending the other
// announcements. since is when the node gained leadership: the metrics
// time the first announcement from it. Acquiring what is held renews it.
func (m *Manager) Acquire(since time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopLocked()
	l, ifi, err := m.link()
	if err != nil {
		return err
	}
	if err := m.put(l); err != nil {
		m.m.errors.WithLabelValues("add").Inc()
		m.deleteLocked(l)
		return err
	}
	m.held = true
	m.m.acquisitions.Inc()
	ann, err := newAnnouncer(ifi, m.cfg.Prefixes)
	if err != nil {
		// The address is there; a client that asks finds it. Without the
		// announcement its cache moves only when its entry goes stale.
		m.m.errors.WithLabelValues("announce").Inc()
		m.log.Error("vip: cannot announce the addresses; clients find them only when their neighbour entries expire", "err", err)
	} else {
		m.announce(ann)
		m.m.firstAnnounce.Observe(time.Since(since).Seconds())
	}
	m.stop, m.done = make(chan struct{}), make(chan struct{})
	go m.hold(l, ifi, ann, m.stop, m.done)
	return nil
}

// announce sends one announcement of each address.
func (m *Manager) announce(a *announcer) {
	for _, err := range a.send() {
		if err.err != nil {
			m.m.errors.WithLabelValues("announce").Inc()
			m.log.Warn("vip: announcement failed", "addr", err.addr, "err", err.err)
			continue
		}
		m.m.announcements.WithLabelValues(family(err.addr)).Inc()
	}
}

// hold renews the addresses every third of their lifetime and sends the
// announcements after the first, until stop.
func (m *Manager) hold(l netlink.Link, ifi *net.Interface, ann *announcer, stop, done chan struct{}) {
	defer close(done)
	defer func() {
		if ann != nil {
			ann.close()
		}
	}()
	start := time.Now()
	lastPut := start // Acquire's
	renew := time.NewTicker(time.Duration(m.lifetime) * time.Second / 3)
	defer renew.Stop()
	next := 1 // the next announcement; the first was sent by Acquire
	var annC <-chan time.Time
	var annT *time.Timer
	if ann != nil && next < len(m.cfg.Announce) {
		annT = time.NewTimer(time.Until(start.Add(m.cfg.Announce[next])))
		defer annT.Stop()
		annC = annT.C
	}
	for {
		select {
		case <-stop:
			return
		case <-annC:
			m.announce(ann)
			if next++; next < len(m.cfg.Announce) {
				annT.Reset(time.Until(start.Add(m.cfg.Announce[next])))
			} else {
				// The raw sockets are not kept: they would queue every
				// ARP and ICMPv6 packet of the link, unread.
				annC = nil
				ann.close()
				ann = nil
			}
		case <-renew.C:
			if !m.owner() {
				return
			}
			if gap := time.Since(lastPut); gap >= m.Lifetime()-m.Lifetime()/6 && !m.allPresent(l) {
				// This process did not run for about a lifetime (stopped,
				// frozen, starved) and the kernel dropped the addresses:
				// another node may own them now, while the state this
				// process reads still says it leads. Re-adding them at once
				// would let it answer clients until it notices; so wait
				// until a stale leader has surely stepped down.
				m.m.errors.WithLabelValues("expired").Inc()
				m.log.Warn("vip: the addresses expired while this process did not run; re-adding them only if it still leads after a pause",
					"gap", gap, "pause", reacquirePause)
				select {
				case <-stop:
					return
				case <-time.After(reacquirePause):
				}
				if !m.owner() {
					return
				}
				if err := m.put(l); err != nil {
					m.m.errors.WithLabelValues("add").Inc()
					m.log.Error("vip: re-add", "err", err)
					continue
				}
				lastPut = time.Now()
				// Announce again, on the whole schedule.
				if ann == nil {
					if ann, _ = newAnnouncer(ifi, m.cfg.Prefixes); ann == nil {
						m.m.errors.WithLabelValues("announce").Inc()
						continue
					}
				}
				m.announce(ann)
				start, next = time.Now(), 1
				if next < len(m.cfg.Announce) {
					if annT == nil {
						annT = time.NewTimer(0)
						defer annT.Stop()
					}
					annT.Reset(time.Until(start.Add(m.cfg.Announce[next])))
					annC = annT.C
				}
				continue
			}
			if err := m.put(l); err != nil {
				m.m.errors.WithLabelValues("renew").Inc()
				m.log.Error("vip: renew", "err", err)
				continue
			}
			lastPut = time.Now()
		}
	}
}

// reacquirePause is how long a holder whose addresses expired under it
// waits before it re-adds them: several raft leases and an election
// timeout, so that a leader that was stopped has noticed it no longer
// leads (StillOwner) by then.
const reacquirePause = time.Second

// owner asks StillOwner; when it says no, the renewals stop.
func (m *Manager) owner() bool {
	if m.cfg.StillOwner != nil && !m.cfg.StillOwner() {
		m.log.Warn("vip: no longer the owner; stopped renewing (the kernel drops the addresses at the end of their lifetime)", "lifetime", m.Lifetime())
		return false
	}
	return true
}

// allPresent reports whether the interface has every address.
func (m *Manager) allPresent(l netlink.Link) bool {
	for _, p := range m.cfg.Prefixes {
		if ok, err := m.present(l, p); err != nil || !ok {
			return false
		}
	}
	return true
}

// stopLocked ends the renewals and announcements of the current holding.
func (m *Manager) stopLocked() {
	if m.stop != nil {
		close(m.stop)
		<-m.done
		m.stop, m.done = nil, nil
	}
}

// Release stops the renewals and announcements and deletes the addresses
// from the interface, whoever added them (a previous run's copy too). It
// is idempotent; it reports whether an address was deleted.
func (m *Manager) Release() (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopLocked()
	l, _, err := m.link()
	if err != nil {
		return false, err
	}
	deleted, err := m.deleteLocked(l)
	if m.held {
		m.held = false
		m.m.releases.Inc()
	}
	return deleted, err
}

func (m *Manager) deleteLocked(l netlink.Link) (bool, error) {
	var errs []error
	deleted := false
	for _, p := range m.cfg.Prefixes {
		present, err := m.present(l, p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !present {
			continue
		}
		if err := netlink.AddrDel(l, m.addr(p)); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			m.m.errors.WithLabelValues("delete").Inc()
			errs = append(errs, fmt.Errorf("vip: delete %v from %s: %w", p, m.cfg.Interface, err))
			continue
		}
		deleted = true
	}
	return deleted, errors.Join(errs...)
}

// present reads whether the interface has p's address, and its lifetime.
func (m *Manager) present(l netlink.Link, p netip.Prefix) (bool, error) {
	_, ok, err := m.lookup(l, p)
	return ok, err
}

func (m *Manager) lookup(l netlink.Link, p netip.Prefix) (netlink.Addr, bool, error) {
	fam := netlink.FAMILY_V4
	if p.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	as, err := netlink.AddrList(l, fam)
	if err != nil {
		return netlink.Addr{}, false, fmt.Errorf("vip: list the addresses of %s: %w", m.cfg.Interface, err)
	}
	for _, a := range as {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == p.Addr() {
			return a, true, nil
		}
	}
	return netlink.Addr{}, false, nil
}

// Status reads, from the kernel, which of the addresses this host holds.
func (m *Manager) Status() []Status {
	m.mu.Lock()
	owner := m.held
	m.mu.Unlock()
	l, _, err := m.link()
	var out []Status
	for _, p := range m.cfg.Prefixes {
		s := Status{Addr: p.String(), Interface: m.cfg.Interface, Owner: owner}
		if err == nil {
			if a, ok, lerr := m.lookup(l, p); lerr == nil && ok {
				s.Held, s.ValidLifetime = true, a.ValidLft
			}
		}
		out = append(out, s)
	}
	return out
}

// Close releases the addresses and unregisters the metrics.
func (m *Manager) Close() error {
	_, err := m.Release()
	m.m.unregister()
	return err
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "ipv4"
	}
	return "ipv6"
}

// announcer sends the announcements of one holding: a gratuitous ARP
// request per IPv4 address, an unsolicited neighbour advertisement (override
// set) per IPv6 address, to everyone on the link.
type announcer struct {
	ifi  *net.Interface
	arp  *arp.Client
	ndp  *ndp.Conn
	v4   netip.Addr
	v6   netip.Addr
	garp *arp.Packet
	na   *ndp.NeighborAdvertisement
}

func newAnnouncer(ifi *net.Interface, ps []netip.Prefix) (*announcer, error) {
	a := &announcer{ifi: ifi}
	for _, p := range ps {
		var err error
		if p.Addr().Is4() {
			a.v4 = p.Addr()
			if a.arp, err = arp.Dial(ifi); err != nil {
				a.close()
				return nil, fmt.Errorf("vip: ARP socket on %s: %w", ifi.Name, err)
			}
			// Sender and target are the address: a gratuitous request,
			// which updates every cache that has an entry for it.
			if a.garp, err = arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, a.v4, ethernet.Broadcast, a.v4); err != nil {
				a.close()
				return nil, fmt.Errorf("vip: ARP packet: %w", err)
			}
			continue
		}
		a.v6 = p.Addr()
		// From the address itself (it is on the interface: NODAD).
		if a.ndp, _, err = ndp.Listen(ifi, ndp.Addr(a.v6.String())); err != nil {
			a.close()
			return nil, fmt.Errorf("vip: ICMPv6 socket on %s: %w", ifi.Name, err)
		}
		a.na = &ndp.NeighborAdvertisement{Override: true, TargetAddress: a.v6,
			Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: ifi.HardwareAddr}}}
	}
	return a, nil
}

type sendResult struct {
	addr netip.Addr
	err  error
}

func (a *announcer) send() []sendResult {
	var out []sendResult
	if a.arp != nil {
		a.arp.SetWriteDeadline(time.Now().Add(time.Second))
		out = append(out, sendResult{a.v4, a.arp.WriteTo(a.garp, ethernet.Broadcast)})
	}
	if a.ndp != nil {
		a.ndp.SetWriteDeadline(time.Now().Add(time.Second))
		out = append(out, sendResult{a.v6, a.ndp.WriteTo(a.na, nil, netip.IPv6LinkLocalAllNodes())})
	}
	return out
}

func (a *announcer) close() {
	if a.arp != nil {
		a.arp.Close()
	}
	if a.ndp != nil {
		a.ndp.Close()
	}
}

type metrics struct {
	reg                    prometheus.Registerer
	acquisitions, releases prometheus.Counter
	announcements, errors  *prometheus.CounterVec
	firstAnnounce          prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		reg:          reg,
		acquisitions: prometheus.NewCounter(prometheus.CounterOpts{Name: "ioactor_vip_acquisitions_total", Help: "Times this node added the virtual addresses on gaining leadership."}),
		releases:     prometheus.NewCounter(prometheus.CounterOpts{Name: "ioactor_vip_releases_total", Help: "Times this node deleted the virtual addresses it held."}),
		announcements: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ioactor_vip_announcements_total",
			Help: "Gratuitous ARPs (ipv4) and unsolicited neighbour advertisements (ipv6) sent."}, []string{"family"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ioactor_vip_errors_total",
			Help: "Failed address operations, by operation (expired: the addresses lapsed under a holder that did not run)."}, []string{"op"}),
		firstAnnounce: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ioactor_vip_first_announcement_seconds",
			Help:    "Time from gaining leadership to the first announcement of the virtual addresses.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	for _, f := range []string{"ipv4", "ipv6"} {
		m.announcements.WithLabelValues(f)
	}
	for _, op := range []string{"add", "renew", "delete", "announce", "expired"} {
		m.errors.WithLabelValues(op)
	}
	if reg != nil {
		for _, c := range m.collectors() {
			reg.MustRegister(c)
		}
	}
	return m
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.acquisitions, m.releases, m.announcements, m.errors, m.firstAnnounce}
}

func (m *metrics) unregister() {
	if m.reg != nil {
		for _, c := range m.collectors() {
			m.reg.Unregister(c)
		}
	}
}
