package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
)

// The VIP tests run across "hosts": three network namespaces (one tftpd
// -cluster node each, with its own address for raft and cluster HTTP) and
// a client namespace, joined by a bridge in a fifth namespace. The VIP is
// in the hosts' subnet; the client (tftp-hpa, curl) fetches from the VIP
// only. The outer test (root; iproute2, nftables, tftp-hpa, curl) creates
// the namespaces, named after its PID so that parallel runs never collide,
// re-executes itself inside the client namespace, and deletes them all at
// the end, failed or not. Nothing of the machine's own network changes.

// vipEnv marks the run inside the client namespace; its value is
// "PREFIX BIN": the namespaces' prefix and the tftpd binary.
const vipEnv = "IOACTOR_TFTPD_VIP_NETNS"

const (
	vipV4     = "10.99.0.100/24"
	vipV6     = "fd99::100/64"
	vipPort   = 69
	vipIfname = "eth0"
)

func vipHostIP(i int, v6 bool) string {
	if v6 {
		return fmt.Sprintf("fd99::%d", 11+i)
	}
	return fmt.Sprintf("10.99.0.%d", 11+i)
}

// vipHostMAC is host i's MAC (the client's counters tell hosts apart by it).
func vipHostMAC(i int) string { return fmt.Sprintf("02:99:00:00:00:%02d", 11+i) }

func vipHostNS(prefix string, i int) string { return fmt.Sprintf("%s-h%d", prefix, i+1) }

