// Package loadgen is the echo load generator shared by cmd/echo, cmd/bench
// and the benchmarks: C connections, fixed-size messages, a closed loop or a
// pipeline of several messages in flight, a warm-up, then a measured window
// that ends after a duration or a number of messages. It times every round
// trip into an HDR-style [Histogram] and, given the server's process ID,
// samples the server's CPU time and RSS over the window from /proc.
//
// Each connection keeps exactly Pipeline messages in flight: when replies
// arrive it records one latency per completed message and sends as many new
// messages in a single write, so the generator spends as few system calls as
// it can and leaves the CPU to the server it measures.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes one load run. Zero fields take the defaults noted.
type Config struct {
	Addr     string
	Conns    int           // default 1
	Size     int           // message size in bytes, default 64
	Pipeline int           // messages in flight per connection, default 1 (closed loop)
	Warmup   time.Duration // not measured
	Duration time.Duration // measured window, default 5 s (unless Messages is set)
	// Messages, when positive, ends the measured window once that many
	// round trips (over all connections) have completed; Duration, if also
	// set, still bounds the window.
	Messages int64
	// ServerPID, when positive, is the server's process: its CPU time and
	// RSS are sampled over the measured window into Result.Server.
	ServerPID int
	// OnMeasureStart and OnMeasureEnd, when set, are called on Run's
	// goroutine just before the measured window opens and just after it
	// closes (a benchmark resets and stops its timer there).
	OnMeasureStart, OnMeasureEnd func()
}

// Result is what the measured window saw.
type Result struct {
	Messages int64
	Bytes    int64 // echoed bytes
	Elapsed  time.Duration
	Latency  Histogram   // round trip per message
	Server   ServerUsage // zero unless Config.ServerPID was set
	FirstErr error
}

// MBps is the echoed throughput in MB/s (10^6 bytes).
func (r *Result) MBps() float64 { return float64(r.Bytes) / r.Elapsed.Seconds() / 1e6 }

// MsgsPerSec is the message rate.
func (r *Result) MsgsPerSec() float64 { return float64(r.Messages) / r.Elapsed.Seconds() }

// CPUPerMessage is the server's CPU time (user + system) per message; zero
// without a ServerPID.
func (r *Result) CPUPerMessage() time.Duration {
	if r.Messages == 0 {
		return 0
	}
	return r.Server.CPU() / time.Duration(r.Messages)
}

// window is the state the connections share.
type window struct {
	measuring atomic.Bool
	budget    atomic.Int64 // messages left when counting
	counting  bool
	full      chan struct{} // closed when the budget is spent
	stop      chan struct{} // closed when the connections must stop
}

// take reports whether a completed round trip counts.
func (w *window) take() bool {
	if !w.measuring.Load() {
		return false
	}
	if !w.counting {
		return true
	}
	left := w.budget.Add(-1)
	if left == 0 {
		close(w.full)
	}
	return left >= 0
}

// Run opens the connections, warms up, measures, and closes them.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if cfg.Conns <= 0 {
		cfg.Conns = 1
	}
	if cfg.Size <= 0 {
		cfg.Size = 64
	}
	if cfg.Pipeline <= 0 {
		cfg.Pipeline = 1
	}
	if cfg.Duration <= 0 && cfg.Messages <= 0 {
		cfg.Duration = 5 * time.Second
	}
	conns := make([]net.Conn, 0, cfg.Conns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	d := net.Dialer{Timeout: 5 * time.Second}
	for range cfg.Conns {
		c, err := d.DialContext(ctx, "tcp", cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("loadgen: dial %s: %w", cfg.Addr, err)
		}
		conns = append(conns, c)
	}
	w := &window{counting: cfg.Messages > 0, full: make(chan struct{}), stop: make(chan struct{})}
	w.budget.Store(cfg.Messages)
	res := &Result{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var h Histogram
			n, err := drive(c, cfg, w, &h)
			mu.Lock()
			res.Messages += n
			res.Latency.Merge(&h)
			if err != nil && res.FirstErr == nil {
				res.FirstErr = err
			}
			mu.Unlock()
		}()
	}
	stopConns := func() {
		close(w.stop)
		for _, c := range conns {
			c.SetDeadline(time.Now()) // unblock readers
		}
		wg.Wait()
	}
	wait := func(d time.Duration, full <-chan struct{}) bool {
		var timeout <-chan time.Time
		if d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-timeout:
			return true
		case <-full:
			return true
		case <-ctx.Done():
			return false
		}
	}
	if !wait(cfg.Warmup, nil) {
		stopConns()
		return res, ctx.Err()
	}
	var sampler *procSampler
	if cfg.ServerPID > 0 {
		s, err := startSampling(cfg.ServerPID, 100*time.Millisecond)
		if err != nil {
			stopConns()
			return nil, err
		}
		sampler = s
	}
	if cfg.OnMeasureStart != nil {
		cfg.OnMeasureStart()
	}
	start := time.Now()
	w.measuring.Store(true)
	wait(cfg.Duration, w.full)
	w.measuring.Store(false)
	res.Elapsed = time.Since(start)
	if cfg.OnMeasureEnd != nil {
		cfg.OnMeasureEnd()
	}
	var serr error
	if sampler != nil {
		res.Server, serr = sampler.finish()
	}
	stopConns()
	res.Bytes = res.Messages * int64(cfg.Size)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, serr
}

// drive runs one connection: Pipeline messages in flight, each reply timed.
func drive(c net.Conn, cfg Config, w *window, h *Histogram) (int64, error) {
	size, depth := cfg.Size, cfg.Pipeline
	out := make([]byte, size*depth)
	// At most size*depth bytes are ever in flight, so one read never takes
	// more than the replies to messages already sent.
	in := make([]byte, size*depth)
	sent := make([]time.Time, depth) // send times, a FIFO ring
	now := time.Now()
	for i := range sent {
		sent[i] = now
	}
	if _, err := c.Write(out); err != nil {
		return 0, err
	}
	head, partial := 0, 0
	var n int64
	for {
		r, err := c.Read(in)
		if err != nil {
			select {
			case <-w.stop:
				return n, nil
			default:
			}
			if errors.Is(err, io.EOF) {
				return n, fmt.Errorf("loadgen: server closed the connection: %w", err)
			}
			return n, err
		}
		now := time.Now()
		partial += r
		k := partial / size
		partial %= size
		for range k {
			if w.take() {
				h.Record(now.Sub(sent[head]))
				n++
			}
			sent[head] = now
			if head++; head == depth {
				head = 0
			}
		}
		select {
		case <-w.stop:
			return n, nil
		default:
		}
		if k > 0 {
			if _, err := c.Write(out[:k*size]); err != nil {
				select {
				case <-w.stop: // the deadline that stops the run
					return n, nil
				default:
				}
				return n, err
			}
		}
	}
}
