package bench

// TFTP server comparison: this module's server (package tftp on netio)
// against tftpd-hpa and atftpd, the Debian servers, and a server built on
// github.com/pin/tftp/v3, side by side in one run:
//
//	go test -run '^$' -bench TFTP -benchtime 1x ./bench/
//	TFTP_BENCH_ROUNDS=5 go test -run '^$' -bench TFTP -benchtime 1x ./bench/
//
// Every server runs in a process of its own (tftpd-hpa and atftpd as
// themselves, the Go ones in this test binary re-executed), so that its CPU
// time can be read from /proc; the client is this module's, in the
// benchmark process, the same for every server. Each scenario runs in
// rounds, the servers interleaved (A B C D A B C D …) so that the noise of
// the machine spreads over all of them, and reports the medians: MB/s
// (MB = 10^6 bytes) and the server's CPU seconds per GiB transferred. A
// server that lacks an option (tftpd-hpa and pin/tftp have no windowsize)
// sits that scenario out. The table at the end gives ours against the best
// other.
//
// A lock-step transfer (one block per round trip) is a latency race whose
// result depends on where the scheduler puts the server and the client: on
// one CPU a round trip costs context switches, on two it costs an idle
// CPU's wake-up per packet (at 1428 B: 57-80 MB/s against 22-25 MB/s for
// ours and tftpd-hpa alike). Unpinned, the placement follows the rest of
// the machine's load, and so does ours / tftpd-hpa (0.64x to 1.53x on one
// afternoon). For a comparison that holds from run to run, pin the
// benchmark process (the client) with taskset and the servers with
// $TFTP_BENCH_SERVER_CPUS (a taskset CPU list):
//
//	taskset -c 1 env GOMAXPROCS=2 TFTP_BENCH_SERVER_CPUS=1 ./bench.test -test.run '^$' -test.bench 'TFTP/64MiB-blksize1428$' -test.benchtime 1x   # one CPU
//	taskset -c 0 env GOMAXPROCS=2 TFTP_BENCH_SERVER_CPUS=1 ./bench.test ...   # two CPUs
//
// (A Go process takes GOMAXPROCS from its CPU affinity; GOMAXPROCS=2, which
// the servers inherit, keeps the Go runtimes as they are unpinned.)
//
// The servers: in.tftpd (apt-get install tftpd-hpa) from PATH; atftpd from
// PATH, $ATFTPD, or else unpacked from Debian's package (apt-get download
// atftpd; it conflicts with tftpd-hpa, so it is not installed).

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pin "github.com/pin/tftp/v3"

	"github.com/ioactor/ioactor/internal/loadgen"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tftp"
)

type tftpScenario struct {
	name     string
	file     string
	size     int64
	client   tftp.Client
	parallel int // concurrent downloads
	window   bool
}

const (
	tftpBig   = 64 << 20
	tftpSmall = 8 << 20
)

var tftpScenarios = []tftpScenario{
	{name: "64MiB-blksize512", file: "f64", size: tftpBig, parallel: 1},
	{name: "64MiB-blksize1428", file: "f64", size: tftpBig, parallel: 1, client: tftp.Client{BlockSize: 1428}},
	{name: "64MiB-blksize65464", file: "f64", size: tftpBig, parallel: 1, client: tftp.Client{BlockSize: 65464}},
	{name: "64MiB-blksize1428-window16", file: "f64", size: tftpBig, parallel: 1, window: true, client: tftp.Client{BlockSize: 1428, WindowSize: 16}},
	{name: "64MiB-blksize1428-window64", file: "f64", size: tftpBig, parallel: 1, window: true, client: tftp.Client{BlockSize: 1428, WindowSize: 64}},
	{name: "20x8MiB-blksize512", file: "f8", size: tftpSmall, parallel: 20},
}

// tftpServer is a server process.
type tftpServer struct {
	name     string
	addr     string
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	windows  bool // supports the windowsize option
	minBlock int  // smallest blksize it grants
	forks    bool // serves each transfer in a child process it does not reap
	// childTick is how often childCPU samples the children; 0 means 5 ms
	// (a storm of 1,000 children needs less often).
	childTick time.Duration
}

// cpu returns the server's CPU time so far, its reaped children's included
// (tftpd-hpa forks a process per transfer).
func (s *tftpServer) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses: utime is the
	// 14th field of the line, so the 12th after ") ".
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	var ticks int64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
		v, _ := strconv.ParseInt(f[i], 10, 64)
		ticks += v
	}
	return ticksToDuration(ticks)
}

func ticksToDuration(ticks int64) time.Duration { return time.Duration(ticks) * (time.Second / 100) } // USER_HZ

