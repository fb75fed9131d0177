package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/clustertls"
	"github.com/ioactor/ioactor/internal/testutil"
)

// clusterNode is one tftpd -cluster process the test started.
type clusterNode struct {
	id, raft, http, root, data string
	certs                      string        // -cluster-tls; empty: -cluster-insecure
	metrics                    string        // -metrics-listen; empty: none
	gid                        int           // the process's group ID; 0: the test's
	netns                      string        // the network namespace it runs in (ip netns exec); empty: the test's
	extra                      []string      // more flags
	cmd                        *exec.Cmd     // nil once killed
	done                       chan struct{} // closed when the process has exited
	log                        *testutil.SyncBuffer
}

// exited reports whether the node's process has ended (killed or not).
func (n *clusterNode) exited() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

type testCluster struct {
	t      testing.TB
	bin    string
	listen string
	nodes  []*clusterNode
	client *http.Client // for /status: with a member's certificate when the cluster has them
	scheme string       // of the cluster HTTP endpoints
}

func freeTCP(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func freeUDP(t testing.TB) string {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// buildTftpd builds this command once per test binary run.
func buildTftpd(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tftpd")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startCluster starts three nodes serving copies of files, on free ports of
// 127.0.0.1.
func startCluster(t testing.TB, bin string, files map[string][]byte, allowWrite bool) *testCluster {
	t.Helper()
	// TFTPD_CLUSTER_INSECURE=1 runs them without TLS, to compare (the
	// failover pauses, say).
	return startClusterWith(t, bin, files, clusterLayout{allowWrite: allowWrite, insecure: os.Getenv("TFTPD_CLUSTER_INSECURE") != ""})
}

// clusterLayout places the nodes of startClusterWith; zero fields mean
// free ports on 127.0.0.1 (and no metrics endpoint).
type clusterLayout struct {
	allowWrite bool
	// listen is the TFTP port every node binds while it leads.
	listen string
	// raft, http and metrics give node i's (from 0) -raft, -cluster-http
	// and -metrics-listen addresses.
	raft, http, metrics func(i int) string
	// gid gives node i's group ID (its user stays the test's), so that
	// nftables can tell its packets apart (meta skgid).
	gid func(i int) int
	// insecure runs the nodes with -cluster-insecure instead of
	// certificates made with tftpd cert.
	insecure bool
	// netns and extra give node i's network namespace and more flags
	// (see clusterNode).
	netns func(i int) string
	extra func(i int) []string
}

// makeCerts runs tftpd cert to make a CA in dir and a node directory per
// node; it returns an HTTP client with the first node's certificate.
func makeCerts(t testing.TB, bin, dir string, nodes []*clusterNode) *http.Client {
	t.Helper()
	ca := filepath.Join(dir, "ca")
	if out, err := exec.Command(bin, "cert", "ca", "-dir", ca).CombinedOutput(); err != nil {
		t.Fatalf("tftpd cert ca: %v\n%s", err, out)
	}
	for _, n := range nodes {
		n.certs = filepath.Join(dir, "certs-"+n.id)
		hosts := []string{"127.0.0.1"} // and the node's own IPs (the partition test gives each one)
		for _, a := range []string{n.raft, n.http} {
			if h, _, err := net.SplitHostPort(a); err == nil && h != "127.0.0.1" {
				hosts = append(hosts, h)
			}
		}
		if out, err := exec.Command(bin, "cert", "node", "-ca", ca, "-node-id", n.id, "-host", strings.Join(hosts, ","), "-dir", n.certs).CombinedOutput(); err != nil {
			t.Fatalf("tftpd cert node: %v\n%s", err, out)
		}
	}
	ident, err := clustertls.Load(nodes[0].certs)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{TLSClientConfig: ident.ClientConfig()}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: time.Second}
}

// startClusterWith starts three nodes serving copies of files, laid out as
// l says; node 0 bootstraps, the others join through it.
func startClusterWith(t testing.TB, bin string, files map[string][]byte, l clusterLayout) *testCluster {
	t.Helper()
	c := &testCluster{t: t, bin: bin, listen: l.listen, client: &http.Client{Timeout: time.Second}, scheme: "http://"}
	if c.listen == "" {
		c.listen = freeUDP(t)
	}
	addr := func(f func(int) string, i int) string {
		if f == nil {
			return freeTCP(t)
		}
		return f(i)
	}
	dir := t.TempDir()
	for i := range 3 {
		n := &clusterNode{id: fmt.Sprintf("n%d", i+1), raft: addr(l.raft, i), http: addr(l.http, i),
			root: filepath.Join(dir, fmt.Sprintf("root%d", i+1)), data: filepath.Join(dir, fmt.Sprintf("data%d", i+1))}
		if l.metrics != nil {
			n.metrics = l.metrics(i)
		}
		if l.gid != nil {
			n.gid = l.gid(i)
		}
		if l.netns != nil {
			n.netns = l.netns(i)
		}
		if l.extra != nil {
			n.extra = l.extra(i)
		}
		os.MkdirAll(n.root, 0o755)
		for name, b := range files {
			os.WriteFile(filepath.Join(n.root, name), b, 0o644)
		}
		c.nodes = append(c.nodes, n)
	}
	if !l.insecure {
		c.client, c.scheme = makeCerts(t, bin, dir, c.nodes), "https://"
	}
	for i, n := range c.nodes {
		join := ""
		if i > 0 {
			join = c.nodes[0].http
		}
		c.start(n, join, l.allowWrite)
		if i == 0 {
			c.waitLeader(10 * time.Second)
		}
	}
	c.waitFor("three voters", func() bool {
		st, err := c.status(c.nodes[0])
		return err == nil && len(st.Voters) == 3
	})
	t.Cleanup(func() {
		for _, n := range c.nodes {
			c.kill(n, syscall.SIGKILL)
		}
		if t.Failed() {
			for _, n := range c.nodes {
				t.Logf("log of %s:\n%s", n.id, tail(n.log.String(), 4000))
			}
		}
	})
	return c
}

// grepLines keeps the lines of s that contain one of subs.
func grepLines(s string, subs ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, sub := range subs {
			if strings.Contains(l, sub) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func (c *testCluster) start(n *clusterNode, join string, allowWrite bool) {
	args := []string{"-cluster", "-node-id", n.id, "-data", n.data, "-raft", n.raft, "-cluster-http", n.http,
		"-root", n.root, "-listen", c.listen}
	if n.certs != "" {
		args = append(args, "-cluster-tls", n.certs)
	} else {
		args = append(args, "-cluster-insecure")
	}
	if join != "" {
		args = append(args, "-join", join)
	}
	if allowWrite {
		args = append(args, "-allow-write")
	}
	if n.metrics != "" {
		args = append(args, "-metrics-listen", n.metrics)
	}
	args = append(args, n.extra...)
	n.log = &testutil.SyncBuffer{}
	cmd := exec.Command(c.bin, args...)
	if n.netns != "" {
		// ip netns exec execs the binary: the PID is the node's.
		cmd = exec.Command("ip", append([]string{"netns", "exec", n.netns, c.bin}, args...)...)
	}
	cmd.Stdout, cmd.Stderr = n.log, n.log
	// Should the test binary die without its cleanup, the node dies too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if n.gid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(n.gid), NoSetGroups: true}
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	n.cmd, n.done = cmd, done
}

// kill signals the node's process (started by this test, by its PID) and
// waits for it.
func (c *testCluster) kill(n *clusterNode, sig syscall.Signal) {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	n.cmd.Process.Signal(sig)
	select {
	case <-n.done:
	case <-time.After(15 * time.Second):
		n.cmd.Process.Kill()
		<-n.done
	}
	n.cmd = nil
}

type nodeStatus struct {
	State     string   `json:"state"`
	Term      uint64   `json:"term"`
	Leader    string   `json:"leader"`
	Voters    []string `json:"voters"`
	Transfers []struct {
		State struct{ Block uint64 } `json:"state"`
	} `json:"transfers"`
}

func (c *testCluster) status(n *clusterNode) (nodeStatus, error) {
	var st nodeStatus
	resp, err := c.client.Get(c.scheme + n.http + "/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func (c *testCluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLeader returns the node that leads, as the live nodes see it.
func (c *testCluster) waitLeader(d time.Duration) *clusterNode {
	c.t.Helper()
	var leader *clusterNode
	c.waitFor("a leader", func() bool {
		for _, n := range c.nodes {
			if n.cmd == nil {
				continue
			}
			if st, err := c.status(n); err == nil && st.State == "Leader" {
				leader = n
				return true
			}
		}
		return false
	})
	return leader
}

// download runs tftp-hpa (lock-step, 512-byte blocks, in mode) and calls
// at(size) as the file grows, so the test can act at a given offset; it
// returns the file and the longest pause in its growth.
func download(t testing.TB, server, name, mode string, at func(size int64) bool) ([]byte, time.Duration) {
	t.Helper()
	requireTool(t, "tftp")
	out := filepath.Join(t.TempDir(), "got")
	host, port, _ := net.SplitHostPort(server)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "tftp", "-l", "-m", mode, host, port, "-c", "get", name, out)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var last int64 = -1
	lastGrow := time.Now()
	var pause time.Duration
	fired := false
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil || strings.Contains(stderr.String(), "Error") {
				t.Fatalf("tftp get: %v: %s", err, stderr.String())
			}
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			return b, pause
		case now := <-tick.C:
			fi, err := os.Stat(out)
			if err != nil {
				continue
			}
			if fi.Size() != last {
				if fired && last >= 0 {
					pause = max(pause, now.Sub(lastGrow))
				}
				last, lastGrow = fi.Size(), now
			}
			if !fired && at(fi.Size()) {
				fired = true
				lastGrow = time.Now()
			}
		}
	}
}

// debianPackage names the Debian package of each tool the tests run.
var debianPackage = map[string]string{"tftp": "tftp-hpa", "curl": "curl", "unshare": "util-linux", "ip": "iproute2", "nft": "nftables"}

func requireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is not installed (Debian package %s; .ci/run installs it): %v", name, debianPackage[name], err)
	}
}

// A download survives the death of the leader serving it: five kills in a
// row (halfway, within the first blocks, and during the rollover past block
// 65535), each byte-identical, each pause printed; then two kills in one
// download (the resumed transfer's own checkpoints must be committed, or
// the second takeover starts from the first one's position); then a kill
// in a netascii download; then a graceful stop.
func TestClusterDownloadSurvivesLeaderDeath(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three processes and moves 200 MiB; not in -short")
	}
	bin := buildTftpd(t)
	file := make([]byte, 40<<20) // 81920 blocks of 512: crosses 65535
	rand.Read(file)
	// A text with bare CRs and LFs, which netascii converts (the checkpoint
	// carries the converter's state).
	text := bytes.Repeat([]byte("a line\nCR LF\r\nbare\rcr\n"), 8<<20/24)
	c := startCluster(t, bin, map[string][]byte{"big.bin": file, "text.txt": text}, false)
	cases := []struct {
		name  string
		at    int64
		sig   syscall.Signal
		twice bool
		text  bool // netascii
	}{
		{"halfway", 20 << 20, syscall.SIGKILL, false, false},
		{"first-10-blocks", 5 * 512, syscall.SIGKILL, false, false},
		{"rollover", 65530 * 512, syscall.SIGKILL, false, false},
		{"halfway-again", 20 << 20, syscall.SIGKILL, false, false},
		{"early", 2 << 20, syscall.SIGKILL, false, false},
		{"twice", 8 << 20, syscall.SIGKILL, true, false},
		{"netascii", 4 << 20, syscall.SIGKILL, false, true},
		{"graceful", 20 << 20, syscall.SIGTERM, false, false},
	}
	for _, tc := range cases {
		leader := c.waitLeader(20 * time.Second)
		killed := make(chan error, 1)
		var second *clusterNode
		name, mode, want := "big.bin", "octet", file
		if tc.text {
			name, mode, want = "text.txt", "netascii", text
		}
		got, pause := download(t, c.listen, name, mode, func(size int64) bool {
			if size < tc.at {
				return false
			}
			go func() {
				c.kill(leader, tc.sig)
				var err error
				if tc.twice {
					// Three nodes again (the killed one rejoins), then
					// kill the one that took over.
					c.start(leader, "", false)
					second, err = c.killResumer(size / 512)
				}
				killed <- err
			}()
			return true
		})
		if err := <-killed; err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: the file arrived with %d bytes and another digest", tc.name, len(got))
		}
		t.Logf("%s (%v of %s at %d bytes): byte-identical; longest pause %v", tc.name, tc.sig, leader.id, tc.at, pause)
		fmt.Printf("cluster failover %-16s %-8v pause %v\n", tc.name, tc.sig, pause.Round(time.Millisecond))
		// Bring the node back: it rejoins from its data directory.
		if second != nil {
			leader = second
		}
		c.start(leader, "", false)
	}
}

