package bench

// Boot storm: N PXE-like clients start at once and each fetches a boot set
// in sequence, lock-step, from one server; every contender in one run,
// interleaved:
//
//	go test -run '^$' -bench Storm -benchtime 1x -timeout 60m ./bench/
//	STORM_CLIENTS=20,200 STORM_ROUNDS=3 go test -run '^$' -bench Storm -benchtime 1x -timeout 60m ./bench/
//
// The boot set is a 40,000-byte first stage, a 1.5 MiB second stage and a
// 10 MiB kernel; at N ≥ 1000 the kernel is left out (STORM_KERNEL_BELOW=N
// moves that bound: 1000000 keeps it everywhere), so that the run stays
// within minutes on two cores. STORM_SERVERS=a,b picks contenders;
// STORM_PLOT=FILE.svg draws the medians against N. Half the
// clients are UEFI-like (a tsize probe, an ERROR 8 to the OACK, then the
// file at blksize 1468 with tsize), half BIOS-like (blksize 512 with
// tsize); see loadgen.Storm. The load generator is this process: a
// goroutine and a socket per transfer, this module's tftp.Client.
//
// Contenders: cmd/tftpd with a port per transfer (ioactor), in single-port
// mode (ioactor-single), and a three-node cluster of it, the leader serving
// (ioactor-cluster, with -cluster-insecure: raft and the cluster HTTP
// without TLS, on loopback; the CPU column is the leader's, the
// followers' is printed apart, and so is every round with the
// leaderships a node gained and the downloads' holds during it, from the
// nodes' ioactor_tftp_cluster_leaderships_total and _holds_total: a round
// whose leadership moved is marked "LEADERSHIP MOVED", its sample is not
// a steady cluster's); tftpd-hpa; atftpd (--maxthread raised to 4096 from its
// 100); pin/tftp (this test binary re-executed, as in BenchmarkTFTP).
// Every client comes from 127.0.0.1, so the per-client limits of cmd/tftpd
// (-max-client-transfers, -client-rate, issue 16) are turned off for the
// run: with them, one address gets 32 transfers at once and 20 requests a
// second.
//
// Reported per N: aggregate MB/s (10^6 bytes of file data over the time
// until the last client finished), the server's CPU seconds per GiB (from
// /proc; tftpd-hpa's forked children sampled every 20 ms), the time until
// the last client finished, the p50 and p99 of per-client completion
// times, failed clients, the clients' retransmissions, and the server's
// peak RSS (VmHWM, over the whole run so far; not for tftpd-hpa, a process
// per transfer).

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/loadgen"
)

type stormContender struct {
	*tftpServer
	followers []*tftpServer // ioactor-cluster
	metrics   []string      // ioactor-cluster: every node's -metrics-listen
}

// clusterCounts are the cluster's counters summed over its nodes: how many
// times a node became the leader (and bound the port), and how often its
// downloads held for a slow commit.
type clusterCounts struct{ leaderships, holds int }

// stormCounterNames are the counters clusterCounts reads (a filtered
// scrape: gathering every metric costs the node more CPU).
var stormCounterNames = url.Values{"name[]": {"ioactor_tftp_cluster_leaderships_total", "ioactor_tftp_cluster_holds_total"}}.Encode()

// clusterCounts scrapes every node's /metrics; ok is false when a node
// did not answer (the counts are then a lower bound).
func (c *stormContender) clusterCounts() (n clusterCounts, ok bool) {
	cl := http.Client{Timeout: 2 * time.Second}
	ok = true
	for _, addr := range c.metrics {
		resp, err := cl.Get("http://" + addr + "/metrics?" + stormCounterNames)
		if err != nil {
			ok = false
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			name, v, found := strings.Cut(sc.Text(), " ")
			f, err := strconv.ParseFloat(v, 64)
			if !found || err != nil {
				continue
			}
			switch name {
			case "ioactor_tftp_cluster_leaderships_total":
				n.leaderships += int(f)
			case "ioactor_tftp_cluster_holds_total":
				n.holds += int(f)
			}
		}
		if sc.Err() != nil || resp.StatusCode != http.StatusOK {
			ok = false
		}
		resp.Body.Close()
	}
	return n, ok
}

func (c *stormContender) followerCPU() time.Duration {
	var d time.Duration
	for _, f := range c.followers {
		d += f.cpu()
	}
	return d
}

// peakRSS is the server's VmHWM in bytes, 0 when unknown.
func (s *tftpServer) peakRSS() int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

