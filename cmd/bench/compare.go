package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ioactor/ioactor/bench"
	"github.com/ioactor/ioactor/internal/cli"
	"github.com/ioactor/ioactor/internal/loadgen"
)

type serverOpts struct {
	loops, netBuf int
	base          string // -base: the bench binary that serves baseImpl
}

// baseImpl is the contender -base adds: the ACK-flow echo of another build
// of this command (main, say, against a branch), in the same interleaved
// run.
const baseImpl bench.Impl = "ioactor-ack@base"

// point is one cell of the matrix.
type point struct {
	Conns    int `json:"conns"`
	Size     int `json:"size"`
	Pipeline int `json:"pipeline"`
}

func (p point) String() string {
	return fmt.Sprintf("c=%d size=%d pipeline=%d", p.Conns, p.Size, p.Pipeline)
}

// sample is one measurement of one contender at one point.
type sample struct {
	MBps       float64 `json:"mb_per_s"`
	MsgsPerSec float64 `json:"msgs_per_s"`
	P50us      float64 `json:"p50_us"`
	P99us      float64 `json:"p99_us"`
	P999us     float64 `json:"p999_us"`
	UserUs     float64 `json:"server_user_us_per_msg"`
	SysUs      float64 `json:"server_sys_us_per_msg"`
	CPUUs      float64 `json:"server_cpu_us_per_msg"` // user + sys
	AllocsMsg  float64 `json:"server_allocs_per_msg"`
	BytesMsg   float64 `json:"server_alloc_bytes_per_msg"`
	RSSMiB     float64 `json:"server_rss_mib"`
}

type cell struct {
	Impl    bench.Impl `json:"impl"`
	Point   point      `json:"point"`
	Rounds  []sample   `json:"rounds"`
	Median  sample     `json:"median"`
	Failure string     `json:"failure,omitempty"`
}

// idleSample is the memory of one server holding idle connections.
type idleSample struct {
	Conns      int     `json:"conns"`
	BaseMiB    float64 `json:"rss_before_mib"`
	IdleMiB    float64 `json:"rss_with_idle_mib"`
	KiBPerConn float64 `json:"kib_per_conn"`
}

type idleCell struct {
	Impl    bench.Impl   `json:"impl"`
	Rounds  []idleSample `json:"rounds"`
	Median  idleSample   `json:"median"`
	Failure string       `json:"failure,omitempty"`
}

type report struct {
	Command  string     `json:"command"`
	Version  string     `json:"version"`
	Started  time.Time  `json:"started"`
	CPUs     int        `json:"cpus"`
	Rounds   int        `json:"rounds"`
	Warmup   string     `json:"warmup"`
	Duration string     `json:"duration"`
	Impls    []string   `json:"impls"`
	Cells    []*cell    `json:"cells"`
	Idle     []idleCell `json:"idle,omitempty"`
}

