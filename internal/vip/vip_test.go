package vip

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ndp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

func TestNewRefuses(t *testing.T) {
	lo := "lo"
	cases := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no interface", Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24")}}, "interface is required"},
		{"no address", Config{Interface: lo}, "no address"},
		{"two IPv4", Config{Interface: lo, Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24"), netip.MustParsePrefix("10.0.0.2/24")}}, "at most one of each"},
		{"multicast", Config{Interface: lo, Prefixes: []netip.Prefix{netip.MustParsePrefix("224.0.0.1/24")}}, "not a unicast"},
		{"mapped", Config{Interface: lo, Prefixes: []netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.1/120")}}, "IPv4-mapped"},
		{"unknown interface", Config{Interface: "no-such-if0", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24")}}, "no-such-if0"},
	}
	for _, tc := range cases {
		if _, err := New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// netnsEnv marks the run of TestManager inside its own network namespace.
const netnsEnv = "IOACTOR_VIP_NETNS"

// The manager adds both addresses with their lifetime, announces them
// (a gratuitous ARP and an unsolicited NA with the override flag, read on
// the other end of a veth pair), renews them while it owns them, lets the
// kernel drop them when it stops owning them, and deletes them on Release
// (a copy it did not add too). The test re-executes itself under
// `unshare --net` (root): nothing of the machine's network changes.
func TestManager(t *testing.T) {
	if os.Getenv(netnsEnv) == "" {
		leakcheck.Check(t)
		if os.Geteuid() != 0 {
			t.Fatal("TestManager needs root: it runs in a network namespace of its own (unshare --net); CI runs as root")
		}
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("unshare", "--net", "--", self, "-test.run", "^TestManager$", "-test.v", "-test.count=1", "-test.timeout=60s")
		cmd.Env = append(os.Environ(), netnsEnv+"=1")
		out, err := cmd.CombinedOutput()
		t.Logf("in its namespace:\n%s", out)
		if err != nil || !strings.Contains(string(out), "--- PASS: TestManager") {
			t.Fatalf("the test in its network namespace failed: %v (unshare, util-linux, needs root)", err)
		}
		return
	}
	leakcheck.Check(t)
	if ifs, err := net.Interfaces(); err != nil || len(ifs) != 1 {
		t.Fatalf("%s is set, but this is not a fresh network namespace (%v, %v): refusing to change the network", netnsEnv, ifs, err)
	}
	for _, args := range [][]string{
		{"link", "add", "va", "type", "veth", "peer", "name", "vb"},
		{"addr", "add", "10.97.0.1/24", "dev", "va"},
		{"addr", "add", "10.97.0.2/24", "dev", "vb"},
		{"addr", "add", "fd97::2/64", "dev", "vb", "nodad"},
		{"link", "set", "va", "up"},
		{"link", "set", "vb", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	v4, v6 := netip.MustParsePrefix("10.97.0.100/24"), netip.MustParsePrefix("fd97::100/64")
	vb, err := net.InterfaceByName("vb")
	if err != nil {
		t.Fatal(err)
	}
	va, err := net.InterfaceByName("va")
	if err != nil {
		t.Fatal(err)
	}
	// The listeners on the other end.
	ac, err := arp.Dial(vb)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	nc, _, err := ndp.Listen(vb, ndp.Addr("fd97::2"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.JoinGroup(netip.IPv6LinkLocalAllNodes()); err != nil {
		t.Fatal(err)
	}

	var notOwner atomic.Bool
	stillOwner := func() bool { return !notOwner.Load() }
	reg := prometheus.NewRegistry()
	m, err := New(Config{Interface: "va", Prefixes: []netip.Prefix{v4, v6}, Lifetime: time.Second,
		Announce: []time.Duration{0, 50 * time.Millisecond}, StillOwner: stillOwner, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	since := time.Now()
	if err := m.Acquire(since); err != nil {
		t.Fatal(err)
	}
	for _, s := range m.Status() {
		if !s.Held || !s.Owner || s.ValidLifetime < 0 || s.ValidLifetime > 1 {
			t.Errorf("after Acquire: %+v, want held, owner, valid_lft ≤ 1 s", s)
		}
	}
	// A gratuitous ARP: sender and target the VIP, from va's MAC.
	ac.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		p, _, err := ac.Read()
		if err != nil {
			t.Fatalf("no gratuitous ARP for %v on the peer: %v", v4, err)
		}
		if p.SenderIP == v4.Addr() && p.TargetIP == v4.Addr() && p.SenderHardwareAddr.String() == va.HardwareAddr.String() {
			break
		}
	}
	// An unsolicited NA: override, target the VIP, target LLA va's MAC.
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		msg, _, from, err := nc.ReadFrom()
		if err != nil {
			t.Fatalf("no neighbour advertisement for %v on the peer: %v", v6, err)
		}
		na, ok := msg.(*ndp.NeighborAdvertisement)
		if !ok || na.TargetAddress != v6.Addr() {
			continue
		}
		if !na.Override || na.Solicited || from.WithZone("") != v6.Addr() || len(na.Options) != 1 {
			t.Fatalf("NA from %v: %+v, want override, unsolicited, from the VIP, with its link-layer address", from, na)
		}
		if lla, ok := na.Options[0].(*ndp.LinkLayerAddress); !ok || lla.Direction != ndp.Target || lla.Addr.String() != va.HardwareAddr.String() {
			t.Fatalf("NA option %+v, want target link-layer address %v", na.Options[0], va.HardwareAddr)
		}
		break
	}
	// Renewed while owned: still there after three lifetimes.
	time.Sleep(3 * time.Second)
	for _, s := range m.Status() {
		if !s.Held {
			t.Fatalf("after 3 s (lifetime 1 s) while owner: %+v, want held (renewed)", s)
		}
	}
	if got := value(t, m.m.announcements.WithLabelValues("ipv4")); got != 2 {
		t.Errorf("IPv4 announcements: %v, want 2", got)
	}
	var h dto.Metric
	if err := m.m.firstAnnounce.Write(&h); err != nil || h.GetHistogram().GetSampleCount() != 1 {
		t.Errorf("first announcement histogram: %v, %v; want one sample", h.GetHistogram(), err)
	}

	// No longer the owner and Release never called (a frozen leader's
	// renewals stop the same way): the kernel drops the addresses.
	notOwner.Store(true)
	stopped := time.Now()
	for {
		held := false
		for _, s := range m.Status() {
			held = held || s.Held
		}
		if !held {
			break
		}
		if time.Since(stopped) > 5*time.Second {
			t.Fatalf("the addresses are still there %v after the renewals stopped (lifetime 1 s): %+v", time.Since(stopped), m.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the kernel dropped the unrenewed addresses %v after the renewals stopped (lifetime 1 s, renewed every 333 ms)", time.Since(stopped).Round(time.Millisecond))
	if deleted, err := m.Release(); err != nil || deleted {
		t.Fatalf("Release after expiry: deleted %v, %v; want nothing to delete", deleted, err)
	}
	if got := value(t, m.m.releases); got != 1 {
		t.Errorf("releases: %v, want 1", got)
	}

	// A copy this manager did not add (a previous run's) is deleted too.
	if out, err := exec.Command("ip", "addr", "add", "10.97.0.100/24", "dev", "va").CombinedOutput(); err != nil {
		t.Fatalf("ip addr add: %v: %s", err, out)
	}
	if deleted, err := m.Release(); err != nil || !deleted {
		t.Fatalf("Release of a stale copy: deleted %v, %v; want it deleted", deleted, err)
	}
	for _, s := range m.Status() {
		if s.Held || s.Owner {
			t.Fatalf("after Release: %+v", s)
		}
	}
}

// value reads a counter.
func value(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