type stormEnv struct {
	root       string
	full, boot []loadgen.StormFile // with and without the kernel
	servers    []*stormContender
}

// stormLimitsOff are cmd/tftpd's flags that let one address run a storm.
var stormLimitsOff = []string{"-max-client-transfers", "0", "-client-rate", "0", "-max-transfers", "8192", "-log-level", "warn"}

func newStormEnv(b *testing.B) *stormEnv {
	hpa, atftpd, root := cServersRoot(b, "ioactor-storm-")
	e := &stormEnv{root: root}
	if err := loadgen.WriteBootSet(root); err != nil {
		b.Fatal(err)
	}
	e.full, e.boot = loadgen.BootSet(true), loadgen.BootSet(false)
	bin := filepath.Join(b.TempDir(), "tftpd")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ioactor/ioactor/cmd/tftpd").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	b.Cleanup(func() {
		for _, s := range e.servers {
			s.stop()
			for _, f := range s.followers {
				f.stop()
			}
		}
	})
	ours := func(name string, extra ...string) *stormContender {
		s := startTFTPExternal(b, name, true, bin, func(port int) []string {
			return append(append([]string{"-root", root, "-listen", fmt.Sprintf("127.0.0.1:%d", port)}, stormLimitsOff...), extra...)
		})
		return &stormContender{tftpServer: s}
	}
	only := map[string]bool{}
	for _, n := range strings.Split(os.Getenv("STORM_SERVERS"), ",") {
		if n != "" {
			only[n] = true
		}
	}
	want := func(n string) bool { return len(only) == 0 || only[n] }
	if want("ioactor") {
		e.servers = append(e.servers, ours("ioactor"))
	}
	if want("ioactor-single") {
		e.servers = append(e.servers, ours("ioactor-single", "-single-port"))
	}
	if want("ioactor-cluster") {
		e.servers = append(e.servers, startStormCluster(b, bin, root))
	}
	if want("tftpd-hpa") {
		hpaSrv := startTFTPExternal(b, "tftpd-hpa", false, hpa, func(port int) []string {
			return []string{"-L", "-s", "-a", fmt.Sprintf("127.0.0.1:%d", port), root}
		})
		hpaSrv.forks = true
		hpaSrv.childTick = 20 * time.Millisecond
		e.servers = append(e.servers, &stormContender{tftpServer: hpaSrv})
	}
	if want("atftpd") {
		e.servers = append(e.servers, &stormContender{tftpServer: startTFTPExternal(b, "atftpd", true, atftpd, func(port int) []string {
			return []string{"--daemon", "--no-fork", "--port", strconv.Itoa(port), "--bind-address", "127.0.0.1", "--maxthread", "4096",
				"--user", "nobody", "--group", "nogroup", "--logfile", "/dev/null", root}
		})})
	}
	if want("pin") {
		e.servers = append(e.servers, &stormContender{tftpServer: startTFTPHelper(b, "pin", root)})
	}
	return e
}

