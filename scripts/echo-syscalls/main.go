// Command echo-syscalls counts the system calls per echoed message of each
// echo server of cmd/bench: it starts `BENCH serve -impl X` for every
// contender, drives it with internal/loadgen (the load of cmd/bench), and
// attaches `perf stat -e syscalls:...` to the server for the measured window
// only. Contenders are interleaved round by round; it prints one line per
// run (events per message: task-clock in µs, context switches, and each
// system call, "_eagain" and "_0" the reads that returned EAGAIN and the
// waits that returned no event) and then the medians.
//
//	go build -o /tmp/bench ./cmd/bench
//	echo-syscalls -bench /tmp/bench -impls ioactor-ack,gnet,net -conns 64 -size 64 -pipe 16
//	echo-syscalls -bench /tmp/bench -impls main=/tmp/bench-main,new=/tmp/bench -conns 1000 -pipe 1
//
// A NAME=BINARY contender is the ioactor-ack echo of that build. With
// -record PREFIX it runs perf record -g instead, for perf report. It needs
// perf with the syscalls tracepoints (root, or perf_event_paranoid <= 1).
// The tracepoints cost a little per call, so its CPU figures are not
// cmd/bench's.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ioactor/ioactor/internal/loadgen"
)

// events are perf's names; a "name/filter" entry counts the exits of that
// call that returned what the filter says (an EAGAIN read, an empty wait).
var events = []string{
	"task-clock", "context-switches",
	"syscalls:sys_enter_read", "syscalls:sys_exit_read/ret == -11",
	"syscalls:sys_enter_recvfrom", "syscalls:sys_exit_recvfrom/ret == -11",
	"syscalls:sys_enter_write", "syscalls:sys_enter_sendto", "syscalls:sys_enter_writev",
	"syscalls:sys_enter_epoll_wait", "syscalls:sys_exit_epoll_wait/ret == 0",
	"syscalls:sys_enter_epoll_pwait", "syscalls:sys_exit_epoll_pwait/ret == 0",
	"syscalls:sys_enter_epoll_pwait2", "syscalls:sys_exit_epoll_pwait2/ret == 0",
	"syscalls:sys_enter_epoll_ctl", "syscalls:sys_enter_futex",
	"syscalls:sys_enter_nanosleep", "syscalls:sys_enter_sched_yield",
	"syscalls:sys_enter_getsockopt", "syscalls:sys_enter_tgkill",
}

func main() {
	bench := flag.String("bench", "", "cmd/bench binary (its serve subcommand)")
	impls := flag.String("impls", "ioactor-ack,gnet,net", "contenders; a NAME=BINARY entry runs BINARY's ioactor-ack under NAME")
	conns := flag.Int("conns", 64, "connections")
	size := flag.Int("size", 64, "message size")
	pipe := flag.Int("pipe", 16, "messages in flight per connection")
	rounds := flag.Int("rounds", 3, "rounds")
	warmup := flag.Duration("warmup", time.Second, "warm-up")
	dur := flag.Duration("duration", 2*time.Second, "measured window")
	flag.StringVar(&record, "record", "", "instead of counting, perf record -g the servers into files with this prefix (PREFIX-IMPL-ROUND.data)")
	flag.Parse()
	if err := run(*bench, strings.Split(*impls, ","), *conns, *size, *pipe, *rounds, *warmup, *dur); err != nil {
		fmt.Fprintln(os.Stderr, "echo-syscalls:", err)
		os.Exit(1)
	}
}

var record string

func run(bench string, impls []string, conns, size, pipe, rounds int, warmup, dur time.Duration) error {
	res := map[string][]map[string]float64{}
	for r := range rounds {
		for _, impl := range impls {
			m, err := once(bench, impl, conns, size, pipe, warmup, dur)
			if err != nil {
				return fmt.Errorf("%s round %d: %w", impl, r, err)
			}
			res[impl] = append(res[impl], m)
			fmt.Printf("round %d %-12s %s\n", r, impl, format(m))
		}
	}
	fmt.Printf("medians, %d × %d B × %d, per message:\n", conns, size, pipe)
	for _, impl := range impls {
		med := map[string]float64{}
		for k := range res[impl][0] {
			var v []float64
			for _, m := range res[impl] {
				v = append(v, m[k])
			}
			slices.Sort(v)
			med[k] = v[len(v)/2]
		}
		fmt.Printf("%-12s %s\n", impl, format(med))
	}
	return nil
}

