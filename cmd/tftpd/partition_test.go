package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
)

// partitionEnv marks the run of TestClusterPartition inside its own network
// namespace; its value is the tftpd binary to start.
const partitionEnv = "IOACTOR_TFTPD_PARTITION_NETNS"

// No split brain: the leader's raft traffic is cut (nftables drops every
// packet from or to its IP; its process lives on and still reaches the
// TFTP client on loopback) in the middle of a download. The old leader must
// release the TFTP port before the new leader binds it, as three captures
// show: each node's acknowledged-bytes counter, polled every 10 ms, never
// grows on two nodes in one poll and the old leader's stops before the new
// one's starts; nftables counters of the DATA packets each node sends (told
// apart by the process's group ID) show none from the old leader after its
// release; the logs order its "TFTP port released" before the new leader's
// "serving TFTP". The download completes byte-identical; once healed, the
// old leader rejoins as a follower and a second download is served by the
// leader alone.
//
// The test changes no network of the machine: it re-executes itself under
// `unshare --net` (root; Debian packages util-linux, iproute2, nftables,
// tftp-hpa) and does everything inside that namespace, which vanishes with
// the process.
func TestClusterPartition(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three processes in a network namespace; not in -short")
	}
	if bin := os.Getenv(partitionEnv); bin != "" {
		partitionInNetns(t, bin)
		return
	}
	leakcheck.Check(t)
	if os.Geteuid() != 0 {
		t.Fatal("TestClusterPartition needs root: it creates a network namespace (unshare --net) and sets nftables rules in it; CI runs as root")
	}
	for _, tool := range []string{"unshare", "ip", "nft", "tftp"} {
		requireTool(t, tool)
	}
	bin := buildTftpd(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--", self,
		"-test.run", "^TestClusterPartition$", "-test.v", "-test.count=1", "-test.timeout=90s")
	cmd.Env = append(os.Environ(), partitionEnv+"="+bin)
	out, err := runLogged(t, cmd)
	if err != nil {
		t.Fatalf("the test in its network namespace failed: %v (if unshare itself failed: it needs root with CAP_SYS_ADMIN)", err)
	}
	if !strings.Contains(out, "--- PASS: TestClusterPartition") {
		t.Fatal("the test in its network namespace did not report a pass")
	}
}

// partitionIP is node i's (from 0) address for raft and cluster HTTP.
func partitionIP(i int) string { return fmt.Sprintf("10.77.0.%d", i+1) }

// sh runs a command of the namespace's set-up and fails the test if it fails.
func sh(t testing.TB, stdin string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// cutRules drops every packet from or to one IP, both directions of every
// connection (new or established), as it leaves any socket of the namespace.
const cutRules = `table inet partition {
	chain out {
		type filter hook output priority 0; policy accept;
		ip saddr %[1]s drop
		ip daddr %[1]s drop
	}
}
`

// captureRules count, per node, the TFTP DATA packets (opcode 3) sent from
// the TFTP port: each node runs with its own group ID (7701 + i), which
// nftables sees on its sockets (meta skgid).
const captureRules = `table inet capture {
	counter node1 {
	}
	counter node2 {
	}
	counter node3 {
	}
	chain out {
		type filter hook output priority -10; policy accept;
		udp sport 6969 @th,64,16 3 meta skgid 7701 counter name "node1"
		udp sport 6969 @th,64,16 3 meta skgid 7702 counter name "node2"
		udp sport 6969 @th,64,16 3 meta skgid 7703 counter name "node3"
	}
}
`

// dataSent is a reading of the capture counters: DATA packets sent by each
// node, and when the reading was taken.
type dataSent struct {
	n          [3]uint64
	start, end time.Time
}

// others is the DATA sent by the nodes but node i.
func (d dataSent) others(i int) uint64 {
	var sum uint64
	for j, n := range d.n {
		if j != i {
			sum += n
		}
	}
	return sum
}

// readDataSent reads the capture counters.
func readDataSent() (dataSent, error) {
	d := dataSent{start: time.Now()}
	cs, err := nftCounters("table", "inet", "capture")
	d.end = time.Now()
	if err != nil {
		return d, err
	}
	for name, packets := range cs {
		var i int
		if _, err := fmt.Sscanf(name, "node%d", &i); err != nil || i < 1 || i > 3 {
			return d, fmt.Errorf("nft list counters: unexpected counter %q", name)
		}
		d.n[i-1] = packets
	}
	if len(cs) != 3 {
		return d, fmt.Errorf("nft list counters: %d counters, want 3: %v", len(cs), cs)
	}
	return d, nil
}

// nftCounters lists the named counters (of the table args name, if any)
// with their packet counts.
func nftCounters(args ...string) (map[string]uint64, error) {
	out, err := exec.Command("nft", append([]string{"-j", "list", "counters"}, args...)...).Output()
	if err != nil {
		return nil, fmt.Errorf("nft list counters: %w", err)
	}
	var v struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return nil, fmt.Errorf("nft list counters: %w: %s", err, out)
	}
	cs := make(map[string]uint64)
	for _, o := range v.Nftables {
		if o.Counter != nil {
			cs[o.Counter.Name] += o.Counter.Packets
		}
	}
	return cs, nil
}