// startStormCluster starts three cmd/tftpd -cluster nodes on one TFTP
// address and root, and waits until the leader answers.
func startStormCluster(b *testing.B, bin, root string) *stormContender {
	dir := b.TempDir()
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(b, "udp"))
	var nodes []*idleNode
	var procs []*tftpServer
	var metrics []string
	start := func(i int, join string) {
		n := &idleNode{id: fmt.Sprintf("n%d", i), http: fmt.Sprintf("127.0.0.1:%d", freePort(b, "tcp"))}
		metrics = append(metrics, fmt.Sprintf("127.0.0.1:%d", freePort(b, "tcp")))
		args := append([]string{"-cluster", "-node-id", n.id, "-data", filepath.Join(dir, n.id+".data"),
			"-raft", fmt.Sprintf("127.0.0.1:%d", freePort(b, "tcp")), "-cluster-http", n.http,
			"-root", root, "-listen", listen, "-cluster-insecure", "-metrics-listen", metrics[len(metrics)-1]}, stormLimitsOff...)
		if join != "" {
			args = append(args, "-join", join)
		}
		n.cmd = exec.Command(bin, args...)
		logf, err := os.Create(filepath.Join(dir, n.id+".log"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { logf.Close() })
		n.cmd.Stdout, n.cmd.Stderr = logf, logf
		if err := n.cmd.Start(); err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, n)
		procs = append(procs, &tftpServer{name: n.id, addr: listen, cmd: n.cmd})
	}
	start(1, "")
	waitIdleLeader(b, nodes, 1)
	start(2, nodes[0].http)
	start(3, nodes[0].http)
	leader := waitIdleLeader(b, nodes, 3)
	c := &stormContender{metrics: metrics}
	for i, n := range nodes {
		p := procs[i]
		if n.id == leader {
			p.name = "ioactor-cluster"
			c.tftpServer = p
		} else {
			c.followers = append(c.followers, p)
		}
	}
	// The leader answers once it has bound the port.
	for i := 0; ; i++ {
		if stormProbe(listen) {
			break
		}
		if i == 100 {
			b.Fatal("the cluster's leader does not answer on " + listen)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

func stormProbe(addr string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r, err := loadgen.Storm(ctx, loadgen.StormConfig{Addr: addr, Clients: 1, Files: []loadgen.StormFile{{Name: "probe"}},
		Timeout: 200 * time.Millisecond, Retries: 3, Profile: func(int) loadgen.StormProfile { return loadgen.StormBIOS }})
	return err == nil && r.Failed == 0
}

type stormSample struct {
	res              loadgen.StormResult
	cpu, followerCPU time.Duration
	rss              int64
	// ioactor-cluster: what its counters moved by during the storm;
	// counted is false when they could not be read.
	cluster clusterCounts
	counted bool
}

func (e *stormEnv) measure(n int, files []loadgen.StormFile, s *stormContender) (stormSample, error) {
	return measureStorm(n, s, func() (loadgen.StormResult, error) {
		return loadgen.Storm(context.Background(), loadgen.StormConfig{Addr: s.addr, Clients: n, Files: files})
	})
}

// measureStorm runs one storm of n clients against s and samples the
// server's CPU (its forked children's too) and peak memory around it.
func measureStorm(n int, s *stormContender, storm func() (loadgen.StormResult, error)) (stormSample, error) {
	// The counters are read outside the CPU samples: a scrape costs CPU.
	var counts0 clusterCounts
	counted := len(s.metrics) > 0
	if counted {
		counts0, counted = s.clusterCounts()
	}
	cpu0, fcpu0 := s.cpu(), s.followerCPU()
	var children <-chan time.Duration
	stopChildren := make(chan struct{})
	if s.forks {
		children = s.childCPU(stopChildren)
	}
	res, err := storm()
	time.Sleep(50 * time.Millisecond) // the server's last packets
	smp := stormSample{res: res, cpu: s.cpu() - cpu0, followerCPU: s.followerCPU() - fcpu0}
	if children != nil {
		close(stopChildren)
		smp.cpu += <-children
	} else {
		smp.rss = s.peakRSS()
	}
	if counted {
		counts, ok := s.clusterCounts()
		smp.counted = ok
		smp.cluster = clusterCounts{leaderships: counts.leaderships - counts0.leaderships, holds: counts.holds - counts0.holds}
		if smp.cluster.leaderships > 0 {
			fmt.Printf("%s, N=%d: the leadership moved during this storm (%d leadership(s)); its sample is not a steady cluster's\n", s.name, n, smp.cluster.leaderships)
		}
	}
	if err == nil && res.Failed > 0 {
		err = fmt.Errorf("%d of %d clients failed; the first: %w", res.Failed, n, res.FirstErr)
	}
	return smp, err
}

// BenchmarkStorm runs the boot storm of the top of the file.
func BenchmarkStorm(b *testing.B) {
	ns := []int{20, 200, 1000}
	if v := os.Getenv("STORM_CLIENTS"); v != "" {
		ns = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(f)
			if err != nil || n <= 0 {
				b.Fatalf("STORM_CLIENTS: %q", v)
			}
			ns = append(ns, n)
		}
	}
	rounds := 1
	if r, err := strconv.Atoi(os.Getenv("STORM_ROUNDS")); err == nil && r > 0 {
		rounds = r
	}
	stormKernelBelow := 1000
	if v, err := strconv.Atoi(os.Getenv("STORM_KERNEL_BELOW")); err == nil && v > 0 {
		stormKernelBelow = v
	}
	e := newStormEnv(b)
	var out strings.Builder
	all := map[int]map[string][]stormSample{}
	for _, n := range ns {
		files := e.full
		if n >= stormKernelBelow {
			files = e.boot
		}
		var names []string
		for _, f := range files {
			names = append(names, f.Name)
		}
		samples := map[string][]stormSample{}
		all[n] = samples
		b.Run(fmt.Sprintf("N%d", n), func(b *testing.B) {
			for b.Loop() {
				for range rounds {
					for _, s := range e.servers {
						smp, err := e.measure(n, files, s)
						if err != nil {
							b.Errorf("%s, N=%d: %v", s.name, n, err)
						}
						samples[s.name] = append(samples[s.name], smp)
						time.Sleep(time.Second) // let the last transfers end
					}
				}
			}
			for _, s := range e.servers {
				if m := stormMedian(samples[s.name]); m != nil {
					b.ReportMetric(m.res.MBps(), s.name+"-MB/s")
				}
			}
		})
		stormTable(&out, n, "half blksize 1468 with tsize probes, half 512", names, rounds, e.servers, samples)
	}
	fmt.Print(out.String())
	if err := writeStormPlot(ns, e.servers, all); err != nil {
		b.Error(err)
	}
}

// stormMedian is the sample of median MB/s.
func stormMedian(v []stormSample) *stormSample {
	if len(v) == 0 {
		return nil
	}
	best := make([]stormSample, len(v))
	copy(best, v)
	for i := range best { // insertion sort by MB/s: a handful of samples
		for j := i; j > 0 && best[j].res.MBps() < best[j-1].res.MBps(); j-- {
			best[j], best[j-1] = best[j-1], best[j]
		}
	}
	return &best[len(best)/2]
}

// stormClusterRounds lists the cluster's rounds with the leaderships a
// node gained and the holds during each, marking with "LEADERSHIP MOVED"
// the rounds whose leader changed: their MB/s and CPU are not a steady
// cluster's.
func stormClusterRounds(v []stormSample) string {
	var b strings.Builder
	b.WriteString("ioactor-cluster rounds, MB/s (leaderships gained, holds during the storm):")
	moved := 0
	for i, smp := range v {
		fmt.Fprintf(&b, " %d: %.1f", i+1, smp.res.MBps())
		switch {
		case !smp.counted:
			b.WriteString(" (counters unreadable)")
		case smp.cluster.leaderships > 0:
			moved++
			fmt.Fprintf(&b, " (%d, %d) LEADERSHIP MOVED", smp.cluster.leaderships, smp.cluster.holds)
		default:
			fmt.Fprintf(&b, " (0, %d)", smp.cluster.holds)
		}
		if i < len(v)-1 {
			b.WriteString(";")
		}
	}
	fmt.Fprintf(&b, ". %d of %d round(s) with a leadership move.", moved, len(v))
	return b.String()
}

func stormTable(w *strings.Builder, n int, clients string, files []string, rounds int, servers []*stormContender, samples map[string][]stormSample) {
	fmt.Fprintf(w, "\nBoot storm, N=%d clients (%s), each fetching %s; median of %d interleaved round(s)\n\n",
		n, clients, strings.Join(files, " + "), rounds)
	w.WriteString("| server | MB/s | CPU s/GiB | last client s | p50 s | p99 s | p99/p50 | failed | retransmits | peak RSS MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	var best, least, single float64
	var notes []string
	for _, s := range servers {
		m := stormMedian(samples[s.name])
		if m == nil {
			continue
		}
		r := &m.res
		gib := float64(r.Bytes) / (1 << 30)
		cpu := m.cpu.Seconds() / gib
		rss := "n/a"
		if m.rss > 0 {
			rss = fmt.Sprintf("%.0f", float64(m.rss)/(1<<20))
		}
		fmt.Fprintf(w, "| %s | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %d | %d | %s |\n", s.name, r.MBps(), cpu,
			r.Elapsed.Seconds(), r.Quantile(0.5).Seconds(), r.Quantile(0.99).Seconds(),
			r.Quantile(0.99).Seconds()/max(r.Quantile(0.5).Seconds(), 1e-9), r.Failed, r.Retransmits, rss)
		if strings.HasPrefix(s.name, "ioactor") {
			if s.name == "ioactor-single" {
				single = r.MBps()
			}
			if len(s.followers) > 0 {
				notes = append(notes, fmt.Sprintf("ioactor-cluster followers: %.2f CPU s/GiB together; all three nodes: %.2f (when the leadership moved during the storm, the CPU column is the first leader's only).",
					m.followerCPU.Seconds()/gib, (m.cpu+m.followerCPU).Seconds()/gib))
				if single > 0 {
					notes = append(notes, fmt.Sprintf("ioactor-cluster / ioactor-single: %.2fx MB/s.", r.MBps()/single))
				}
				notes = append(notes, stormClusterRounds(samples[s.name]))
			}
			continue
		}
		best = max(best, r.MBps())
		if least == 0 || cpu < least {
			least = cpu
		}
	}
	if best > 0 {
		var buf bytes.Buffer
		for _, s := range servers {
			m := stormMedian(samples[s.name])
			if m == nil || !strings.HasPrefix(s.name, "ioactor") {
				continue
			}
			gib := float64(m.res.Bytes) / (1 << 30)
			fmt.Fprintf(&buf, "%s: %.2fx the best other's MB/s, %.2fx the leanest other's CPU/GiB. ", s.name, m.res.MBps()/best, m.cpu.Seconds()/gib/least)
		}
		notes = append(notes, buf.String())
	}
	for _, n := range notes {
		fmt.Fprintf(w, "\n%s\n", n)
	}
}

// BenchmarkStormRealClients is the boot storm's spot check with real
// clients: STORM_REAL_CLIENTS (20) client processes at once, half curl
// (blksize 1468 with tsize, as UEFI asks) and half tftp-hpa (512 bytes, no
// options, as old PXE ROMs), each fetching the boot set without the kernel
// (one process per file, in order), against every contender, interleaved:
//
//	go test -run '^$' -bench StormRealClients -benchtime 1x ./bench/
//
// Each file is checked against its size and CRC (tftp-hpa exits 0 after an
// ERROR). The table is BenchmarkStorm's; the retransmits column is 0 (the
// clients do not say).
func BenchmarkStormRealClients(b *testing.B) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		b.Fatal("curl is not installed")
	}
	hpa, err := exec.LookPath("tftp")
	if err != nil {
		b.Fatal("tftp (tftp-hpa) is not installed: apt-get install tftp-hpa")
	}
	n := 20
	if v, err := strconv.Atoi(os.Getenv("STORM_REAL_CLIENTS")); err == nil && v > 0 {
		n = v
	}
	rounds := 1
	if r, err := strconv.Atoi(os.Getenv("STORM_ROUNDS")); err == nil && r > 0 {
		rounds = r
	}
	e := newStormEnv(b)
	out := b.TempDir()
	samples := map[string][]stormSample{}
	for b.Loop() {
		for range rounds {
			for _, s := range e.servers {
				smp, err := measureStorm(n, s, func() (loadgen.StormResult, error) {
					return realStorm(s.addr, n, e.boot, out, curl, hpa), nil
				})
				if err != nil {
					b.Errorf("%s, real clients: %v", s.name, err)
				}
				samples[s.name] = append(samples[s.name], smp)
				time.Sleep(time.Second)
			}
		}
	}
	var names []string
	for _, f := range e.boot {
		names = append(names, f.Name)
	}
	var w strings.Builder
	stormTable(&w, n, "real clients, a process per file: half curl --tftp-blksize 1468 with tsize, half tftp-hpa at 512", names, rounds, e.servers, samples)
	fmt.Print(w.String())
}