var short = map[string]string{
	"task-clock": "cpu_us", "context-switches": "cs",
	"syscalls:sys_enter_read": "read", "syscalls:sys_exit_read": "read_eagain",
	"syscalls:sys_enter_recvfrom": "recvfrom", "syscalls:sys_exit_recvfrom": "recvfrom_eagain",
	"syscalls:sys_enter_write": "write", "syscalls:sys_enter_sendto": "sendto", "syscalls:sys_enter_writev": "writev",
	"syscalls:sys_enter_epoll_wait": "ewait", "syscalls:sys_exit_epoll_wait": "ewait_0",
	"syscalls:sys_enter_epoll_pwait": "epwait", "syscalls:sys_exit_epoll_pwait": "epwait_0",
	"syscalls:sys_enter_epoll_pwait2": "epwait2", "syscalls:sys_exit_epoll_pwait2": "epwait2_0",
	"syscalls:sys_enter_epoll_ctl": "ectl", "syscalls:sys_enter_futex": "futex",
	"syscalls:sys_enter_nanosleep": "nanosleep", "syscalls:sys_enter_sched_yield": "yield",
	"syscalls:sys_enter_getsockopt": "getsockopt", "syscalls:sys_enter_tgkill": "tgkill",
}

func format(m map[string]float64) string {
	var b strings.Builder
	fmt.Fprintf(&b, "msgs/s=%.0f", m["msgs/s"])
	for _, e := range events {
		name, _, _ := strings.Cut(e, "/")
		k := short[name]
		if v := m[k]; v != 0 || k == "cpu_us" {
			fmt.Fprintf(&b, " %s=%.3f", k, v)
		}
	}
	return b.String()
}

func once(bench, impl string, conns, size, pipe int, warmup, dur time.Duration) (map[string]float64, error) {
	bin, name := bench, impl
	if n, b, ok := strings.Cut(impl, "="); ok {
		name, bin, impl = n, b, "ioactor-ack"
	}
	srv := exec.Command(bin, "serve", "-impl", impl, "-listen", "127.0.0.1:0")
	srv.Env = append(os.Environ(), "IOACTOR_BENCH_SERVE=1")
	srv.Stderr = os.Stderr
	in, err := srv.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := srv.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := srv.Start(); err != nil {
		return nil, err
	}
	defer func() {
		in.Close()
		srv.Wait()
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if !ok {
		return nil, fmt.Errorf("server said %q", line)
	}
	outFile := fmt.Sprintf("/tmp/echo-syscalls-%d.csv", os.Getpid())
	defer os.Remove(outFile)
	args := []string{"stat", "-x", ",", "-o", outFile, "-p", strconv.Itoa(srv.Process.Pid)}
	for _, e := range events {
		ev, filter, ok := strings.Cut(e, "/")
		args = append(args, "-e", ev)
		if ok {
			args = append(args, "--filter", filter)
		}
	}
	if record != "" {
		args = []string{"record", "-F", "1999", "-g", "-o", fmt.Sprintf("%s-%s-%d.data", record, name, time.Now().Unix()), "-p", strconv.Itoa(srv.Process.Pid)}
	}
	var perf *exec.Cmd
	var perfErr error
	cfg := loadgen.Config{Addr: addr, Conns: conns, Size: size, Pipeline: pipe, Warmup: warmup, Duration: dur,
		OnMeasureStart: func() {
			perf = exec.Command("perf", args...)
			perf.Stderr = os.Stderr
			if perfErr = perf.Start(); perfErr == nil {
				time.Sleep(50 * time.Millisecond) // perf attaches
			}
		},
		OnMeasureEnd: func() {
			if perfErr == nil {
				perf.Process.Signal(syscall.SIGINT)
				perfErr = perf.Wait()
				var ee *exec.ExitError
				if errors.As(perfErr, &ee) {
					perfErr = nil // perf exits non-zero on SIGINT
				}
			}
		}}
	ctx, cancel := context.WithTimeout(context.Background(), warmup+dur+time.Minute)
	defer cancel()
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if perfErr != nil {
		return nil, fmt.Errorf("perf: %w", perfErr)
	}
	if res.FirstErr != nil {
		return nil, res.FirstErr
	}
	if record != "" {
		return map[string]float64{"msgs/s": res.MsgsPerSec()}, nil
	}
	b, err := os.ReadFile(outFile)
	if err != nil {
		return nil, err
	}
	msgs := float64(res.Messages)
	m := map[string]float64{"msgs/s": res.MsgsPerSec()}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Split(l, ",")
		if len(f) < 3 || strings.HasPrefix(l, "#") {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		k := short[f[2]]
		if k == "" {
			continue
		}
		if k == "cpu_us" {
			v *= 1000 // msec -> µs
		}
		m[k] = v / msgs
	}
	return m, nil
}