func mustReadDataSent(t testing.TB) dataSent {
	t.Helper()
	d, err := readDataSent()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func partitionInNetns(t *testing.T, bin string) {
	leakcheck.Check(t)
	// Refuse to touch a network that is not this test's own namespace.
	ifs, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(ifs) != 1 || ifs[0].Name != "lo" {
		t.Fatalf("%s is set, but this is not a fresh network namespace (interfaces %v): refusing to change the network", partitionEnv, ifs)
	}
	sh(t, "", "ip", "link", "set", "lo", "up")
	for i := range 3 {
		sh(t, "", "ip", "addr", "add", partitionIP(i)+"/32", "dev", "lo")
	}
	sh(t, captureRules, "nft", "-f", "-")

	big := make([]byte, 24<<20) // lock-step at 512 bytes: several seconds
	rand.Read(big)
	small := make([]byte, 256<<10)
	rand.Read(small)
	c := startClusterWith(t, bin, map[string][]byte{"big.bin": big, "small.bin": small}, clusterLayout{
		listen:  "127.0.0.1:6969", // the shared "VIP": one socket at a time on one host
		raft:    func(i int) string { return partitionIP(i) + ":7000" },
		http:    func(i int) string { return partitionIP(i) + ":8000" },
		metrics: func(i int) string { return fmt.Sprintf("127.0.0.1:%d", 9101+i) }, // not cut
		gid:     func(i int) int { return 7701 + i },                               // captureRules
	})
	c.waitAgreement(c.nodes)
	old := c.waitLeader(10 * time.Second)
	oldIdx := indexOf(c.nodes, old)
	sc := newScraper(c.nodes)
	defer sc.close()
	c.waitFor("the leader serving TFTP, every node's metrics", func() bool {
		for i := range c.nodes {
			if s := sc.scrape(i); !s.ok || i == oldIdx && (!s.readPresent || s.leaderships < 1) {
				return false
			}
		}
		return true
	})
	const cutAtSize = 8 << 20
	t.Logf("leader %s (raft %s); cutting %s at %d MiB of %d", old.id, old.raft, partitionIP(oldIdx), cutAtSize>>20, len(big)>>20)

	sc.start(10 * time.Millisecond)
	var began, cutStart, cutAt time.Time
	var cutRound int
	// The DATA packets each node sent: at the cut, and as soon as the
	// polls show the old leader's port released.
	type readings struct {
		atCut, atRelease dataSent
		err              error
	}
	captured := make(chan readings, 1)
	got, pause := download(t, c.listen, "big.bin", "octet", func(size int64) bool {
		if began.IsZero() {
			began = time.Now()
		}
		if size < cutAtSize {
			return false
		}
		cutStart = time.Now()
		sh(t, fmt.Sprintf(cutRules, partitionIP(oldIdx)), "nft", "-f", "-")
		cutAt = time.Now()
		cutRound = sc.rounds() // every round from here on starts after the cut
		go func() {
			var r readings
			defer func() { captured <- r }()
			if r.atCut, r.err = readDataSent(); r.err != nil {
				return
			}
			for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
				select {
				case <-sc.done:
					r.err = errors.New("the polls ended before they showed the old leader's port released")
					return
				default:
				}
				if s, ok := sc.latest(oldIdx); ok && s.ok && !s.readPresent {
					r.atRelease, r.err = readDataSent()
					return
				}
			}
			r.err = errors.New("the polls never showed the old leader's port released")
		}()
		return true
	})
	ended := time.Now()
	time.Sleep(50 * time.Millisecond) // a few rounds past the end
	rounds := sc.stop()
	atEnd := mustReadDataSent(t)
	rd := <-captured
	t.Logf("download: %d MiB in %v before the cut, the rest in %v", cutAtSize>>20,
		cutStart.Sub(began).Round(time.Millisecond), ended.Sub(cutAt).Round(time.Millisecond))
	if sha256.Sum256(got) != sha256.Sum256(big) {
		t.Fatalf("the download arrived with %d bytes and another digest", len(got))
	}
	if old.exited() {
		t.Fatalf("the old leader's process exited during the partition:\n%s", tail(old.log.String(), 4000))
	}
	var others []*clusterNode
	for _, n := range c.nodes {
		if n != old {
			others = append(others, n)
		}
	}
	if id := c.waitAgreement(others); id == old.id {
		t.Fatalf("the connected nodes still follow the cut leader %s", old.id)
	}

	// The capture: who acknowledged bytes when.
	tl := analyze(t, rounds, cutRound, oldIdx)
	nw := c.nodes[tl.newIdx]
	if tl.binds > 1 {
		t.Logf("leadership moved %d times among the connected nodes during the partition (not a split brain); their raft logs, but for the cut node:", tl.binds)
		for _, n := range others {
			var keep []string
			for _, l := range strings.Split(grepLines(n.log.String(), "raft:", `msg="cluster: leadership`), "\n") {
				if !strings.Contains(l, partitionIP(oldIdx)+":") && !strings.Contains(l, "server-id="+old.id) {
					keep = append(keep, l)
				}
			}
			t.Logf("%s:\n%s", n.id, strings.Join(keep, "\n"))
		}
	}

	// The packets: who sent DATA when.
	if rd.err != nil {
		t.Fatal(rd.err)
	}
	cut, rel := rd.atCut, rd.atRelease
	if cut.n[oldIdx] == 0 || cut.others(oldIdx) != 0 {
		t.Fatalf("DATA sent by node 1, 2, 3 at the cut: %v; want only the leader's (node %d): the capture does not work", cut.n, oldIdx+1)
	}
	if atEnd.n[oldIdx] != rel.n[oldIdx] {
		t.Errorf("split brain: the old leader sent %d DATA packets after its port was released", atEnd.n[oldIdx]-rel.n[oldIdx])
	}
	if atEnd.others(oldIdx) == 0 {
		t.Errorf("DATA sent by node 1, 2, 3 at the end of the download: %v; the connected nodes sent none", atEnd.n)
	}
	// Read before any connected node can have bound (none had by the start
	// of the last poll that found them all unbound), they sent nothing.
	if nb := tl.newBoundRound; rel.end.Before(rounds[nb-1].start) {
		if rel.others(oldIdx) != 0 {
			t.Errorf("split brain: DATA sent by node 1, 2, 3 when the old leader had released the port and no other node had bound it: %v", rel.n)
		}
	} else {
		t.Logf("the reading at the release came after the new leader bound: the DATA it sent before binding not checked")
	}
	t.Logf("DATA packets sent by node 1, 2, 3: at the cut %v, at the release %v (read %v after the cut), at the end %v",
		cut.n, rel.n, rel.end.Sub(cutAt).Round(time.Millisecond), atEnd.n)

	// The logs: the old leader released the port before the new one served.
	checkServingIntervals(t, c.nodes)
	released := logTime(t, old, cutStart, `msg="cluster: TFTP port released"`)
	steppedDown := logTime(t, old, cutStart, `msg="cluster: leadership changed"`, "leader=false")
	elected := logTime(t, nw, cutStart, `msg="cluster: leadership changed"`, "leader=true")
	serving := logTime(t, nw, cutStart, `msg="cluster: serving TFTP"`)
	if serving.Before(released) {
		t.Errorf("split brain: %s logged serving TFTP at %s, before %s released the port at %s",
			nw.id, serving.Format(time.StampMilli), old.id, released.Format(time.StampMilli))
	}
	// On one host the port itself keeps a second server out; across hosts
	// (the address moving with a VIP) nothing would. So the port must have
	// been free when the new leader first tried to bind it.
	for _, n := range others {
		if ts := logTimes(t, n, cutStart, `msg="cluster: bind the TFTP port; retrying"`); len(ts) > 0 {
			t.Errorf("split brain but for the port: %s tried to bind the TFTP port at %s while another node held it (%s released it at %s)",
				n.id, ts[0].Format(time.StampMilli), old.id, released.Format(time.StampMilli))
		}
	}
	ms := func(at time.Time) string { return fmt.Sprintf("%+d ms", at.Sub(cutAt).Milliseconds()) }
	t.Logf("cut: nft took %v; times below are from its end", cutAt.Sub(cutStart).Round(time.Millisecond))
	t.Logf("timeline (logs, ms resolution): %s steps down %s, releases the port %s; %s is elected %s, serves TFTP %s",
		old.id, ms(steppedDown), ms(released), nw.id, ms(elected), ms(serving))
	t.Logf("timeline (%d polls, %v apart at median): %s's last acknowledged byte %s, its counter gone %s; %s bound %s, its first acknowledged byte %s; longest pause seen by the client %v",
		len(rounds), tl.interval, old.id, ms(tl.oldLastInc), ms(tl.oldGone), nw.id, ms(tl.newBound), ms(tl.newFirstInc), pause.Round(time.Millisecond))
	fmt.Printf("cluster partition: %s released the port %s, %s serving %s (bound by %s), client pause %v\n",
		old.id, ms(released), nw.id, ms(serving), ms(tl.newBound), pause.Round(time.Millisecond))
	for _, n := range c.nodes {
		t.Logf("log of %s:\n%s", n.id, grepLines(n.log.String(), `msg="cluster: leadership`, `msg="cluster: TFTP`, `msg="cluster: serving`, `msg="tftp: res`))
	}

	// Heal: the old leader rejoins as a follower.
	sh(t, "", "nft", "delete", "table", "inet", "partition")
	healed := time.Now()
	leader := c.waitAgreement(c.nodes)
	if leader == old.id {
		t.Fatalf("after the heal the cut node %s leads again; it must rejoin as a follower", old.id)
	}
	if st, err := c.status(old); err != nil || st.State != "Follower" {
		t.Fatalf("after the heal %s is %q (%v), want Follower", old.id, st.State, err)
	}
	t.Logf("healed: %s follows %s after %v", old.id, leader, time.Since(healed).Round(time.Millisecond))
	if s := sc.scrape(oldIdx); !s.ok || s.readPresent {
		t.Fatalf("after the heal the old leader %s serves TFTP (scrape ok=%v)", old.id, s.ok)
	}
	got, _ = download(t, c.listen, "small.bin", "octet", func(int64) bool { return false })
	if sha256.Sum256(got) != sha256.Sum256(small) {
		t.Fatalf("the download after the heal arrived with %d bytes and another digest", len(got))
	}
	after := mustReadDataSent(t)
	if after.n[oldIdx] != atEnd.n[oldIdx] || after.others(oldIdx) < atEnd.others(oldIdx)+uint64(len(small)/512) {
		t.Errorf("DATA sent by node 1, 2, 3 for the download after the heal: %v (before it %v); want the leader's only, not the old one's",
			after.n, atEnd.n)
	}
	checkServingIntervals(t, c.nodes)
}

