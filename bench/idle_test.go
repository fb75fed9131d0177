package bench

// BenchmarkIdleCluster: what a replicated TFTP cluster costs at rest. Three
// cluster nodes on loopback, no transfer at all; each node's CPU
// (utime+stime from /proc/PID/stat) over a window, as a percentage of one
// core. Three clusters (-idle.impls picks): "tftpd", three `tftpd -cluster`
// processes; "ioactor" and "net", three processes of this test binary as
// nodes (runIdleNode: the same cluster.StartNode and cluster.Serve) on this
// module's transport and on raft's NetworkTransport, which tells raft's
// own cost at rest from the transport's. Each round runs each cluster once,
// in a rotating order:
//
//	go test -run '^$' -bench IdleCluster -benchtime 1x ./bench/                # 60 s window each
//	go test -run '^$' -bench IdleCluster -benchtime 1x ./bench/ -args -idle.window 20s -idle.impls 'ioactor|net' -idle.rounds 3
//	go test -run '^$' -bench IdleCluster -benchtime 1x ./bench/ -args -idle.impls 'ioactor|net' -idle.commit-timeout 50ms  # raft's default
//
// The aim is ≤ 1 % of a core per node; raft's own work (a heartbeat to each
// follower every 30–60 ms with -cluster's timers, an empty append every
// 0.5–1 s, tftp/cluster's CommitTimeout, the leader's lease check every
// 150 ms) is the floor. Besides CPU it prints, per node and per second, the
// threads' context switches (voluntary + involuntary, summed over
// /proc/PID/task/*/status: each is a thread going to sleep or being
// preempted, so about one per thread wake-up) and the read- and
// write-family system calls (syscr + syscw of /proc/PID/io), both over the
// same window; with strace in PATH it then counts every system call of
// each node for -idle.strace (10 s; strace slows what it traces, so the
// counts are an upper bound). The test binary's nodes also link gnet
// (the echo benchmarks'), whose ants pool wakes ~2 times a second.
// scripts/idle-cluster.sh does the CPU part from a shell and can add
// strace -c of the leader.

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	idleWindow  = flag.Duration("idle.window", 60*time.Second, "BenchmarkIdleCluster: the idle window measured")
	idleStrace  = flag.Duration("idle.strace", 10*time.Second, "BenchmarkIdleCluster: strace -c -f each node this long after the window, if strace is in PATH (0: never)")
	idleImplsRE = flag.String("idle.impls", "", "BenchmarkIdleCluster: a regexp; only the clusters whose name (tftpd, ioactor, net) it matches")
	idleCommit  = flag.Duration("idle.commit-timeout", 0, "BenchmarkIdleCluster: raft's CommitTimeout for the ioactor and net clusters (0: tftp/cluster's)")
	idleRounds  = flag.Int("idle.rounds", 1, "BenchmarkIdleCluster: rounds, each running every cluster once in a rotating order")
)

// freePort returns a loopback port that was free a moment ago.
func freePort(tb testing.TB, network string) int {
	tb.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// cpuTicks returns a process's utime+stime in clock ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces: count from its ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	return u + s, nil
}

// procCounters returns a process's context switches (all its threads') and
// read- and write-family system calls, from /proc.
func procCounters(pid int) (ctxsw, rw int64, err error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // a thread that ended
		}
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "voluntary_ctxt_switches") {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				ctxsw += n
			}
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return ctxsw, 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && (k == "syscr" || k == "syscw") {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			rw += n
		}
	}
	return ctxsw, rw, nil
}

