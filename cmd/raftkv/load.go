package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ioactor/ioactor/internal/cli"

	"github.com/ioactor/ioactor/internal/loadgen"
	"github.com/ioactor/ioactor/internal/term"
)

// loadConfig describes one load run.
type loadConfig struct {
	nodes    []string
	users    int
	ramp     time.Duration // users start evenly over it
	duration time.Duration // the whole run, ramp included
	writes   float64       // fraction of operations that are writes
	keys     int
	size     int
	stale    bool
	timeout  time.Duration
	bucket   time.Duration // rows of the final table; 0: about ten rows
	seed     uint64
}

func runLoad(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	var cfg loadConfig
	nodes := fs.String("nodes", "", "comma-separated HTTP addresses of the nodes (required)")
	fs.IntVar(&cfg.users, "users", 100, "concurrent users at the end of the ramp")
	fs.DurationVar(&cfg.ramp, "ramp", 20*time.Second, "time over which users start, evenly")
	fs.DurationVar(&cfg.duration, "duration", 30*time.Second, "length of the run, ramp included")
	fs.Float64Var(&cfg.writes, "writes", 0.5, "fraction of operations that are writes (PUT); the rest are reads (GET)")
	fs.IntVar(&cfg.keys, "keys", 1000, "number of distinct keys")
	fs.IntVar(&cfg.size, "size", 128, "value size in bytes")
	fs.BoolVar(&cfg.stale, "stale", false, "read with ?stale=1 (served locally by any node)")
	fs.DurationVar(&cfg.timeout, "timeout", 5*time.Second, "per-request timeout (a request that takes longer fails)")
	fs.DurationVar(&cfg.bucket, "bucket", 0, "time span of a row of the final table (0: about ten rows)")
	fs.Uint64Var(&cfg.seed, "seed", uint64(time.Now().UnixNano()), "random seed")
	progress := fs.String("progress", "auto", "per-second progress line on stderr: auto (if a terminal), on, off")
	if err := cli.Parse(fs, args, stdout, stderr); err != nil {
		return err
	}
	for _, a := range strings.Split(*nodes, ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.nodes = append(cfg.nodes, strings.TrimPrefix(a, "http://"))
		}
	}
	switch {
	case len(cfg.nodes) == 0:
		return errors.New("load: -nodes is required")
	case cfg.users < 1 || cfg.keys < 1 || cfg.size < 0 || cfg.duration <= 0 || cfg.ramp < 0:
		return errors.New("load: -users and -keys must be positive, -duration positive, -ramp and -size not negative")
	case cfg.writes < 0 || cfg.writes > 1:
		return errors.New("load: -writes must be in [0, 1]")
	}
	var pw io.Writer
	switch *progress {
	case "on":
		pw = stderr
	case "auto":
		if term.IsTerminal(stderr) {
			pw = stderr
		}
	case "off":
	default:
		return fmt.Errorf("load: -progress %q: want auto, on or off", *progress)
	}
	res := runLoadgen(ctx, cfg, pw)
	res.writeTable(stdout, cfg)
	if ctx.Err() != nil {
		return fmt.Errorf("load: interrupted: %w", ctx.Err())
	}
	return nil
}

// second is what completed in one second of the run.
type second struct {
	ok, failed    uint64
	writes, reads uint64 // successful
	users         int    // the most users active
	latency       loadgen.Histogram
}

// loadResult is a run's record, per second.
type loadResult struct {
	mu       sync.Mutex
	start    time.Time
	elapsed  time.Duration
	secs     []second
	failures map[string]*failureKind
}

type failureKind struct {
	n     uint64
	first string
}

func (r *loadResult) record(end time.Time, lat time.Duration, write bool, users int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i := min(max(int(end.Sub(r.start)/time.Second), 0), len(r.secs)-1)
	s := &r.secs[i]
	s.users = max(s.users, users)
	if err != nil {
		s.failed++
		k := failureName(err)
		f := r.failures[k]
		if f == nil {
			f = &failureKind{first: err.Error()}
			r.failures[k] = f
		}
		f.n++
		return
	}
	s.ok++
	if write {
		s.writes++
	} else {
		s.reads++
	}
	s.latency.Record(lat)
}

// statusError is an unexpected HTTP status.
type statusError struct {
	code int
	body string
}

func (e *statusError) Error() string { return fmt.Sprintf("HTTP %d: %s", e.code, e.body) }

func failureName(err error) string {
	var se *statusError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("HTTP %d", se.code)
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection lost"
	}
	return "other"
}