func indexOf(nodes []*clusterNode, n *clusterNode) int {
	for i, m := range nodes {
		if m == n {
			return i
		}
	}
	return -1
}

// waitAgreement waits until every node of nodes reports the same leader,
// exactly one of them (or none, when the leader is outside nodes) in state
// Leader, and three voters; it returns the leader's ID.
func (c *testCluster) waitAgreement(nodes []*clusterNode) string {
	c.t.Helper()
	var leader string
	c.waitFor("the nodes to agree on one leader and three voters", func() bool {
		leader = ""
		leaders := 0
		for i, n := range nodes {
			st, err := c.status(n)
			if err != nil || st.Leader == "" || len(st.Voters) != 3 || i > 0 && st.Leader != leader {
				return false
			}
			leader = st.Leader
			if st.State == "Leader" {
				if st.Leader != n.id {
					return false
				}
				leaders++
			}
		}
		inside := false
		for _, n := range nodes {
			inside = inside || n.id == leader
		}
		return leaders == 1 || !inside && leaders == 0
	})
	return leader
}

// logTimes returns the times of the lines of n's log, at or after since,
// that contain every one of subs (slog's text format, millisecond
// timestamps).
func logTimes(t testing.TB, n *clusterNode, since time.Time, subs ...string) []time.Time {
	t.Helper()
	var ts []time.Time
lines:
	for _, l := range strings.Split(n.log.String(), "\n") {
		for _, sub := range subs {
			if !strings.Contains(l, sub) {
				continue lines
			}
		}
		if at := lineTime(t, n, l); !at.Before(since.Truncate(time.Millisecond)) {
			ts = append(ts, at)
		}
	}
	return ts
}

