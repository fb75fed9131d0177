// Package loadgen is the echo load generator shared by cmd/echo and the
// benchmarks: C connections, fixed-size messages, a closed loop or a
// pipeline of several messages in flight, a warm-up, then a measured window.
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
	Duration time.Duration // measured window, default 5 s
}

// Result is what the measured window saw.
type Result struct {
	Messages int64
	Bytes    int64 // echoed bytes
	Elapsed  time.Duration
	Latency  Histogram // round trip per message
	FirstErr error
}

// MBps is the echoed throughput in MB/s (10^6 bytes).
func (r *Result) MBps() float64 { return float64(r.Bytes) / r.Elapsed.Seconds() / 1e6 }

// MsgsPerSec is the message rate.
func (r *Result) MsgsPerSec() float64 { return float64(r.Messages) / r.Elapsed.Seconds() }

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
	if cfg.Duration <= 0 {
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
	var measuring atomic.Bool
	stop := make(chan struct{})
	res := &Result{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var h Histogram
			n, err := drive(c, cfg, &measuring, stop, &h)
			mu.Lock()
			res.Messages += n
			res.Latency.Merge(&h)
			if err != nil && res.FirstErr == nil {
				res.FirstErr = err
			}
			mu.Unlock()
		}()
	}
	timer := func(d time.Duration) bool {
		select {
		case <-time.After(d):
			return true
		case <-ctx.Done():
			return false
		}
	}
	ok := timer(cfg.Warmup)
	start := time.Now()
	measuring.Store(true)
	if ok {
		timer(cfg.Duration)
	}
	measuring.Store(false)
	res.Elapsed = time.Since(start)
	close(stop)
	for _, c := range conns {
		c.SetDeadline(time.Now()) // unblock readers
	}
	wg.Wait()
	res.Bytes = res.Messages * int64(cfg.Size)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	return res, nil
}

// drive runs one connection: Pipeline messages in flight, each reply timed.
func drive(c net.Conn, cfg Config, measuring *atomic.Bool, stop chan struct{}, h *Histogram) (int64, error) {
	msg := make([]byte, cfg.Size)
	buf := make([]byte, cfg.Size)
	sent := make([]time.Time, cfg.Pipeline) // FIFO of send times
	head := 0
	for i := range cfg.Pipeline {
		sent[i] = time.Now()
		if _, err := c.Write(msg); err != nil {
			return 0, err
		}
	}
	var n int64
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			select {
			case <-stop:
				return n, nil
			default:
			}
			if errors.Is(err, io.EOF) {
				return n, fmt.Errorf("loadgen: server closed the connection: %w", err)
			}
			return n, err
		}
		now := time.Now()
		if measuring.Load() {
			h.Record(now.Sub(sent[head]))
			n++
		}
		select {
		case <-stop:
			return n, nil
		default:
		}
		sent[head] = now
		head = (head + 1) % cfg.Pipeline
		if _, err := c.Write(msg); err != nil {
			return n, err
		}
	}
}