// killResumer waits for the node that took over a download from a killed
// leader, waits until that node has committed checkpoints of its own
// (block beyond past+2048, past being about where the client was at the
// first kill), and kills it too.
func (c *testCluster) killResumer(past int64) (*clusterNode, error) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		for _, n := range c.nodes {
			if n.cmd == nil || n.exited() {
				continue
			}
			st, err := c.status(n)
			if err != nil || st.State != "Leader" || len(st.Transfers) != 1 || st.Transfers[0].State.Block < uint64(past)+2048 {
				continue
			}
			c.kill(n, syscall.SIGKILL)
			return n, nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil, fmt.Errorf("no new leader committed a checkpoint 2048 blocks past block %d of the first takeover", past)
}

// An upload interrupted by the leader's death either completes,
// byte-identical on every node, or fails visibly, with no file anywhere.
func TestClusterUploadInterruptedByLeaderDeath(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three processes; not in -short")
	}
	requireTool(t, "curl")
	bin := buildTftpd(t)
	c := startCluster(t, bin, nil, true)
	leader := c.waitLeader(20 * time.Second)
	data := make([]byte, 8<<20)
	rand.Read(data)
	src := filepath.Join(t.TempDir(), "up.bin")
	os.WriteFile(src, data, 0o644)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "curl", "-sS", "--max-time", "20", "-T", src, "tftp://"+c.listen+"/up.bin")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // part of the file is acknowledged
	c.kill(leader, syscall.SIGKILL)
	err := cmd.Wait()
	c.waitLeader(20 * time.Second)
	if err != nil {
		time.Sleep(time.Second) // a file that should not be would appear as the survivors apply
	}
	for _, n := range c.nodes {
		if n == leader {
			continue
		}
		got, rerr := os.ReadFile(filepath.Join(n.root, "up.bin"))
		// A success means the upload committed on a quorum, which may
		// have been the dead leader and one survivor: the other gets it
		// from the new leader, 8 MiB of log entries later (seconds under
		// -race on a loaded machine).
		for deadline := time.Now().Add(20 * time.Second); err == nil && !bytes.Equal(got, data) && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
			got, rerr = os.ReadFile(filepath.Join(n.root, "up.bin"))
		}
		switch {
		case err == nil && (rerr != nil || !bytes.Equal(got, data)):
			t.Fatalf("curl reported success, but 20 s after a new leader %s has %d bytes (%v)", n.id, len(got), rerr)
		case err != nil && rerr == nil:
			t.Fatalf("curl failed (%v), but %s has a file of %d bytes", err, n.id, len(got))
		}
		ents, _ := os.ReadDir(n.root)
		for _, e := range ents {
			if strings.Contains(e.Name(), "tftp-upload") && err != nil {
				t.Logf("%s keeps a temporary file %s (removed on the next start)", n.id, e.Name())
			}
		}
	}
	t.Logf("curl: err=%v output=%q", err, out.String())
}