// runLoadgen runs the load: users start evenly over cfg.ramp, each in a
// closed loop of requests to a random node until cfg.duration has passed
// since the start. It writes a progress line to pw each second, if pw is
// not nil.
func runLoadgen(ctx context.Context, cfg loadConfig, pw io.Writer) *loadResult {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: cfg.timeout}).DialContext,
		MaxIdleConns:        cfg.users * len(cfg.nodes),
		MaxIdleConnsPerHost: cfg.users,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	res := &loadResult{
		start:    time.Now(),
		secs:     make([]second, int((cfg.duration+time.Second-1)/time.Second)),
		failures: make(map[string]*failureKind),
	}
	ctx, cancel := context.WithDeadline(ctx, res.start.Add(cfg.duration))
	defer cancel()

	var (
		wg     sync.WaitGroup
		active atomic.Int64
	)
	user := func(i int) {
		defer active.Add(-1)
		rng := rand.New(rand.NewPCG(cfg.seed, uint64(i)))
		val := make([]byte, cfg.size)
		for ctx.Err() == nil {
			node := cfg.nodes[rng.IntN(len(cfg.nodes))]
			key := "k" + strconv.Itoa(rng.IntN(cfg.keys))
			write := rng.Float64() < cfg.writes
			if write {
				for j := range val {
					val[j] = 'a' + byte(rng.IntN(26))
				}
			}
			t0 := time.Now()
			err := doRequest(ctx, client, cfg, node, key, write, val)
			if err != nil && ctx.Err() != nil {
				return // cut short by the end of the run: not a failure
			}
			res.record(time.Now(), time.Since(t0), write, int(active.Load()), err)
		}
	}
	// The ramp: user i starts at i/users of the ramp.
	wg.Go(func() {
		for i := range cfg.users {
			at := res.start.Add(cfg.ramp * time.Duration(i) / time.Duration(cfg.users))
			if d := time.Until(at); d > 0 {
				t := time.NewTimer(d)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			active.Add(1)
			wg.Go(func() { user(i) })
		}
	})

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var failedTotal uint64
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-tick.C:
			if pw == nil {
				continue
			}
			i := int(time.Since(res.start)/time.Second) - 1 // the second just completed
			res.mu.Lock()
			if i >= 0 && i < len(res.secs) {
				s := &res.secs[i]
				failedTotal += s.failed
				fmt.Fprintf(pw, "\r\033[K%4ds  users %3d/%d  %7.0f ops/s  p50 %s  p99 %s  failures %d (total %d)",
					i+1, active.Load(), cfg.users, float64(s.ok), fmtDur(s.latency.Quantile(0.50)), fmtDur(s.latency.Quantile(0.99)), s.failed, failedTotal)
			}
			res.mu.Unlock()
		}
	}
	wg.Wait()
	res.elapsed = time.Since(res.start)
	if pw != nil {
		fmt.Fprintln(pw)
	}
	return res
}

func doRequest(ctx context.Context, client *http.Client, cfg loadConfig, node, key string, write bool, val []byte) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	url := "http://" + node + "/kv/" + key
	method, want := http.MethodGet, http.StatusOK
	var body io.Reader
	if write {
		method, want, body = http.MethodPut, http.StatusNoContent, strings.NewReader(string(val))
	} else if cfg.stale {
		url += "?stale=1"
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxValueSize))
	if err != nil {
		return err
	}
	if resp.StatusCode == want || !write && resp.StatusCode == http.StatusNotFound {
		return nil
	}
	msg := strings.TrimSpace(string(b))
	if len(msg) > 120 {
		msg = msg[:120] + "…"
	}
	return &statusError{code: resp.StatusCode, body: msg}
}

// writeTable prints the run as Markdown: one row per time bucket and a
// total, then the failures by kind.
func (r *loadResult) writeTable(w io.Writer, cfg loadConfig) {
	r.mu.Lock()
	defer r.mu.Unlock()
	reads := "linearizable reads"
	if cfg.stale {
		reads = "stale reads"
	}
	fmt.Fprintf(w, "\nraftkv load: %d nodes, %d users (ramp %v), %v, %.0f%% writes / %s, %d keys, %d-byte values\n\n",
		len(cfg.nodes), cfg.users, cfg.ramp, cfg.duration, cfg.writes*100, reads, cfg.keys, cfg.size)
	bucket := int(cfg.bucket / time.Second)
	if bucket <= 0 {
		bucket = max(1, (len(r.secs)+9)/10)
	}
	fmt.Fprintln(w, "| time | users | ops/s | writes/s | reads/s | p50 | p99 | p99.9 | failures |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	var total second
	row := func(label string, s *second, secs float64) {
		fmt.Fprintf(w, "| %s | %d | %.0f | %.0f | %.0f | %s | %s | %s | %d |\n", label, s.users,
			float64(s.ok)/secs, float64(s.writes)/secs, float64(s.reads)/secs,
			fmtDur(s.latency.Quantile(0.50)), fmtDur(s.latency.Quantile(0.99)), fmtDur(s.latency.Quantile(0.999)), s.failed)
	}
	for from := 0; from < len(r.secs); from += bucket {
		to := min(from+bucket, len(r.secs))
		var b second
		for i := from; i < to; i++ {
			s := &r.secs[i]
			b.ok += s.ok
			b.failed += s.failed
			b.writes += s.writes
			b.reads += s.reads
			b.users = max(b.users, s.users)
			b.latency.Merge(&s.latency)
		}
		// The last second may be cut short by the end of the run.
		secs := min(float64(to-from), r.elapsed.Seconds()-float64(from))
		row(fmt.Sprintf("%d–%d s", from, to), &b, max(secs, 1e-3))
		total.ok += b.ok
		total.failed += b.failed
		total.writes += b.writes
		total.reads += b.reads
		total.users = max(total.users, b.users)
		total.latency.Merge(&b.latency)
	}
	row("**total**", &total, r.elapsed.Seconds())
	fmt.Fprintln(w)
	if len(r.failures) == 0 {
		fmt.Fprintln(w, "failures: none")
		return
	}
	kinds := make([]string, 0, len(r.failures))
	for k := range r.failures {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	fmt.Fprintln(w, "failures by kind:")
	for _, k := range kinds {
		f := r.failures[k]
		fmt.Fprintf(w, "- %s: %d (first: %s)\n", k, f.n, f.first)
	}
}

// fmtDur prints a latency in milliseconds with three significant digits.
func fmtDur(d time.Duration) string {
	ms := float64(d) / 1e6
	switch {
	case ms >= 100:
		return fmt.Sprintf("%.0f ms", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1f ms", ms)
	default:
		return fmt.Sprintf("%.2f ms", ms)
	}
}