// logTime returns the first of logTimes; there must be one.
func logTime(t testing.TB, n *clusterNode, since time.Time, subs ...string) time.Time {
	t.Helper()
	if ts := logTimes(t, n, since, subs...); len(ts) > 0 {
		return ts[0]
	}
	t.Fatalf("%s never logged %q after %s; its log:\n%s", n.id, subs, since.Format(time.StampMilli),
		grepLines(tail(n.log.String(), 20000), "cluster:", "tftp:", "raft"))
	return time.Time{}
}

// sample is one node's metrics in one poll round.
type sample struct {
	ok          bool    // the scrape succeeded
	readPresent bool    // ioactor_tftp_bytes_total{op="read"} exists: a tftp.Server is registered
	read        float64 // its value: acknowledged download bytes
	leaderships float64 // ioactor_tftp_cluster_leaderships_total: times the node bound the port (always there)
}

// round is one poll of every node; the scrapes of a round run at once, and
// a round starts after the previous one ended.
type round struct {
	start, end time.Time
	s          []sample
}

// scraper polls every node's /metrics.
type scraper struct {
	nodes []*clusterNode
	cl    *http.Client
	tr    *http.Transport

	mu       sync.Mutex
	log      []round
	quit     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func newScraper(nodes []*clusterNode) *scraper {
	tr := &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 1}
	return &scraper{nodes: nodes, tr: tr, cl: &http.Client{Transport: tr, Timeout: 2 * time.Second}}
}