// BenchmarkClusterFailover kills the leader 20 times during a download (and
// stops it gracefully 20 times) and reports the median and longest pause
// the client saw (BenchmarkClusterThroughput measures the cost of
// replication). Run: go test -run '^$' -bench ClusterFailover -benchtime 1x ./cmd/tftpd/
func BenchmarkClusterFailover(b *testing.B) {
	bin := buildTftpd(b)
	file := make([]byte, 16<<20)
	rand.Read(file)
	want := sha256.Sum256(file)
	c := startCluster(b, bin, map[string][]byte{"f.bin": file}, false)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		var pauses []time.Duration
		for range 20 {
			leader := c.waitLeader(20 * time.Second)
			killed := make(chan struct{})
			got, pause := download(b, c.listen, "f.bin", "octet", func(size int64) bool {
				if size < 8<<20 {
					return false
				}
				go func() { c.kill(leader, sig); close(killed) }()
				return true
			})
			<-killed
			if sha256.Sum256(got) != want {
				b.Fatal("the file arrived corrupted")
			}
			pauses = append(pauses, pause)
			if pause > 2*time.Second {
				for _, n := range c.nodes {
					if n.log != nil {
						fmt.Printf("--- long pause %v; log of %s:\n%s\n", pause, n.id, grepLines(tail(n.log.String(), 20000), "cluster:", "tftp:"))
					}
				}
			}
			c.start(leader, "", false)
		}
		slices.Sort(pauses)
		name := map[syscall.Signal]string{syscall.SIGKILL: "sigkill", syscall.SIGTERM: "sigterm"}[sig]
		b.ReportMetric(float64(pauses[len(pauses)/2].Milliseconds()), name+"-median-ms")
		b.ReportMetric(float64(pauses[len(pauses)-1].Milliseconds()), name+"-max-ms")
		fmt.Printf("failover %s over %d: median %v, max %v\n", name, len(pauses), pauses[len(pauses)/2], pauses[len(pauses)-1])
	}
}