func procCPUTicks(pid string) int64 {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

// childCPU samples the CPU time of a forking server's children until stop
// is closed, and returns their total (tftpd-hpa ignores SIGCHLD, so its
// children's time never reaches its own counters). Each child's last few
// milliseconds may be missed.
func (s *tftpServer) childCPU(stop <-chan struct{}) <-chan time.Duration {
	out := make(chan time.Duration, 1)
	pid := strconv.Itoa(s.cmd.Process.Pid)
	go func() {
		seen := map[string]int64{}
		every := s.childTick
		if every <= 0 {
			every = 5 * time.Millisecond
		}
		tick := time.NewTicker(every)
		defer tick.Stop()
		for done := false; !done; {
			select {
			case <-stop:
				done = true
			case <-tick.C:
			}
			b, _ := os.ReadFile("/proc/" + pid + "/task/" + pid + "/children")
			for _, c := range strings.Fields(string(b)) {
				if t := procCPUTicks(c); t > seen[c] {
					seen[c] = t
				}
			}
		}
		var total int64
		for _, t := range seen {
			total += t
		}
		out <- ticksToDuration(total)
	}()
	return out
}

func (s *tftpServer) stop() {
	if s.stdin != nil {
		s.stdin.Close()
	}
	done := make(chan struct{})
	go func() {
		s.cmd.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}

// tftpServerCommand is the command of a server process: with
// $TFTP_BENCH_SERVER_CPUS set (a taskset(1) CPU list), run under taskset so
// that the server, its threads and its children stay on those CPUs.
func tftpServerCommand(path string, args ...string) *exec.Cmd {
	if cpus := os.Getenv("TFTP_BENCH_SERVER_CPUS"); cpus != "" {
		return exec.Command("taskset", append([]string{"-c", cpus, path}, args...)...)
	}
	return exec.Command(path, args...)
}

// freeUDPPort finds a free loopback UDP port for a server that cannot be
// given port 0.
func tftpFreePort(tb testing.TB) int {
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// startHelper re-executes this test binary as a Go TFTP server (see
// TestTFTPBenchServer) and reads its address.
func startTFTPHelper(tb testing.TB, kind, root string) *tftpServer {
	tb.Helper()
	cmd := tftpServerCommand(os.Args[0], "-test.run=^TestTFTPBenchServer$", "-test.count=1")
	cmd.Env = append(os.Environ(), "IOACTOR_TFTP_BENCH_SERVE="+kind, "IOACTOR_TFTP_BENCH_ROOT="+root)
	cmd.Stderr = os.Stderr
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		cmd.Process.Kill()
		cmd.Wait()
		tb.Fatalf("%s server: %q, %v", kind, line, err)
	}
	go io.Copy(io.Discard, stdout)
	return &tftpServer{name: kind, addr: addr, cmd: cmd, stdin: stdin, windows: kind == "ioactor", minBlock: map[string]int{"pin": 512}[kind]}
}

// startExternal starts a C server on a free port and waits until it
// answers.
func startTFTPExternal(tb testing.TB, name string, windows bool, path string, args func(port int) []string) *tftpServer {
	tb.Helper()
	port := tftpFreePort(tb)
	cmd := tftpServerCommand(path, args(port)...)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Start(); err != nil {
		tb.Fatalf("%s: %v", name, err)
	}
	s := &tftpServer{name: name, addr: fmt.Sprintf("127.0.0.1:%d", port), cmd: cmd, windows: windows}
	for i := 0; ; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := (&tftp.Client{Timeout: 100 * time.Millisecond, Retries: 3}).Get(ctx, s.addr, "probe", io.Discard)
		cancel()
		if err == nil {
			return s
		}
		if i == 20 {
			s.stop()
			tb.Fatalf("%s does not answer on %s: %v", name, s.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// findAtftpd returns atftpd: from PATH, $ATFTPD, or unpacked from Debian's
// package into a cache directory.
func findAtftpd(tb testing.TB) string {
	if p, err := exec.LookPath("atftpd"); err == nil {
		return p
	}
	if p := os.Getenv("ATFTPD"); p != "" {
		return p
	}
	dir := filepath.Join(os.TempDir(), "ioactor-atftpd")
	bin := filepath.Join(dir, "usr", "sbin", "atftpd")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	os.MkdirAll(dir, 0o755)
	dl := exec.Command("apt-get", "download", "atftpd")
	dl.Dir = dir
	if out, err := dl.CombinedOutput(); err != nil {
		tb.Fatalf("atftpd is not installed and apt-get download atftpd failed (set $ATFTPD): %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "atftpd_*.deb"))
	if len(debs) == 0 {
		tb.Fatal("apt-get download atftpd left no package")
	}
	if out, err := exec.Command("dpkg", "-x", debs[0], dir).CombinedOutput(); err != nil {
		tb.Fatalf("dpkg -x %s: %v\n%s", debs[0], err, out)
	}
	return bin
}

type tftpBenchEnv struct {
	root    string
	crc     map[string]uint32
	servers []*tftpServer
}

// cServersRoot finds the C servers (tftpd-hpa's in.tftpd and atftpd) and
// makes the tree they serve. They drop privileges to nobody: the tree must
// be readable by all, which b.TempDir's is not.
func cServersRoot(b *testing.B, prefix string) (hpa, atftpd, root string) {
	hpa, err := exec.LookPath("in.tftpd")
	if err != nil {
		b.Fatal("in.tftpd is not installed: apt-get install tftpd-hpa (the service need not run)")
	}
	atftpd = findAtftpd(b)
	root, err = os.MkdirTemp("", prefix)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(root) })
	os.Chmod(root, 0o755)
	return hpa, atftpd, root
}

func newTFTPBenchEnv(b *testing.B) *tftpBenchEnv {
	hpa, atftpd, root := cServersRoot(b, "ioactor-tftp-bench-")
	e := &tftpBenchEnv{root: root, crc: map[string]uint32{}}
	for name, size := range map[string]int64{"f64": tftpBig, "f8": tftpSmall, "probe": 1} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i*7 + i>>11)
		}
		if err := os.WriteFile(filepath.Join(root, name), data, 0o644); err != nil {
			b.Fatal(err)
		}
		os.Chmod(filepath.Join(root, name), 0o644)
		e.crc[name] = crc32.ChecksumIEEE(data)
	}
	hpaSrv := startTFTPExternal(b, "tftpd-hpa", false, hpa, func(port int) []string {
		return []string{"-L", "-s", "-a", fmt.Sprintf("127.0.0.1:%d", port), root}
	})
	hpaSrv.forks = true
	e.servers = []*tftpServer{
		startTFTPHelper(b, "ioactor", root),
		hpaSrv,
		startTFTPExternal(b, "atftpd", true, atftpd, func(port int) []string {
			return []string{"--daemon", "--no-fork", "--port", strconv.Itoa(port), "--bind-address", "127.0.0.1",
				"--user", "nobody", "--group", "nogroup", "--logfile", "/dev/null", root}
		}),
		startTFTPHelper(b, "pin", root),
	}
	b.Cleanup(func() {
		for _, s := range e.servers {
			s.stop()
		}
	})
	return e
}

type tftpSample struct {
	mbps, cpuPerGiB float64
}

// measure runs one round of sc against s.
func (e *tftpBenchEnv) measure(sc tftpScenario, s *tftpServer) (tftpSample, error) {
	cpu0 := s.cpu()
	var children <-chan time.Duration
	stopChildren := make(chan struct{})
	if s.forks {
		children = s.childCPU(stopChildren)
	}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, sc.parallel)
	for range sc.parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			c := sc.client
			w := &loadgen.CRCWriter{}
			if _, err := c.Get(ctx, s.addr, sc.file, w); err != nil {
				errs <- err
			} else if w.N != sc.size || w.CRC != e.crc[sc.file] {
				errs <- fmt.Errorf("got %d bytes, crc %08x; want %d, %08x", w.N, w.CRC, sc.size, e.crc[sc.file])
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return tftpSample{}, err
	}
	time.Sleep(20 * time.Millisecond) // the server's last ACKs
	used := s.cpu() - cpu0
	if children != nil {
		close(stopChildren)
		used += <-children
	}
	total := float64(sc.size) * float64(sc.parallel)
	return tftpSample{
		mbps:      total / elapsed.Seconds() / 1e6,
		cpuPerGiB: used.Seconds() / (total / (1 << 30)),
	}, nil
}

func tftpMedian(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkTFTP compares the servers in every scenario; see the top of the
// file.
func BenchmarkTFTP(b *testing.B) {
	e := newTFTPBenchEnv(b)
	rounds := 3
	if r, err := strconv.Atoi(os.Getenv("TFTP_BENCH_ROUNDS")); err == nil && r > 0 {
		rounds = r
	}
	type key struct{ scenario, server string }
	mbps := map[key][]float64{}
	cpu := map[key][]float64{}
	for _, sc := range tftpScenarios {
		b.Run(sc.name, func(b *testing.B) {
			for b.Loop() {
				for range rounds {
					for _, s := range e.servers {
						if sc.window && !s.windows || sc.client.BlockSize != 0 && sc.client.BlockSize < s.minBlock {
							continue
						}
						smp, err := e.measure(sc, s)
						if err != nil {
							b.Fatalf("%s: %v", s.name, err)
						}
						k := key{sc.name, s.name}
						mbps[k] = append(mbps[k], smp.mbps)
						cpu[k] = append(cpu[k], smp.cpuPerGiB)
					}
				}
			}
			for _, s := range e.servers {
				k := key{sc.name, s.name}
				if len(mbps[k]) > 0 {
					b.ReportMetric(tftpMedian(mbps[k]), s.name+"-MB/s")
					b.ReportMetric(tftpMedian(cpu[k]), s.name+"-cpu-s/GiB")
				}
			}
		})
	}
	// The table, in Markdown, on standard output (a parent benchmark's
	// b.Log is not shown).
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nTFTP servers, medians of %d interleaved rounds: MB/s (server CPU s per GiB)\n\n| scenario |", rounds)
	for _, s := range e.servers {
		fmt.Fprintf(&sb, " %s |", s.name)
	}
	sb.WriteString(" ioactor / best other, MB/s | ioactor / least other, CPU |\n|---|")
	for range e.servers {
		sb.WriteString("---:|")
	}
	sb.WriteString("---:|---:|\n")
	for _, sc := range tftpScenarios {
		fmt.Fprintf(&sb, "| %s |", sc.name)
		best, least := 0.0, 0.0
		for _, s := range e.servers {
			k := key{sc.name, s.name}
			if len(mbps[k]) == 0 {
				sb.WriteString(" n/a |")
				continue
			}
			m, c := tftpMedian(mbps[k]), tftpMedian(cpu[k])
			fmt.Fprintf(&sb, " %.1f (%.2f) |", m, c)
			if s.name != "ioactor" {
				best = max(best, m)
				if least == 0 || c < least {
					least = c
				}
			}
		}
		ours := key{sc.name, "ioactor"}
		if best > 0 && least > 0 {
			fmt.Fprintf(&sb, " %.2fx | %.2fx |", tftpMedian(mbps[ours])/best, tftpMedian(cpu[ours])/least)
		}
		sb.WriteByte('\n')
	}
	fmt.Print(sb.String())
}

// TestTFTPBenchServer is the Go servers' process for BenchmarkTFTP: the
// benchmark re-executes the test binary with IOACTOR_TFTP_BENCH_SERVE set;
// otherwise it does nothing. It prints "listening ADDR" and serves until
// its standard input closes.
func TestTFTPBenchServer(t *testing.T) {
	kind := os.Getenv("IOACTOR_TFTP_BENCH_SERVE")
	if kind == "" {
		return
	}
	root := os.Getenv("IOACTOR_TFTP_BENCH_ROOT")
	logger := slog.New(slog.DiscardHandler)
	var stop func()
	switch kind {
	case "ioactor":
		loops, _ := strconv.Atoi(os.Getenv("TFTP_BENCH_LOOPS"))
		sys, err := netio.NewSystem(netio.Config{Loops: loops, Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		srv, err := tftp.NewServer(sys, tftp.ServerConfig{
			Root: root, Listen: netip.MustParseAddrPort("127.0.0.1:0"), MaxWindowSize: 64, Logger: logger,
			SinglePort: os.Getenv("TFTP_BENCH_SINGLE_PORT") != "",
		})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("listening %s\n", srv.Addr())
		stop = func() {
			srv.Close()
			sys.Shutdown(context.Background())
		}
	case "pin":
		rootFS, err := os.OpenRoot(root)
		if err != nil {
			t.Fatal(err)
		}
		s := pin.NewServer(func(name string, rf io.ReaderFrom) error {
			f, err := rootFS.Open(strings.TrimLeft(name, "/"))
			if err != nil {
				return err
			}
			defer f.Close()
			if fi, err := f.Stat(); err == nil {
				rf.(pin.OutgoingTransfer).SetSize(fi.Size())
			}
			_, err = rf.ReadFrom(f)
			return err
		}, nil)
		s.SetBlockSize(tftp.MaxBlockSize)
		s.SetBlockSizeNegotiation(false)
		s.SetTimeout(time.Second)
		conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Serve(conn) }()
		fmt.Printf("listening %s\n", conn.LocalAddr())
		stop = func() {
			s.Shutdown()
			if err := <-done; err != nil && !errors.Is(err, net.ErrClosed) {
				t.Log(err)
			}
		}
	default:
		t.Fatalf("unknown server %q", kind)
	}
	io.Copy(io.Discard, os.Stdin)
	stop()
}