// straceCount counts a process's system calls for d with strace -c -f;
// ok is false when strace is missing or failed.
func straceCount(pid int, d time.Duration, out string) (calls int64, ok bool) {
	path, err := exec.LookPath("strace")
	if err != nil || d <= 0 {
		return 0, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "-c", "-f", "-o", out, "-p", strconv.Itoa(pid))
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Run() // ends by the interrupt
	b, err := os.ReadFile(out)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && f[len(f)-1] == "total" {
			n, err := strconv.ParseInt(f[3], 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

type idleNode struct {
	id   string
	http string
	cmd  *exec.Cmd
}

// idleImpls are the clusters BenchmarkIdleCluster can run: the tftpd
// binary (this module's transport), and this test binary as a node
// (runIdleNode: the same cluster.StartNode and cluster.Serve) on this
// module's transport or on raft's NetworkTransport, which tells raft's own
// cost at rest from the transport's.
var idleImpls = []string{"tftpd", "ioactor", "net"}

// idleStats is one node's counters over the window.
type idleStats struct {
	leader     bool
	pct        float64 // of a core
	ctxsw, rws float64 // per second
	strace     float64 // system calls per second under strace, 0: not counted
}

func BenchmarkIdleCluster(b *testing.B) {
	if runtime.GOOS != "linux" {
		b.Skip("reads /proc")
	}
	re, err := regexp.Compile(*idleImplsRE)
	if err != nil {
		b.Fatal(err)
	}
	impls := slices.DeleteFunc(slices.Clone(idleImpls), func(s string) bool { return !re.MatchString(s) })
	if len(impls) == 0 {
		b.Fatalf("-idle.impls %q matches none of %v", *idleImplsRE, idleImpls)
	}
	dir := b.TempDir()
	bins := map[string]string{"ioactor": os.Args[0], "net": os.Args[0]}
	if slices.Contains(impls, "tftpd") {
		bins["tftpd"] = filepath.Join(dir, "tftpd")
		build := exec.Command("go", "build", "-o", bins["tftpd"], "github.com/ioactor/ioactor/cmd/tftpd")
		if out, err := build.CombinedOutput(); err != nil {
			b.Fatalf("go build: %v\n%s", err, out)
		}
	}
	leaderPct := map[string][]float64{}
	followerPct := map[string][]float64{}
	b.ResetTimer()
	for r := 0; r < *idleRounds; r++ {
		for k := range impls {
			im := impls[(k+r)%len(impls)]
			stats := runIdleCluster(b, filepath.Join(dir, fmt.Sprintf("%s-%d", im, r)), im, bins[im])
			worst := 0.0
			for i, st := range stats {
				role := "follower"
				if st.leader {
					role = "leader"
					leaderPct[im] = append(leaderPct[im], st.pct)
				} else {
					worst = max(worst, st.pct)
				}
				line := fmt.Sprintf("idle cluster: round %d %s n%d (%s): %.2f %% of a core over %v, %.0f context switches/s, %.0f read+write syscalls/s",
					r+1, im, i+1, role, st.pct, *idleWindow, st.ctxsw, st.rws)
				if st.strace > 0 {
					line += fmt.Sprintf(", %.0f system calls/s under strace -c -f for %v", st.strace, *idleStrace)
				}
				fmt.Println(line)
			}
			followerPct[im] = append(followerPct[im], worst)
		}
	}
	b.StopTimer()
	for _, im := range impls {
		l, f := median(leaderPct[im]), median(followerPct[im])
		fmt.Printf("idle cluster: %s: leader %.2f %% of a core, busiest follower %.2f %% (medians of %d rounds)", im, l, f, *idleRounds)
		if n := median(leaderPct["net"]); im != "net" && n > 0 {
			fmt.Printf("; leader %.2fx net's", l/n)
		}
		fmt.Println()
		b.ReportMetric(l, "leader-%core/"+im)
		b.ReportMetric(f, "follower-%core/"+im)
	}
	b.ReportMetric(0, "ns/op")
}

// runIdleCluster starts three nodes of impl in dir, waits until the
// cluster settled, measures each node over the idle window (then, with
// strace, each node's system calls for -idle.strace), and stops them.
func runIdleCluster(b *testing.B, dir, impl, bin string) []idleStats {
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(b, "udp"))
	var nodes []*idleNode
	defer func() {
		for _, n := range nodes {
			n.cmd.Process.Kill()
			n.cmd.Wait()
		}
	}()
	start := func(i int, join string) {
		n := &idleNode{id: fmt.Sprintf("n%d", i), http: fmt.Sprintf("127.0.0.1:%d", freePort(b, "tcp"))}
		root := filepath.Join(dir, n.id)
		if err := os.MkdirAll(root, 0o755); err != nil {
			b.Fatal(err)
		}
		args := []string{"-node-id", n.id, "-data", filepath.Join(dir, n.id+".data"),
			"-raft", fmt.Sprintf("127.0.0.1:%d", freePort(b, "tcp")), "-cluster-http", n.http,
			"-root", root, "-listen", listen}
		if join != "" {
			args = append(args, "-join", join)
		}
		if impl == "tftpd" {
			n.cmd = exec.Command(bin, append([]string{"-cluster", "-cluster-insecure", "-log-level", "warn"}, args...)...)
		} else {
			n.cmd = exec.Command(bin)
			args = append(args, "-transport", impl, "-commit-timeout", idleCommit.String())
			n.cmd.Env = append(os.Environ(), idleNodeEnv+"="+strings.Join(args, "\n"))
		}
		n.cmd.Stdout, n.cmd.Stderr = os.Stderr, os.Stderr
		if err := n.cmd.Start(); err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	start(1, "")
	waitIdleLeader(b, nodes, 1)
	start(2, nodes[0].http)
	start(3, nodes[0].http)
	waitIdleLeader(b, nodes, 3)
	time.Sleep(2 * time.Second) // joins settled
	before := make([]int64, len(nodes))
	csw0, rw0 := make([]int64, len(nodes)), make([]int64, len(nodes))
	for i, n := range nodes {
		t, err := cpuTicks(n.cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		before[i] = t
		csw0[i], rw0[i], _ = procCounters(n.cmd.Process.Pid)
	}
	time.Sleep(*idleWindow)
	// The leader at the end of the window: on a loaded host leadership
	// may move during it, and the earlier one is named in the log.
	leader := waitIdleLeader(b, nodes, 3)
	stats := make([]idleStats, len(nodes))
	for i, n := range nodes {
		t, err := cpuTicks(n.cmd.Process.Pid)
		if err != nil {
			b.Fatal(err)
		}
		st := &stats[i]
		st.leader = n.id == leader
		st.pct = 100 * float64(t-before[i]) / clockTicks / idleWindow.Seconds()
		if csw, rw, err := procCounters(n.cmd.Process.Pid); err == nil {
			st.ctxsw = float64(csw-csw0[i]) / idleWindow.Seconds()
			st.rws = float64(rw-rw0[i]) / idleWindow.Seconds()
		}
	}
	for i, n := range nodes {
		if calls, ok := straceCount(n.cmd.Process.Pid, *idleStrace, filepath.Join(dir, n.id+".strace")); ok {
			stats[i].strace = float64(calls) / idleStrace.Seconds()
		}
	}
	return stats
}

// median is the middle of v (the upper one of an even count); NaN for
// none (a transport left out by -raft.impls).
func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// waitIdleLeader waits until every node sees the same leader with want
// voters, and returns its id.
func waitIdleLeader(b *testing.B, nodes []*idleNode, want int) string {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		leader, ok := "", true
		for _, n := range nodes {
			var st struct {
				Leader string   `json:"leader"`
				Voters []string `json:"voters"`
			}
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+n.http+"/status", nil)
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				err = json.NewDecoder(resp.Body).Decode(&st)
				resp.Body.Close()
			}
			if err != nil || st.Leader == "" || len(st.Voters) != want || leader != "" && st.Leader != leader {
				ok = false
				break
			}
			leader = st.Leader
		}
		if ok {
			return leader
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Fatalf("no leader with %d voters within 30 s", want)
	return ""
}