func intList(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad number %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func compare(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	implsFlag := fs.String("impls", joinImpls(bench.Impls()), "contenders, in the order they run")
	connsFlag := fs.String("conns", "1,64,1000", "connection counts")
	sizesFlag := fs.String("sizes", "64,4096", "message sizes in bytes")
	pipesFlag := fs.String("pipelines", "1,16", "messages in flight per connection (1: closed loop)")
	rounds := fs.Int("rounds", 3, "rounds; every contender runs once per point per round, medians are reported")
	warmup := fs.Duration("warmup", time.Second, "warm-up before each measured window")
	duration := fs.Duration("duration", 5*time.Second, "measured window")
	idle := fs.Int("idle", 10000, "idle connections for the memory measurement (0: skip)")
	jsonPath := fs.String("json", "bench.json", "write the results as JSON here (empty: don't)")
	plotDir := fs.String("plot", "", "write SVG charts (throughput.svg, latency-p99.svg) into this directory")
	profDir := fs.String("cpuprofile", "", "write a CPU profile of each server's measured window into this directory")
	heapDir := fs.String("heapprofile", "", "write a heap profile of each server holding the idle connections into this directory")
	var opts serverOpts
	fs.IntVar(&opts.loops, "loops", 0, "event loops of ioactor and gnet (0: one per core)")
	fs.IntVar(&opts.netBuf, "netbuf", bench.DefaultNetBuffer, "per-connection buffer of the net echo")
	fs.StringVar(&opts.base, "base", "", "also run the ioactor-ack echo of this bench binary (another build) as the first contender, "+string(baseImpl))
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage:\n  bench [flags]        run the echo comparison\n  bench serve [flags]  one contender's server (the comparison starts these)\n  bench storm [flags]  a TFTP boot storm against one running server\n  bench -version\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := cli.Parse(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return cli.Usagef(stderr, "bench: unexpected arguments %q (subcommand: serve; bench -h for the flags)", fs.Args())
	}
	var impls []bench.Impl
	if opts.base != "" {
		impls = append(impls, baseImpl)
	}
	for f := range strings.SplitSeq(*implsFlag, ",") {
		i, err := bench.ParseImpl(strings.TrimSpace(f))
		if err != nil {
			return err
		}
		impls = append(impls, i)
	}
	conns, err1 := intList(*connsFlag)
	sizes, err2 := intList(*sizesFlag)
	pipes, err3 := intList(*pipesFlag)
	if err := errors.Join(err1, err2, err3); err != nil {
		return err
	}
	if *rounds < 1 {
		return errors.New("-rounds must be at least 1")
	}
	if err := raiseFileLimit(); err != nil {
		fmt.Fprintln(stderr, "bench: warning:", err)
	}
	for _, d := range []string{*plotDir, *profDir, *heapDir} {
		if d != "" {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
	}

	rep := &report{
		Command: "go run ./cmd/bench " + strings.Join(args, " "),
		Version: cli.Version(), Started: time.Now().UTC(), CPUs: runtime.NumCPU(),
		Rounds: *rounds, Warmup: warmup.String(), Duration: duration.String(),
	}
	for _, i := range impls {
		rep.Impls = append(rep.Impls, string(i))
	}
	var points []point
	for _, c := range conns {
		for _, s := range sizes {
			for _, p := range pipes {
				points = append(points, point{Conns: c, Size: s, Pipeline: p})
			}
		}
	}
	cells := make(map[string]*cell)
	for _, p := range points {
		for _, i := range impls {
			c := &cell{Impl: i, Point: p}
			cells[key(i, p)] = c
			rep.Cells = append(rep.Cells, c)
		}
	}
	idleCells := make([]idleCell, len(impls))
	for k, i := range impls {
		idleCells[k].Impl = i
	}

	prog := newProgress(stderr, *rounds*(len(points)+boolInt(*idle > 0))*len(impls))
	for r := 1; r <= *rounds; r++ {
		for _, p := range points {
			for _, i := range impls {
				if err := ctx.Err(); err != nil {
					return err
				}
				prog.step(fmt.Sprintf("round %d/%d  %-12s %s", r, *rounds, i, p))
				c := cells[key(i, p)]
				var prof string
				if *profDir != "" {
					prof = filepath.Join(*profDir, fmt.Sprintf("%s-c%d-s%d-p%d-r%d.pprof", i, p.Conns, p.Size, p.Pipeline, r))
				}
				s, err := measure(ctx, i, p, opts, *warmup, *duration, prof, stderr)
				if err != nil {
					prog.note(fmt.Sprintf("%s %s: %v", i, p, err))
					if c.Failure == "" {
						c.Failure = err.Error()
					}
					continue
				}
				c.Rounds = append(c.Rounds, s)
			}
		}
		if *idle > 0 {
			for k, i := range impls {
				if err := ctx.Err(); err != nil {
					return err
				}
				prog.step(fmt.Sprintf("round %d/%d  %-12s %d idle connections", r, *rounds, i, *idle))
				var heap string
				if *heapDir != "" {
					heap = filepath.Join(*heapDir, fmt.Sprintf("%s-idle%d-r%d.pprof", i, *idle, r))
				}
				s, err := measureIdle(ctx, i, *idle, opts, heap, stderr)
				if err != nil {
					prog.note(fmt.Sprintf("%s idle: %v", i, err))
					if idleCells[k].Failure == "" {
						idleCells[k].Failure = err.Error()
					}
					continue
				}
				idleCells[k].Rounds = append(idleCells[k].Rounds, s)
			}
		}
	}
	prog.done()
	for _, c := range rep.Cells {
		c.Median = medianSample(c.Rounds)
	}
	if *idle > 0 {
		for k := range idleCells {
			idleCells[k].Median = medianIdle(idleCells[k].Rounds)
		}
		rep.Idle = idleCells
	}
	writeMarkdown(stdout, rep, points, impls)
	var errs []error
	if *jsonPath != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err == nil {
			err = os.WriteFile(*jsonPath, append(b, '\n'), 0o644)
		}
		errs = append(errs, err)
	}
	if *plotDir != "" {
		errs = append(errs, writePlots(*plotDir, rep, conns, sizes, pipes, impls))
	}
	return errors.Join(errs...)
}

func key(i bench.Impl, p point) string { return string(i) + " " + p.String() }

func joinImpls(impls []bench.Impl) string {
	s := make([]string, len(impls))
	for k, i := range impls {
		s[k] = string(i)
	}
	return strings.Join(s, ",")
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// raiseFileLimit lifts the soft RLIMIT_NOFILE to the hard one, for the idle
// connections (the Go runtime does so too at start; this makes it explicit).
func raiseFileLimit() error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return fmt.Errorf("raise RLIMIT_NOFILE: %w", err)
		}
	}
	return nil
}