// realStorm runs n real clients against addr, each fetching files in
// order into dir, and checks what they wrote.
func realStorm(addr string, n int, files []loadgen.StormFile, dir, curl, hpa string) loadgen.StormResult {
	host, port, _ := strings.Cut(addr, ":")
	outs := make([]loadgen.StormOutcome, n)
	done := make(chan struct{})
	start := time.Now()
	for i := range n {
		go func() {
			defer func() { done <- struct{}{} }()
			o := &outs[i]
			for _, f := range files {
				local := filepath.Join(dir, fmt.Sprintf("c%d-%s", i, f.Name))
				os.Remove(local)
				var cmd *exec.Cmd
				if i%2 == 0 {
					cmd = exec.Command(curl, "-s", "-S", "--tftp-blksize", "1468", "-o", local, "tftp://"+addr+"/"+f.Name)
				} else {
					cmd = exec.Command(hpa, "-l", "-m", "octet", host, port, "-c", "get", f.Name, local)
				}
				msg, err := cmd.CombinedOutput()
				if err == nil {
					err = checkStormFile(local, f)
				}
				if err != nil {
					o.Err = fmt.Errorf("client %d (%s): %s: %w: %s", i, filepath.Base(cmd.Path), f.Name, err, bytes.TrimSpace(msg))
					return
				}
				o.Bytes += f.Size
				os.Remove(local)
			}
			o.Took = time.Since(start)
		}()
	}
	for range n {
		<-done
	}
	return loadgen.SummarizeStorm(outs, start)
}

func checkStormFile(path string, f loadgen.StormFile) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var w loadgen.CRCWriter
	w.Write(b)
	if w.N != f.Size || w.CRC != f.CRC {
		return fmt.Errorf("got %d bytes, crc %08x; want %d, %08x", w.N, w.CRC, f.Size, f.CRC)
	}
	return nil
}