// scrapeNames asks /metrics for the two metrics the test reads (gathering
// still costs the node about 1.5 ms of CPU per scrape).
var scrapeNames = url.Values{"name[]": {"ioactor_tftp_bytes_total", "ioactor_tftp_cluster_leaderships_total"}}.Encode()

func (s *scraper) scrape(i int) sample {
	resp, err := s.cl.Get("http://" + s.nodes[i].metrics + "/metrics?" + scrapeNames)
	if err != nil {
		return sample{}
	}
	defer resp.Body.Close()
	var m sample
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		switch name {
		case `ioactor_tftp_bytes_total{op="read"}`:
			m.read, err = strconv.ParseFloat(v, 64)
			m.readPresent = err == nil
		case "ioactor_tftp_cluster_leaderships_total":
			m.leaderships, err = strconv.ParseFloat(v, 64)
			m.ok = err == nil // an answer without it is no answer
		}
	}
	m.ok = m.ok && sc.Err() == nil && resp.StatusCode == http.StatusOK
	return m
}

// start polls in rounds, every interval at most, until stop.
func (s *scraper) start(interval time.Duration) {
	s.quit, s.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s.done)
		for {
			r := round{start: time.Now(), s: make([]sample, len(s.nodes))}
			var wg sync.WaitGroup
			for i := range s.nodes {
				wg.Go(func() { r.s[i] = s.scrape(i) })
			}
			wg.Wait()
			r.end = time.Now()
			s.mu.Lock()
			s.log = append(s.log, r)
			s.mu.Unlock()
			select {
			case <-s.quit:
				return
			case <-time.After(time.Until(r.start.Add(interval))):
			}
		}
	}()
}

// latest returns node i's sample in the last round ended.
func (s *scraper) latest(i int) (sample, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.log) == 0 {
		return sample{}, false
	}
	return s.log[len(s.log)-1].s[i], true
}

// rounds returns the number of rounds begun so far; the next one starts
// after this call.
func (s *scraper) rounds() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.log) + 1 // a round may be in flight
}

// stop ends the polls (if started) and returns the rounds; it may be
// called again.
func (s *scraper) stop() []round {
	s.stopOnce.Do(func() {
		if s.quit != nil {
			close(s.quit)
			<-s.done
		}
	})
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log
}

// close stops the polls and closes the idle connections.
func (s *scraper) close() {
	s.stop()
	s.tr.CloseIdleConnections()
}