// vipNet creates the namespaces and returns their prefix; the cleanup
// stops what still runs in them (only this test's processes can) and
// deletes them.
func vipNet(t testing.TB) string {
	t.Helper()
	prefix := fmt.Sprintf("iovip%d", os.Getpid())
	sw, client := prefix+"-sw", prefix+"-c"
	all := []string{sw, client}
	for i := range 3 {
		all = append(all, vipHostNS(prefix, i))
	}
	t.Cleanup(func() {
		for _, ns := range all {
			if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
				for _, f := range strings.Fields(string(out)) {
					if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			}
			exec.Command("ip", "netns", "del", ns).Run()
		}
		for _, ns := range all {
			if _, err := os.Stat("/run/netns/" + ns); err == nil {
				t.Errorf("namespace %s left behind", ns)
			}
		}
	})
	for _, ns := range all {
		sh(t, "", "ip", "netns", "add", ns)
		sh(t, "", "ip", "-n", ns, "link", "set", "lo", "up")
	}
	// The switch: a bridge without multicast snooping (it would hold back
	// neighbour solicitations until it has seen MLD reports).
	sh(t, "", "ip", "-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	sh(t, "", "ip", "-n", sw, "link", "set", "br0", "up")
	plug := func(ns, port, mac, v4, v6 string) {
		sh(t, "", "ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", vipIfname, "netns", ns)
		sh(t, "", "ip", "-n", sw, "link", "set", port, "master", "br0", "up")
		sh(t, "", "ip", "-n", ns, "link", "set", vipIfname, "address", mac)
		sh(t, "", "ip", "-n", ns, "addr", "add", v4+"/24", "dev", vipIfname)
		sh(t, "", "ip", "-n", ns, "addr", "add", v6+"/64", "dev", vipIfname, "nodad")
		sh(t, "", "ip", "-n", ns, "link", "set", vipIfname, "up")
	}
	for i := range 3 {
		plug(vipHostNS(prefix, i), fmt.Sprintf("p%d", i+1), vipHostMAC(i), vipHostIP(i, false), vipHostIP(i, true))
	}
	plug(client, "pc", "02:99:00:00:00:50", "10.99.0.50", "fd99::50")
	return prefix
}

// runInVIPNet runs the test or benchmark named name inside the client
// namespace of a fresh vipNet and fails if it does not pass there.
func runInVIPNet(t testing.TB, name string) {
	leakcheck.Check(t)
	if os.Geteuid() != 0 {
		t.Fatalf("%s needs root: it creates network namespaces, a bridge and veth pairs, and adds addresses in them; CI runs as root", name)
	}
	for _, tool := range []string{"ip", "nft", "tftp", "curl"} {
		requireTool(t, tool)
	}
	bin := buildTftpd(t)
	prefix := vipNet(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	args := []string{"-test.run", "^" + name + "$", "-test.v", "-test.count=1", "-test.timeout=8m"}
	if strings.HasPrefix(name, "Benchmark") {
		args = []string{"-test.run", "^$", "-test.bench", "^" + name + "$", "-test.benchtime=1x", "-test.v", "-test.count=1", "-test.timeout=25m"}
		ctx2, cancel2 := context.WithTimeout(context.Background(), 28*time.Minute)
		defer cancel2()
		ctx = ctx2
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", prefix + "-c", self}, args...)...)
	cmd.Env = append(os.Environ(), vipEnv+"="+prefix+" "+bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := runLogged(t, cmd)
	if err != nil {
		t.Fatalf("the test in the client namespace failed: %v", err)
	}
	if !strings.Contains(out, "--- PASS: "+name) && !strings.Contains(out, "\nPASS\n") {
		t.Fatal("the test in the client namespace did not report a pass")
	}
}

// runLogged runs cmd, a re-execution of the test binary, logging each line
// of its output as it comes ("netns| " before it), and returns the output
// and how it ended.
func runLogged(t testing.TB, cmd *exec.Cmd) (string, error) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = w, w
	err = cmd.Start()
	w.Close()
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	var out strings.Builder
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		t.Log("netns| " + sc.Text())
		out.WriteString(sc.Text() + "\n")
	}
	r.Close()
	return out.String(), cmd.Wait()
}

// vipCluster is the cluster of a VIP test, seen from the client namespace.
type vipCluster struct {
	*testCluster
	prefix string
	v6     bool // the TFTP port is on the IPv6 VIP
}

// inVIPNet reports whether this is the run inside the client namespace,
// and if so starts the cluster there: three nodes holding both VIPs on
// eth0, TFTP on the IPv4 or IPv6 one, with certificates made by tftpd
// cert for each host's own address.
func inVIPNet(t testing.TB, v6 bool, files map[string][]byte) *vipCluster {
	env := os.Getenv(vipEnv)
	if env == "" {
		return nil
	}
	leakcheck.Check(t)
	prefix, bin, ok := strings.Cut(env, " ")
	if !ok {
		t.Fatalf("%s=%q: want PREFIX BIN", vipEnv, env)
	}
	if _, err := os.Stat("/run/netns/" + prefix + "-c"); err != nil {
		t.Fatalf("%s is set, but namespace %s-c does not exist: %v", vipEnv, prefix, err)
	}
	listen := vipV4
	if v6 {
		listen = vipV6
	}
	vip, _, _ := strings.Cut(listen, "/")
	if v6 {
		vip = "[" + vip + "]"
	}
	sh(t, vipCaptureRules(), "nft", "-f", "-")
	c := startClusterWith(t, bin, files, clusterLayout{
		listen:  fmt.Sprintf("%s:%d", vip, vipPort),
		raft:    func(i int) string { return vipHostIP(i, false) + ":7000" },
		http:    func(i int) string { return vipHostIP(i, false) + ":8000" },
		metrics: func(i int) string { return vipHostIP(i, false) + ":9000" },
		netns:   func(i int) string { return vipHostNS(prefix, i) },
		extra: func(int) []string {
			return []string{"-vip", vipV4, "-vip", vipV6, "-vip-interface", vipIfname}
		},
	})
	return &vipCluster{testCluster: c, prefix: prefix, v6: v6}
}

// vipCaptureRules count, in the client namespace, what it receives from
// each host, told apart by source MAC: TFTP DATA packets (opcode 3, counter
// dN), ICMP and ICMPv6 destination-unreachable errors (eN), and neighbour
// solicitations and advertisements or ARP packets that give a VIP as their
// sender (nN, aN): a host that still has the VIP but no longer serves it
// would send those.
func vipCaptureRules() string {
	v4, _, _ := strings.Cut(vipV4, "/")
	v6, _, _ := strings.Cut(vipV6, "/")
	var b strings.Builder
	b.WriteString("table inet vipcap {\n")
	for i := range 3 {
		fmt.Fprintf(&b, "\tcounter d%[1]d {\n\t}\n\tcounter e%[1]d {\n\t}\n\tcounter n%[1]d {\n\t}\n", i+1)
	}
	b.WriteString("\tchain in {\n\t\ttype filter hook input priority -10; policy accept;\n")
	for i := range 3 {
		m := vipHostMAC(i)
		fmt.Fprintf(&b, "\t\tether saddr %s udp sport %d @th,64,16 3 counter name \"d%d\"\n", m, vipPort, i+1)
		fmt.Fprintf(&b, "\t\tether saddr %s icmp type destination-unreachable counter name \"e%d\"\n", m, i+1)
		fmt.Fprintf(&b, "\t\tether saddr %s icmpv6 type destination-unreachable counter name \"e%d\"\n", m, i+1)
		fmt.Fprintf(&b, "\t\tether saddr %s ip6 saddr %s icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } counter name \"n%d\"\n", m, v6, i+1)
	}
	b.WriteString("\t}\n}\ntable arp vipcap {\n")
	for i := range 3 {
		fmt.Fprintf(&b, "\tcounter a%d {\n\t}\n", i+1)
	}
	b.WriteString("\tchain in {\n\t\ttype filter hook input priority -10; policy accept;\n")
	for i := range 3 {
		fmt.Fprintf(&b, "\t\tether saddr %s arp saddr ip %s counter name \"a%d\"\n", vipHostMAC(i), v4, i+1)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// vipCounts is a reading of the capture counters, per host.
type vipCounts struct {
	data, errs, neigh [3]uint64 // neigh: ND and ARP
	at                time.Time // when the reading was taken (its start)
}

// readVIPCounters reads the capture counters.
func readVIPCounters() (vipCounts, error) {
	n := vipCounts{at: time.Now()}
	cs, err := nftCounters() // both tables vipcap (inet, arp)
	if err != nil {
		return n, err
	}
	for name, packets := range cs {
		var kind rune
		var i int
		if _, err := fmt.Sscanf(name, "%c%d", &kind, &i); err != nil || i < 1 || i > 3 {
			return n, fmt.Errorf("nft list counters: unexpected counter %q", name)
		}
		switch kind {
		case 'd':
			n.data[i-1] = packets
		case 'e':
			n.errs[i-1] = packets
		case 'n', 'a':
			n.neigh[i-1] += packets
		default:
			return n, fmt.Errorf("nft list counters: unexpected counter %q", name)
		}
	}
	if len(cs) != 12 {
		return n, fmt.Errorf("nft list counters: %d counters, want 12", len(cs))
	}
	return n, nil
}

// counterLog samples readVIPCounters until stop.
type counterLog struct {
	mu      sync.Mutex
	samples []vipCounts
	err     error
	quit    chan struct{}
	done    chan struct{}
}

func startCounterLog() *counterLog {
	l := &counterLog{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			n, err := readVIPCounters()
			l.mu.Lock()
			if err != nil && l.err == nil {
				l.err = err
			}
			if err == nil {
				l.samples = append(l.samples, n)
			}
			l.mu.Unlock()
			select {
			case <-l.quit:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return l
}

func (l *counterLog) stop() ([]vipCounts, error) {
	close(l.quit)
	<-l.done
	n, err := readVIPCounters() // the end, after the last packet
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		l.samples = append(l.samples, n)
	}
	return l.samples, errors.Join(l.err, err)
}

// checkOneSender checks the samples of a download during which the test
// acted on host old at from: in no interval between two samples did the
// client receive DATA from two hosts, but for the one interval in which the
// new host's DATA began (the counters cannot order packets within an
// interval: a handover faster than the sampling lands old's last and the
// new host's first DATA in one); and once another host's DATA arrived
// after from, none came from old again until until (zero: the end; a
// frozen host that wakes up may lead again later, legitimately). It
// returns the DATA received from each host over the whole download, and
// what the client received from old after the first DATA from another
// host: ICMP errors, and ND or ARP packets with a VIP as sender.
func checkOneSender(t testing.TB, name string, samples []vipCounts, old int, from, until time.Time) (recv [3]uint64, errsAfter, neighAfter uint64) {
	t.Helper()
	if len(samples) < 2 {
		t.Fatalf("%s: %d counter samples", name, len(samples))
	}
	s := func(k int) [3]uint64 { return samples[k].data }
	// base: the last sample taken before the action.
	base := 0
	for k := range samples {
		if samples[k].at.Before(from) {
			base = k
		}
	}
	moved := -1
	for k := base + 1; k < len(samples); k++ {
		if !until.IsZero() && !samples[k].at.Before(until) {
			break
		}
		for h := range 3 {
			if h != old && s(k)[h] != s(base)[h] && moved < 0 {
				moved = k
			}
		}
		if moved >= 0 && s(k)[old] != s(moved)[old] {
			t.Errorf("%s: the client received DATA from the old host h%d (%d → %d) after the new host's began", name, old+1, s(moved)[old], s(k)[old])
			break
		}
	}
	for k := 1; k < len(samples); k++ {
		var who []int
		for h := range 3 {
			if s(k)[h] != s(k - 1)[h] {
				who = append(who, h+1)
			}
		}
		handover := k == moved && len(who) == 2 && slices.Contains(who, old+1)
		if len(who) > 1 && !handover {
			t.Errorf("%s: the client received DATA from hosts %v between two samples (%v → %v)", name, who, s(k-1), s(k))
		}
	}
	first, last := s(0), s(len(samples)-1)
	for h := range 3 {
		recv[h] = last[h] - first[h]
	}
	if moved >= 0 {
		end := samples[len(samples)-1]
		errsAfter = end.errs[old] - samples[moved].errs[old]
		neighAfter = end.neigh[old] - samples[moved].neigh[old]
	}
	return recv, errsAfter, neighAfter
}

// vipHolders lists the hosts (from 0) whose eth0 has the address of
// prefix (the kernel's view).
func (c *vipCluster) vipHolders(t testing.TB, prefix string) []int {
	t.Helper()
	out, err := c.holders(prefix)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (c *vipCluster) holders(prefix string) ([]int, error) {
	var out []int
	for i := range 3 {
		has, err := c.holds(i, prefix)
		if err != nil {
			return nil, err
		}
		if has {
			out = append(out, i)
		}
	}
	return out, nil
}

// holds reports whether host i's eth0 has the address of prefix.
func (c *vipCluster) holds(i int, prefix string) (bool, error) {
	addr, _, _ := strings.Cut(prefix, "/")
	b, err := exec.Command("ip", "-n", vipHostNS(c.prefix, i), "-j", "addr", "show", "dev", vipIfname).Output()
	if err != nil {
		return false, fmt.Errorf("ip addr show in %s: %w", vipHostNS(c.prefix, i), err)
	}
	var ifs []struct {
		AddrInfo []struct {
			Local string `json:"local"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(b, &ifs); err != nil {
		return false, fmt.Errorf("ip addr show in %s: %w", vipHostNS(c.prefix, i), err)
	}
	for _, f := range ifs {
		for _, a := range f.AddrInfo {
			if a.Local == addr {
				return true, nil
			}
		}
	}
	return false, nil
}

// holderLog samples which hosts hold the IPv4 VIP, every 20 ms, until
// stop, and counts the samples in which two or more did.
type holderLog struct {
	quit, done chan struct{}
	both       int
	err        error
}

func (c *vipCluster) startHolderLog() *holderLog {
	l := &holderLog{quit: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			n := 0
			for i := range 3 {
				has, err := c.holds(i, vipV4)
				if err != nil {
					l.err = err
					return
				}
				if has {
					n++
				}
			}
			if n > 1 {
				l.both++
			}
			select {
			case <-l.quit:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return l
}

func (l *holderLog) stop() (int, error) {
	close(l.quit)
	<-l.done
	return l.both, l.err
}

// watchGone polls, from now on, until host i holds neither VIP, and
// delivers how long that took from since (or an error after limit).
func (c *vipCluster) watchGone(i int, since time.Time, limit time.Duration) <-chan goneResult {
	ch := make(chan goneResult, 1)
	go func() {
		for {
			h4, err4 := c.holds(i, vipV4)
			h6, err6 := c.holds(i, vipV6)
			if err := errors.Join(err4, err6); err != nil {
				ch <- goneResult{err: err}
				return
			}
			if !h4 && !h6 {
				ch <- goneResult{after: time.Since(since)}
				return
			}
			if time.Since(since) > limit {
				ch <- goneResult{err: fmt.Errorf("h%d still holds a VIP (IPv4 %v, IPv6 %v) %v after", i+1, h4, h6, limit)}
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return ch
}

type goneResult struct {
	after time.Duration
	err   error
}

// settled waits until a node leads and its host, and only its host, holds
// both VIPs, and returns its index. It asks again each round: on a loaded
// machine leadership may move meanwhile, and the VIP must follow it.
func (c *vipCluster) settled(t testing.TB) int {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		li := indexOf(c.nodes, c.waitLeader(20*time.Second))
		h4, h6 := c.vipHolders(t, vipV4), c.vipHolders(t, vipV6)
		if slices.Equal(h4, []int{li}) && slices.Equal(h6, []int{li}) {
			return li
		}
		if time.Now().After(deadline) {
			t.Fatalf("the VIPs are held by hosts %v (IPv4) and %v (IPv6); want only the leader's, h%d", h4, h6, li+1)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// staleBound is how long a killed leader's copy of the VIPs may stay: the
// lifetime (3 s, renewed every second, so at most 3 s left at the kill)
// plus the kernel's lifetime check (up to 1 s late) plus slack for a
// loaded machine.
const staleBound = 3*time.Second + time.Second + 2*time.Second

// The leader owns the virtual IP, and a lock-step tftp-hpa download from
// it survives, byte-identical: five SIGKILLs of the leader's process in a
// row (halfway, in the first 10 blocks, across block 65535, halfway, at
// 2 MiB); the death of the
// leader's host (its link down while its process runs); a graceful
// SIGTERM. The client receives DATA from one host at a time (nftables
// counters by source MAC); a killed host's stale copy is gone within
// staleBound, and its node restarted joins as a follower without taking
// the VIP back; a cut-off leader deletes its VIP itself once it loses its
// lease; tftpd -status names the holder; curl fetches from the VIP.
func TestVIPFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("network namespaces, three processes, 200 MiB; not in -short")
	}
	file := make([]byte, 40<<20) // 81920 blocks of 512: crosses 65535
	rand.Read(file)
	small := make([]byte, 1<<20)
	rand.Read(small)
	c := inVIPNet(t, false, map[string][]byte{"big.bin": file, "small.bin": small})
	if c == nil {
		runInVIPNet(t, "TestVIPFailover")
		return
	}
	leader := c.nodes[c.settled(t)]
	c.checkStatusCommand(t, leader)

	cases := []struct {
		name string
		at   int64
		how  string // kill, cut, term, freeze
	}{
		// Five SIGKILLs in a row.
		{"halfway", 20 << 20, "kill"},
		{"first-10-blocks", 5 * 512, "kill"},
		{"rollover", 65530 * 512, "kill"},
		{"halfway-again", 20 << 20, "kill"},
		{"early", 2 << 20, "kill"},
		{"host-cut", 12 << 20, "cut"},
		{"frozen", 8 << 20, "freeze"},
		{"graceful", 20 << 20, "term"},
	}
	for _, tc := range cases {
		li := c.settled(t)
		leader := c.nodes[li]
		cl := startCounterLog()
		hl := c.startHolderLog()
		var actedAt, resumedAt time.Time // resumedAt: a frozen host's SIGCONT
		var gone <-chan goneResult
		acted := make(chan struct{})
		got, pause := download(t, c.listen, "big.bin", "octet", func(size int64) bool {
			if size < tc.at {
				return false
			}
			// Act on the host that serves now: on this loaded machine
			// leadership sometimes moves during a download by itself.
			if h, err := c.holders(vipV4); err == nil && len(h) == 1 && h[0] != li {
				t.Logf("%s: leadership moved from h%d to h%d during the download, before the %s", tc.name, li+1, h[0]+1, tc.how)
				li, leader = h[0], c.nodes[h[0]]
			}
			actedAt = time.Now()
			go func() {
				defer close(acted)
				switch tc.how {
				case "kill":
					c.kill(leader, syscall.SIGKILL)
				case "term":
					c.kill(leader, syscall.SIGTERM)
				case "cut":
					exec.Command("ip", "-n", vipHostNS(c.prefix, li), "link", "set", vipIfname, "down").Run()
				case "freeze":
					// Frozen past the VIP's lifetime: nobody renews it.
					leader.cmd.Process.Signal(syscall.SIGSTOP)
					gone = c.watchGone(li, actedAt, staleBound)
					time.Sleep(staleBound)
					resumedAt = time.Now()
					leader.cmd.Process.Signal(syscall.SIGCONT)
					return
				}
				gone = c.watchGone(li, actedAt, staleBound)
			}()
			return true
		})
		<-acted
		samples, err := cl.stop()
		if err != nil {
			t.Fatal(err)
		}
		both, err := hl.stop()
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(got) != sha256.Sum256(file) {
			t.Fatalf("%s: the file arrived with %d bytes and another digest", tc.name, len(got))
		}
		if tc.how == "kill" || tc.how == "freeze" {
			// By design: the stale copy until the kernel drops it, with
			// no process behind it and the clients sent elsewhere.
			t.Logf("%s: two hosts had the VIP in %d samples (the dead or frozen host's stale copy and the new leader's)", tc.name, both)
		} else if both > 0 {
			t.Errorf("%s: two hosts had the VIP at once in %d samples", tc.name, both)
		}
		recv, errsAfter, neighAfter := checkOneSender(t, tc.name, samples, li, actedAt, resumedAt)
		srv := -1 // the host that finished the download
		for h := range 3 {
			if h != li && recv[h] > 0 && (srv < 0 || recv[h] > recv[srv]) {
				srv = h
			}
		}
		if srv < 0 {
			t.Fatalf("%s: DATA received from h1, h2, h3: %v; none from another host than h%d", tc.name, recv, li+1)
		}
		t.Logf("%s (%s of h%d at %d bytes): byte-identical, longest pause %v; DATA received from h1, h2, h3: %v; finished by h%d; from h%d after h%d's first DATA: %d ICMP errors, %d ND/ARP with the VIP as sender",
			tc.name, tc.how, li+1, tc.at, pause.Round(time.Millisecond), recv, srv+1, li+1, srv+1, errsAfter, neighAfter)
		fmt.Printf("vip failover %-16s %-5s pause %v\n", tc.name, tc.how, pause.Round(time.Millisecond))
		g := <-gone
		if g.err != nil {
			t.Fatalf("%s: %v", tc.name, g.err)
		}
		ni := c.settled(t)
		if ni == li && tc.how != "freeze" {
			// Dead or cut off until now: it cannot.
			t.Fatalf("%s: h%d leads again", tc.name, li+1)
		}
		if pause > time.Second {
			c.explainPause(t, actedAt, c.nodes[srv])
		}
		switch tc.how {
		case "kill":
			// The stale copy: the kernel drops it at the end of its lifetime.
			t.Logf("%s: h%d's stale VIP gone %v after the kill (bound %v)", tc.name, li+1, g.after.Round(time.Millisecond), staleBound)
			fmt.Printf("vip stale copy gone %v after SIGKILL\n", g.after.Round(time.Millisecond))
		case "term":
			t.Logf("%s: h%d deleted its VIP %v after the SIGTERM", tc.name, li+1, g.after.Round(time.Millisecond))
		case "freeze":
			t.Logf("%s: the kernel dropped frozen h%d's VIP %v after the SIGSTOP (bound %v); SIGCONT after %v", tc.name, li+1, g.after.Round(time.Millisecond), staleBound, staleBound)
		case "cut":
			// The old leader, cut off but alive, deleted the VIP itself.
			if leader.exited() {
				t.Fatalf("%s: the cut leader's process exited", tc.name)
			}
			released := logTime(t, leader, actedAt, `msg="cluster: virtual IP released"`)
			portReleased := logTime(t, leader, actedAt, `msg="cluster: TFTP port released"`)
			if released.Before(portReleased) {
				t.Errorf("%s: the cut leader deleted the VIP (%s) before it released the port (%s)", tc.name,
					released.Format(time.StampMilli), portReleased.Format(time.StampMilli))
			}
			t.Logf("%s: the cut leader h%d released the port %v and deleted the VIP %v after the cut (seen gone at %v)", tc.name, li+1,
				portReleased.Sub(actedAt).Round(time.Millisecond), released.Sub(actedAt).Round(time.Millisecond), g.after.Round(time.Millisecond))
			sh(t, "", "ip", "-n", vipHostNS(c.prefix, li), "link", "set", vipIfname, "up")
		}
		if tc.how == "kill" || tc.how == "term" {
			c.start(leader, "", false)
		}
		if ni == li {
			t.Logf("%s: h%d, woken up, won a later election", tc.name, li+1)
			continue
		}
		c.checkFollower(t, leader, ni)
	}

	// curl, from the VIP, served by the leader alone.
	leader = c.waitLeader(20 * time.Second)
	li := indexOf(c.nodes, leader)
	before, err := readVIPCounters()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "curl.bin")
	if b, err := exec.Command("curl", "-sS", "--max-time", "60", "-o", out, "tftp://"+c.listen+"/small.bin").CombinedOutput(); err != nil {
		t.Fatalf("curl: %v: %s", err, b)
	}
	if b, err := os.ReadFile(out); err != nil || sha256.Sum256(b) != sha256.Sum256(small) {
		t.Fatalf("curl's download differs (%d bytes, %v)", len(b), err)
	}
	after, err := readVIPCounters()
	if err != nil {
		t.Fatal(err)
	}
	for h := range 3 {
		if h != li && after.data[h] != before.data[h] {
			t.Errorf("curl's download: DATA from h%d, which does not lead (h%d does): %v → %v", h+1, li+1, before, after)
		}
	}
}

// checkFollower waits until n (restarted, or reconnected) follows, and
// checks that for a second its host never holds the VIP and no two hosts
// do; then that the leader's host holds it (holder, or whoever leads if
// leadership moved meanwhile).
func (c *vipCluster) checkFollower(t testing.TB, n *clusterNode, holder int) {
	t.Helper()
	c.waitFor(n.id+" to follow", func() bool {
		st, err := c.status(n)
		return err == nil && st.State == "Follower" && st.Leader != "" && st.Leader != n.id
	})
	ni := indexOf(c.nodes, n)
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		h := c.vipHolders(t, vipV4)
		if slices.Contains(h, ni) {
			// Only as the winner of a later election (leadership moves by
			// itself on this loaded machine), never by starting.
			if st, err := c.status(n); err == nil && st.State == "Leader" {
				t.Logf("%s, rejoined as a follower, won a later election and took the VIP", n.id)
				return
			}
		}
		if slices.Contains(h, ni) || len(h) > 1 {
			t.Fatalf("after %s rejoined, the VIP is held by hosts %v (h%d held it)", n.id, h, holder+1)
		}
	}
	c.settled(t)
}

// checkStatusCommand runs tftpd -status against a follower and checks
// that it names the leader as the holder of each VIP.
func (c *vipCluster) checkStatusCommand(t testing.TB, leader *clusterNode) {
	t.Helper()
	var follower *clusterNode
	for _, n := range c.nodes {
		if n != leader {
			follower = n
			break
		}
	}
	var last string
	c.waitFor("tftpd -status to name the holder", func() bool {
		out, err := exec.Command(c.bin, "-status", follower.http, "-cluster-tls", follower.certs).CombinedOutput()
		last = string(out)
		return err == nil &&
			strings.Contains(last, "vip "+vipV4+": held by "+leader.id+" (Leader") &&
			strings.Contains(last, "vip "+vipV6+": held by "+leader.id+" (Leader")
	})
	for _, l := range strings.Split(last, "\n") {
		if strings.HasPrefix(l, "vip ") {
			t.Logf("tftpd -status: %s", l)
		}
	}
}

// An IPv6 VIP: a download from it survives a SIGKILL of the leader,
// byte-identical; the IPv4 VIP moves with it.
func TestVIPIPv6(t *testing.T) {
	if testing.Short() {
		t.Skip("network namespaces, three processes; not in -short")
	}
	file := make([]byte, 16<<20)
	rand.Read(file)
	c := inVIPNet(t, true, map[string][]byte{"big.bin": file})
	if c == nil {
		runInVIPNet(t, "TestVIPIPv6")
		return
	}
	li := c.settled(t)
	leader := c.nodes[li]
	cl := startCounterLog()
	var killedAt time.Time
	var gone <-chan goneResult
	killed := make(chan struct{})
	got, pause := download(t, c.listen, "big.bin", "octet", func(size int64) bool {
		if size < 8<<20 {
			return false
		}
		if h, err := c.holders(vipV6); err == nil && len(h) == 1 && h[0] != li {
			t.Logf("leadership moved from h%d to h%d during the download, before the kill", li+1, h[0]+1)
			li, leader = h[0], c.nodes[h[0]]
		}
		killedAt = time.Now()
		go func() {
			defer close(killed)
			c.kill(leader, syscall.SIGKILL)
			gone = c.watchGone(li, killedAt, staleBound)
		}()
		return true
	})
	<-killed
	samples, err := cl.stop()
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(got) != sha256.Sum256(file) {
		t.Fatalf("the file arrived with %d bytes and another digest", len(got))
	}
	recv, errsAfter, neighAfter := checkOneSender(t, "ipv6", samples, li, killedAt, time.Time{})
	ni := c.settled(t)
	nl := c.nodes[ni]
	g := <-gone
	if g.err != nil {
		t.Fatal(g.err)
	}
	t.Logf("IPv6 VIP (SIGKILL of h%d at 8 MiB): byte-identical, longest pause %v; DATA from h1, h2, h3: %v; stale copy gone after %v; from h%d after the new host's first DATA: %d ICMP errors, %d ND/ARP with the VIP as sender",
		li+1, pause.Round(time.Millisecond), recv, g.after.Round(time.Millisecond), li+1, errsAfter, neighAfter)
	fmt.Printf("vip failover %-16s %-5s pause %v\n", "ipv6", "kill", pause.Round(time.Millisecond))
	if pause > time.Second {
		c.explainPause(t, killedAt, nl)
	}
}

// explainPause logs, for a long pause, the new leader's cluster log lines.
func (c *vipCluster) explainPause(t testing.TB, at time.Time, nl *clusterNode) {
	t.Logf("acted at %s; log of the new leader %s:\n%s", at.Format(time.StampMilli), nl.id,
		grepLines(nl.log.String(), `msg="cluster:`, `msg="tftp: res`, "vip:"))
}

// BenchmarkVIPFailover moves the VIP 20 times by SIGKILL of the leader's
// process and 20 times by cutting the leader's host (link down, process
// alive), each in the middle of a 16 MiB tftp-hpa download from the VIP
// across namespaces, and reports the median and longest pause the client
// saw (its file's growth) and the stale copies' lifetime after the kills.
// Run: go test -run '^$' -bench VIPFailover -benchtime 1x ./cmd/tftpd/
func BenchmarkVIPFailover(b *testing.B) {
	file := make([]byte, 16<<20)
	rand.Read(file)
	want := sha256.Sum256(file)
	c := inVIPNet(b, false, map[string][]byte{"f.bin": file})
	if c == nil {
		runInVIPNet(b, "BenchmarkVIPFailover")
		return
	}
	rounds := 20
	if v, err := strconv.Atoi(os.Getenv("VIP_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	for range b.N {
		for _, how := range []string{"kill", "cut"} {
			var pauses, stale []time.Duration
			for range rounds {
				li := c.settled(b)
				leader := c.nodes[li]
				var gone <-chan goneResult
				acted := make(chan struct{})
				got, pause := download(b, c.listen, "f.bin", "octet", func(size int64) bool {
					if size < 8<<20 {
						return false
					}
					if h, err := c.holders(vipV4); err == nil && len(h) == 1 && h[0] != li {
						li, leader = h[0], c.nodes[h[0]] // leadership moved by itself
					}
					at := time.Now()
					go func() {
						defer close(acted)
						if how == "kill" {
							c.kill(leader, syscall.SIGKILL)
						} else {
							exec.Command("ip", "-n", vipHostNS(c.prefix, li), "link", "set", vipIfname, "down").Run()
						}
						gone = c.watchGone(li, at, staleBound)
					}()
					return true
				})
				<-acted
				if sha256.Sum256(got) != want {
					b.Fatal("the file arrived corrupted")
				}
				g := <-gone
				if g.err != nil {
					b.Fatal(g.err)
				}
				pauses = append(pauses, pause)
				if how == "kill" {
					stale = append(stale, g.after)
					c.start(leader, "", false)
				} else {
					sh(b, "", "ip", "-n", vipHostNS(c.prefix, li), "link", "set", vipIfname, "up")
				}
				if pause > 2*time.Second {
					c.explainPause(b, time.Now().Add(-pause), c.waitLeader(20*time.Second))
				}
				c.checkFollower(b, leader, indexOf(c.nodes, c.waitLeader(20*time.Second)))
			}
			slices.Sort(pauses)
			b.ReportMetric(float64(pauses[len(pauses)/2].Milliseconds()), how+"-median-ms")
			b.ReportMetric(float64(pauses[len(pauses)-1].Milliseconds()), how+"-max-ms")
			fmt.Printf("vip failover %s over %d: median %v, max %v, all %v\n", how, len(pauses),
				pauses[len(pauses)/2].Round(time.Millisecond), pauses[len(pauses)-1].Round(time.Millisecond), roundAll(pauses))
			if len(stale) > 0 {
				slices.Sort(stale)
				fmt.Printf("vip stale copy after SIGKILL over %d: median %v, max %v\n", len(stale),
					stale[len(stale)/2].Round(time.Millisecond), stale[len(stale)-1].Round(time.Millisecond))
			}
		}
	}
}

func roundAll(d []time.Duration) []time.Duration {
	out := make([]time.Duration, len(d))
	for i, v := range d {
		out[i] = v.Round(time.Millisecond)
	}
	return out
}

// A node needs no root for its VIP: run as nobody with only the ambient
// capabilities contrib/systemd/tftpd-cluster.service gives it
// (CAP_NET_ADMIN, CAP_NET_RAW, CAP_NET_BIND_SERVICE), a one-node cluster
// in a namespace the test creates adds both VIPs, announces them
// (ioactor_vip_announcements_total), serves curl on port 69 of the VIP,
// and deletes them on SIGTERM.
func TestVIPCapabilities(t *testing.T) {
	leakcheck.Check(t)
	if os.Geteuid() != 0 {
		t.Fatal("TestVIPCapabilities needs root: it creates a network namespace and starts tftpd as nobody with setpriv; CI runs as root")
	}
	for _, tool := range []string{"ip", "curl", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (Debian packages iproute2, curl, util-linux): %v", tool, err)
		}
	}
	// A directory nobody can reach: the binary, its data, its root.
	dir, err := os.MkdirTemp("", "iovipcap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	b, err := os.ReadFile(buildTftpd(t))
	if err != nil {
		t.Fatal(err)
	}
	bin, data, root := filepath.Join(dir, "tftpd"), filepath.Join(dir, "data"), filepath.Join(dir, "root")
	os.WriteFile(bin, b, 0o755)
	os.Mkdir(data, 0o700)
	os.Mkdir(root, 0o755)
	os.WriteFile(filepath.Join(root, "f"), []byte("capabilities, not root\n"), 0o644)
	if err := os.Chown(data, 65534, 65534); err != nil {
		t.Fatal(err)
	}

	ns := fmt.Sprintf("iovip%d-cap", os.Getpid())
	sh(t, "", "ip", "netns", "add", ns)
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", ns).Run()
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			t.Errorf("namespace %s left behind", ns)
		}
	})
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "va", "type", "veth", "peer", "name", "vb"},
		{"addr", "add", "10.98.0.1/24", "dev", "va"},
		{"addr", "add", "fd98::1/64", "dev", "va", "nodad"},
		{"addr", "add", "10.98.0.2/24", "dev", "vb"},
		{"link", "set", "va", "up"},
		{"link", "set", "vb", "up"},
	} {
		sh(t, "", "ip", append([]string{"-n", ns}, args...)...)
	}
	caps := "+net_admin,+net_raw,+net_bind_service"
	log := &testutil.SyncBuffer{}
	cmd := exec.Command("ip", "netns", "exec", ns, "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
		"--inh-caps="+caps, "--ambient-caps="+caps, bin,
		"-cluster", "-cluster-insecure", "-node-id", "n1", "-data", data, "-root", root,
		"-raft", "10.98.0.1:7000", "-cluster-http", "10.98.0.1:8000", "-metrics-listen", "10.98.0.1:9000",
		"-vip", "10.98.0.100/24", "-vip", "fd98::100/64", "-vip-interface", "va")
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("log of the node:\n%s", log.String())
		}
	})
	inNS := func(name string, args ...string) (string, error) {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...).CombinedOutput()
		return string(out), err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _ := inNS("curl", "-sS", "--max-time", "5", "tftp://10.98.0.100/f")
		if out == "capabilities, not root\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no download from the VIP as nobody after 20 s (last: %q)", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err := inNS("ip", "addr", "show", "dev", "va")
	if err != nil || !strings.Contains(out, "10.98.0.100/24") || !strings.Contains(out, "fd98::100/64") {
		t.Fatalf("the VIPs are not on va (%v):\n%s", err, out)
	}
	out, err = inNS("curl", "-sS", "--max-time", "5", "http://10.98.0.1:9000/metrics")
	if err != nil || !strings.Contains(out, `ioactor_vip_announcements_total{family="ipv4"}`) || strings.Contains(out, `ioactor_vip_announcements_total{family="ipv4"} 0`) ||
		strings.Contains(out, `ioactor_vip_announcements_total{family="ipv6"} 0`) {
		t.Fatalf("metrics: no announcement sent (%v):\n%s", err, grepLines(out, "ioactor_vip"))
	}
	t.Logf("as nobody with %s: %s", caps, strings.ReplaceAll(grepLines(out, "ioactor_vip_announcements_total{", "ioactor_vip_errors_total{"), "\n", "; "))
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		stopped = true
	case <-time.After(20 * time.Second):
		t.Fatal("the node did not stop within 20 s of SIGTERM")
	}
	if out, _ := inNS("ip", "addr", "show", "dev", "va"); strings.Contains(out, "10.98.0.100") || strings.Contains(out, "fd98::100") {
		t.Fatalf("the VIPs are still on va after SIGTERM:\n%s", out)
	}
}