// measure starts impl's server, runs one load at p, and stops the server.
func measure(ctx context.Context, impl bench.Impl, p point, opts serverOpts, warmup, dur time.Duration, prof string, stderr io.Writer) (sample, error) {
	ch, err := startChild(ctx, impl, opts, stderr)
	if err != nil {
		return sample{}, err
	}
	var s0, s1 runtimeStats
	var hookErr error
	res, err := loadgen.Run(ctx, loadgen.Config{
		Addr: ch.addr, Conns: p.Conns, Size: p.Size, Pipeline: p.Pipeline,
		Warmup: warmup, Duration: dur, ServerPID: ch.pid(),
		OnMeasureStart: func() {
			var perr error
			if prof != "" {
				_, perr = ch.call("cpuprofile " + prof)
			}
			var err error
			s0, err = ch.stats()
			hookErr = errors.Join(hookErr, perr, err)
		},
		OnMeasureEnd: func() {
			var err error
			s1, err = ch.stats()
			if prof != "" {
				_, perr := ch.call("cpuprofile-stop")
				err = errors.Join(err, perr)
			}
			hookErr = errors.Join(hookErr, err)
		},
	})
	err = errors.Join(err, hookErr)
	if res != nil && res.FirstErr != nil {
		err = errors.Join(err, res.FirstErr)
	}
	if serr := ch.stop(); serr != nil {
		err = errors.Join(err, fmt.Errorf("server exit: %w", serr))
	}
	if err != nil {
		return sample{}, err
	}
	if res.Messages == 0 {
		return sample{}, errors.New("no message completed in the window")
	}
	n := float64(res.Messages)
	return sample{
		MBps:       res.MBps(),
		MsgsPerSec: res.MsgsPerSec(),
		P50us:      us(res.Latency.Quantile(0.5)),
		P99us:      us(res.Latency.Quantile(0.99)),
		P999us:     us(res.Latency.Quantile(0.999)),
		UserUs:     us(res.Server.User) / n,
		SysUs:      us(res.Server.Sys) / n,
		CPUUs:      us(res.Server.CPU()) / n,
		AllocsMsg:  float64(s1.Allocs-s0.Allocs) / n,
		BytesMsg:   float64(s1.AllocBytes-s0.AllocBytes) / n,
		RSSMiB:     float64(res.Server.RSSMax) / (1 << 20),
	}, nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// measureIdle reads the server's RSS, opens n connections that each echo one
// 64-byte message and then stay quiet, waits for the server to settle, and
// reads its RSS again; with heap set, it then writes a heap profile there.
func measureIdle(ctx context.Context, impl bench.Impl, n int, opts serverOpts, heap string, stderr io.Writer) (idleSample, error) {
	ch, err := startChild(ctx, impl, opts, stderr)
	if err != nil {
		return idleSample{}, err
	}
	s, err := func() (idleSample, error) {
		time.Sleep(300 * time.Millisecond)
		before, err := loadgen.ReadProc(ch.pid())
		if err != nil {
			return idleSample{}, err
		}
		ic, err := loadgen.OpenIdle(ctx, ch.addr, n, 64)
		if err != nil {
			return idleSample{}, err
		}
		defer ic.Close()
		time.Sleep(time.Second)
		after, err := loadgen.ReadProc(ch.pid())
		if err != nil {
			return idleSample{}, err
		}
		if heap != "" {
			if _, err := ch.call("heapprofile " + heap); err != nil {
				return idleSample{}, err
			}
		}
		return idleSample{
			Conns:      ic.Len(),
			BaseMiB:    float64(before.RSS) / (1 << 20),
			IdleMiB:    float64(after.RSS) / (1 << 20),
			KiBPerConn: float64(after.RSS-before.RSS) / 1024 / float64(ic.Len()),
		}, nil
	}()
	if serr := ch.stop(); serr != nil {
		err = errors.Join(err, fmt.Errorf("server exit: %w", serr))
	}
	return s, err
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianOf[T any](xs []T, f func(T) float64) float64 {
	v := make([]float64, len(xs))
	for i, x := range xs {
		v[i] = f(x)
	}
	return median(v)
}

// medianSample takes each metric's median on its own.
func medianSample(r []sample) sample {
	return sample{
		MBps:       medianOf(r, func(s sample) float64 { return s.MBps }),
		MsgsPerSec: medianOf(r, func(s sample) float64 { return s.MsgsPerSec }),
		P50us:      medianOf(r, func(s sample) float64 { return s.P50us }),
		P99us:      medianOf(r, func(s sample) float64 { return s.P99us }),
		P999us:     medianOf(r, func(s sample) float64 { return s.P999us }),
		UserUs:     medianOf(r, func(s sample) float64 { return s.UserUs }),
		SysUs:      medianOf(r, func(s sample) float64 { return s.SysUs }),
		CPUUs:      medianOf(r, func(s sample) float64 { return s.CPUUs }),
		AllocsMsg:  medianOf(r, func(s sample) float64 { return s.AllocsMsg }),
		BytesMsg:   medianOf(r, func(s sample) float64 { return s.BytesMsg }),
		RSSMiB:     medianOf(r, func(s sample) float64 { return s.RSSMiB }),
	}
}

func medianIdle(r []idleSample) idleSample {
	return idleSample{
		Conns:      int(medianOf(r, func(s idleSample) float64 { return float64(s.Conns) })),
		BaseMiB:    medianOf(r, func(s idleSample) float64 { return s.BaseMiB }),
		IdleMiB:    medianOf(r, func(s idleSample) float64 { return s.IdleMiB }),
		KiBPerConn: medianOf(r, func(s idleSample) float64 { return s.KiBPerConn }),
	}
}