// checker is what the checks of the capture and the logs report to: the
// test, or a recorder in TestPartitionChecksCatchSplitBrain.
type checker interface {
	Helper()
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// timeline is what the capture shows, as times (a round's end: by then what
// it saw had happened).
type timeline struct {
	interval              time.Duration
	newIdx                int // the first connected node to bind the port
	newBoundRound         int // the first poll that saw it bound
	binds                 int // times connected nodes bound the port during the partition
	oldLastInc, oldGone   time.Time
	newBound, newFirstInc time.Time
}

// analyze checks the capture: no two nodes acknowledge bytes in one poll
// round; before the cut only the old leader serves; after it, the old
// leader's counter stops growing, then disappears for good (the port
// released) strictly before the round in which the new leader's first
// grows, and no later than the round that first saw the new leader bound.
func analyze(t checker, rounds []round, cutRound, oldIdx int) timeline {
	t.Helper()
	if cutRound < 2 || cutRound >= len(rounds) {
		t.Fatalf("the cut happened at poll round %d of %d: the capture does not cover it", cutRound, len(rounds))
	}
	var tl timeline
	var gaps []time.Duration
	for i := 1; i < len(rounds); i++ {
		gaps = append(gaps, rounds[i].start.Sub(rounds[i-1].start))
	}
	tl.interval = median(gaps)
	for i, r := range rounds {
		for j, s := range r.s {
			if !s.ok {
				t.Fatalf("poll round %d: the scrape of node %d failed (its metrics are on loopback, never cut)", i, j+1)
			}
		}
	}
	// active: node j acknowledged bytes since the previous round (a
	// server's counter starts at 0 when it binds).
	active := func(i, j int) bool {
		cur, prev := rounds[i].s[j], rounds[i-1].s[j]
		return cur.readPresent && cur.read > 0 && (!prev.readPresent || cur.read != prev.read)
	}
	for i := 1; i < len(rounds); i++ {
		var who []int
		for j := range rounds[i].s {
			if active(i, j) {
				who = append(who, j+1)
			}
		}
		if len(who) > 1 {
			t.Errorf("split brain: nodes %v acknowledged bytes in the same poll round %d", who, i)
		}
	}
	served := false
	for i := 1; i < cutRound; i++ {
		served = served || active(i, oldIdx)
		for j, s := range rounds[i].s {
			if j != oldIdx && s.readPresent {
				t.Fatalf("poll round %d, before the cut: node %d serves TFTP besides the leader", i, j+1)
			}
		}
	}
	if !served {
		t.Fatalf("before the cut the leader (node %d) acknowledged nothing (first poll %+v, last before the cut %+v): the capture misses the download",
			oldIdx+1, rounds[0].s[oldIdx], rounds[cutRound-1].s[oldIdx])
	}

	// The old leader: its last growth, and the round from which its counter
	// is gone for good.
	oldLast, oldGone := cutRound-1, -1
	for i := cutRound; i < len(rounds); i++ {
		cur := rounds[i].s[oldIdx]
		if active(i, oldIdx) {
			oldLast = i
		}
		switch {
		case !cur.readPresent && oldGone < 0:
			oldGone = i
		case cur.readPresent && oldGone >= 0:
			t.Fatalf("poll round %d: the cut old leader serves TFTP again (its counter is back, %.0f bytes)", i, cur.read)
		}
	}
	if oldGone < 0 {
		t.Fatalf("the cut old leader (node %d) never released the TFTP port (its counter stayed registered for %v after the cut)",
			oldIdx+1, rounds[len(rounds)-1].end.Sub(rounds[cutRound].start))
	}
	// The new leader: the first connected node to bind, and its first
	// growth.
	base := rounds[cutRound-1].s
	newBound := -1
	for i := cutRound; i < len(rounds) && newBound < 0; i++ {
		for j, s := range rounds[i].s {
			if j == oldIdx || s.leaderships <= base[j].leaderships {
				continue
			}
			if newBound >= 0 {
				t.Fatalf("poll round %d: nodes %d and %d both bound the TFTP port since the last round", i, tl.newIdx+1, j+1)
			}
			newBound, tl.newIdx = i, j
		}
	}
	if newBound < 0 {
		t.Fatalf("no connected node bound the TFTP port after the cut")
	}
	newFirst := -1
	for i := newBound; i < len(rounds) && newFirst < 0; i++ {
		if active(i, tl.newIdx) {
			newFirst = i
		}
	}
	if newFirst < 0 {
		t.Fatalf("the new leader (node %d) bound the port but acknowledged nothing", tl.newIdx+1)
	}
	for j, s := range rounds[len(rounds)-1].s {
		if j != oldIdx {
			tl.binds += int(s.leaderships - base[j].leaderships)
		}
	}
	if oldLast >= newFirst {
		t.Errorf("split brain: the old leader's counter grew until poll round %d, the new leader's from round %d", oldLast, newFirst)
	}
	if oldGone > newBound {
		t.Errorf("split brain: the new leader had bound the port by poll round %d, the old one's counter was still there until round %d", newBound, oldGone)
	}
	tl.newBoundRound = newBound
	tl.oldLastInc, tl.oldGone = rounds[oldLast].end, rounds[oldGone].end
	tl.newBound, tl.newFirstInc = rounds[newBound].end, rounds[newFirst].end
	return tl
}

// checkServingIntervals checks, in the logs of every node, that each
// "serving TFTP" comes no earlier than the previous server's "TFTP port
// released" (millisecond timestamps): the nodes' serving intervals do not
// overlap.
func checkServingIntervals(t checker, nodes []*clusterNode) {
	t.Helper()
	type interval struct {
		id         string
		start, end time.Time
	}
	var ivs []interval
	forever := time.Now().Add(time.Hour)
	for _, n := range nodes {
		var open *interval
		for _, l := range strings.Split(n.log.String(), "\n") {
			switch {
			case strings.Contains(l, `msg="cluster: serving TFTP"`):
				if open != nil {
					t.Errorf("%s logged serving TFTP twice without releasing the port in between", n.id)
				}
				open = &interval{id: n.id, start: lineTime(t, n, l), end: forever}
			case strings.Contains(l, `msg="cluster: TFTP port released"`):
				if open == nil {
					t.Errorf("%s logged releasing a port it had not bound", n.id)
					continue
				}
				open.end = lineTime(t, n, l)
				ivs = append(ivs, *open)
				open = nil
			}
		}
		if open != nil {
			ivs = append(ivs, *open)
		}
	}
	slices.SortFunc(ivs, func(a, b interval) int { return a.start.Compare(b.start) })
	for k := 1; k < len(ivs); k++ {
		if p, c := ivs[k-1], ivs[k]; c.start.Before(p.end) {
			t.Errorf("split brain: %s logged serving TFTP at %s, before %s released the port (at %s)",
				c.id, c.start.Format(time.StampMilli), p.id, p.end.Format(time.StampMilli))
		}
	}
}

// lineTime reads the time of a log line of n (slog's text format).
func lineTime(t checker, n *clusterNode, l string) time.Time {
	t.Helper()
	f, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
	at, err := time.Parse(time.RFC3339Nano, f)
	if err != nil {
		t.Fatalf("%s: cannot read the time of %q: %v", n.id, l, err)
	}
	return at
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// recorder is a checker that keeps what it is told; Fatalf stops the check
// (run recovers).
type recorder struct{ msgs []string }

func (r *recorder) Helper() {}
func (r *recorder) Errorf(format string, args ...any) {
	r.msgs = append(r.msgs, fmt.Sprintf(format, args...))
}
func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	panic(r)
}

func (r *recorder) run(f func()) (msgs []string) {
	defer func() {
		if p := recover(); p != nil && p != r {
			panic(p)
		}
		msgs = r.msgs
	}()
	f()
	return nil
}

// synthRounds builds poll rounds 10 ms apart from each node's acknowledged
// bytes (-1: the counter is absent) and leaderships, round by round.
func synthRounds(reads, leads [3][]float64) []round {
	t0 := time.Now()
	var rs []round
	for i := range reads[0] {
		r := round{start: t0.Add(time.Duration(i) * 10 * time.Millisecond), s: make([]sample, 3)}
		r.end = r.start.Add(2 * time.Millisecond)
		for j := range 3 {
			r.s[j] = sample{ok: true, readPresent: reads[j][i] >= 0, read: max(reads[j][i], 0), leaderships: leads[j][i]}
		}
		rs = append(rs, r)
	}
	return rs
}

// The checks of TestClusterPartition fail on a split brain: fed a capture
// or logs in which two nodes serve at once, they report it.
func TestPartitionChecksCatchSplitBrain(t *testing.T) {
	absent := []float64{-1, -1, -1, -1, -1, -1, -1, -1, -1, -1}
	zero := []float64{0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	one := []float64{1, 1, 1, 1, 1, 1, 1, 1, 1, 1}
	cases := []struct {
		name  string
		reads [3][]float64
		leads [3][]float64
		want  string // in a report; empty: none
	}{
		{"clean handover",
			[3][]float64{{0, 100, 200, 300, 350, -1, -1, -1, -1, -1}, {-1, -1, -1, -1, -1, -1, 0, 0, 50, 100}, absent},
			[3][]float64{one, {0, 0, 0, 0, 0, 0, 1, 1, 1, 1}, zero}, ""},
		{"both acknowledge in one round",
			[3][]float64{{0, 100, 200, 300, 350, 400, 450, -1, -1, -1}, {-1, -1, -1, -1, -1, 0, 50, 100, 150, 200}, absent},
			[3][]float64{one, {0, 0, 0, 0, 0, 1, 1, 1, 1, 1}, zero}, "split brain: nodes [1 2] acknowledged bytes in the same poll round 6"},
		{"new binds while the old still serves",
			[3][]float64{{0, 100, 200, 300, 350, 350, 350, -1, -1, -1}, {-1, -1, -1, -1, -1, 0, 0, 0, 50, 100}, absent},
			[3][]float64{one, {0, 0, 0, 0, 0, 1, 1, 1, 1, 1}, zero}, "split brain: the new leader had bound the port by poll round 5"},
		{"quick handover: gone and bound in one round",
			[3][]float64{{0, 100, 200, 300, -1, -1, -1, -1, -1, -1}, {-1, -1, -1, -1, 0, 50, 50, 60, 70, 80}, absent},
			[3][]float64{one, {0, 0, 0, 0, 1, 1, 1, 1, 1, 1}, zero}, ""},
		{"old never releases",
			[3][]float64{{0, 100, 200, 300, 400, 500, 600, 700, 800, 900}, absent, absent},
			[3][]float64{one, zero, zero}, "never released the TFTP port"},
		{"old serves again",
			[3][]float64{{0, 100, 200, 300, -1, -1, 0, 10, -1, -1}, {-1, -1, -1, -1, -1, 0, -1, -1, -1, -1}, absent},
			[3][]float64{one, {0, 0, 0, 0, 0, 1, 1, 1, 1, 1}, zero}, "serves TFTP again"},
		{"third node serves before the cut",
			[3][]float64{{0, 100, 200, 300, -1, -1, -1, -1, -1, -1}, {-1, -1, -1, -1, 0, 50, 60, 70, 80, 90}, {-1, 0, -1, -1, -1, -1, -1, -1, -1, -1}},
			[3][]float64{one, {0, 0, 0, 0, 1, 1, 1, 1, 1, 1}, zero}, "node 3 serves TFTP besides the leader"},
	}
	for _, tc := range cases {
		r := &recorder{}
		msgs := r.run(func() { analyze(r, synthRounds(tc.reads, tc.leads), 3, 0) })
		got := strings.Join(msgs, "\n")
		switch {
		case tc.want == "" && got != "":
			t.Errorf("%s: reported %q, want nothing", tc.name, got)
		case tc.want != "" && !strings.Contains(got, tc.want):
			t.Errorf("%s: reported %q, want %q", tc.name, got, tc.want)
		}
	}

	// The logs: n2 serves before n1 released the port.
	logs := map[string]string{
		"n1": `time=2026-01-01T10:00:00.000Z level=INFO msg="cluster: serving TFTP" node=n1
time=2026-01-01T10:00:05.300Z level=INFO msg="cluster: TFTP port released" node=n1`,
		"n2": `time=2026-01-01T10:00:05.200Z level=INFO msg="cluster: serving TFTP" node=n2`,
		"n3": ``,
	}
	var nodes []*clusterNode
	for _, id := range []string{"n1", "n2", "n3"} {
		n := &clusterNode{id: id, log: &testutil.SyncBuffer{}}
		n.log.Write([]byte(logs[id]))
		nodes = append(nodes, n)
	}
	r := &recorder{}
	if got := strings.Join(r.run(func() { checkServingIntervals(r, nodes) }), "\n"); !strings.Contains(got, "split brain: n2 logged serving TFTP") {
		t.Errorf("overlapping serving intervals in the logs: reported %q, want a split brain", got)
	}
	nodes[1].log = &testutil.SyncBuffer{}
	nodes[1].log.Write([]byte(`time=2026-01-01T10:00:05.300Z level=INFO msg="cluster: serving TFTP" node=n2`))
	r = &recorder{}
	if got := r.run(func() { checkServingIntervals(r, nodes) }); len(got) > 0 {
		t.Errorf("ordered serving intervals in the logs: reported %q, want nothing", got)
	}
}
