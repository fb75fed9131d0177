package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/ioactor/ioactor/bench"
)

// progress is the one-line status on standard error: rewritten in place on a
// terminal, one line per step otherwise.
type progress struct {
	w          io.Writer
	tty        bool
	total, n   int
	start      time.Time
	lastLength int
}

func newProgress(w io.Writer, total int) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &progress{w: w, tty: tty, total: total, start: time.Now()}
}

func (p *progress) step(what string) {
	p.n++
	el := time.Since(p.start).Round(time.Second)
	eta := "?"
	if p.n > 1 {
		eta = (el / time.Duration(p.n-1) * time.Duration(p.total-p.n+1)).Round(time.Second).String()
	}
	line := fmt.Sprintf("[%*d/%d] %s  (elapsed %v, left ~%s)", len(fmt.Sprint(p.total)), p.n, p.total, what, el, eta)
	if p.tty {
		fmt.Fprintf(p.w, "\r%-*s", p.lastLength, line)
		p.lastLength = len(line)
		return
	}
	fmt.Fprintln(p.w, line)
}

// note prints a message on a line of its own.
func (p *progress) note(msg string) {
	if p.tty {
		fmt.Fprintln(p.w)
		p.lastLength = 0
	}
	fmt.Fprintln(p.w, "bench:", msg)
}

func (p *progress) done() {
	if p.tty {
		fmt.Fprintln(p.w)
	}
	fmt.Fprintf(p.w, "bench: %d runs in %v\n", p.n, time.Since(p.start).Round(time.Second))
}

func isOurs(i bench.Impl) bool { return strings.HasPrefix(string(i), "ioactor") }

// writeMarkdown prints the echo table and the idle-memory table.
func writeMarkdown(w io.Writer, rep *report, points []point, impls []bench.Impl) {
	byKey := make(map[string]*cell, len(rep.Cells))
	for _, c := range rep.Cells {
		byKey[key(c.Impl, c.Point)] = c
	}
	fmt.Fprintf(w, "Echo on loopback, %d CPUs, median of %d rounds of %s (after %s warm-up); every server in its own process.\n\n",
		rep.CPUs, rep.Rounds, rep.Duration, rep.Warmup)
	fmt.Fprintln(w, "| conns | size | in flight | server | MB/s | msgs/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/msg (user+sys) | CPU ÷ gnet | CPU ÷ net | allocs/msg | server RSS MiB |")
	fmt.Fprintln(w, "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, p := range points {
		ref := func(i bench.Impl) float64 {
			if c := byKey[key(i, p)]; c != nil && len(c.Rounds) > 0 {
				return c.Median.CPUUs
			}
			return 0
		}
		g, n := ref(bench.Gnet), ref(bench.Net)
		for _, i := range impls {
			c := byKey[key(i, p)]
			if len(c.Rounds) == 0 {
				fmt.Fprintf(w, "| %d | %s | %d | %s | failed: %s |||||||||\n", p.Conns, sizeName(p.Size), p.Pipeline, i, c.Failure)
				continue
			}
			m := c.Median
			ratio := func(base float64) string {
				if !isOurs(i) || base == 0 {
					return ""
				}
				return fmt.Sprintf("%.2f×", m.CPUUs/base)
			}
			fmt.Fprintf(w, "| %d | %s | %d | %s | %.1f | %.0f | %.0f | %.0f | %.0f | %.2f (%.2f+%.2f) | %s | %s | %s | %.1f |\n",
				p.Conns, sizeName(p.Size), p.Pipeline, i, m.MBps, m.MsgsPerSec, m.P50us, m.P99us, m.P999us,
				m.CPUUs, m.UserUs, m.SysUs, ratio(g), ratio(n), fmtAllocs(m.AllocsMsg), m.RSSMiB)
		}
	}
	if len(rep.Idle) == 0 {
		return
	}
	var netKiB float64
	for _, c := range rep.Idle {
		if c.Impl == bench.Net && len(c.Rounds) > 0 {
			netKiB = c.Median.KiBPerConn
		}
	}
	fmt.Fprintf(w, "\nIdle connections (each echoed one 64 B message, then quiet; RSS read 1 s later), median of %d rounds.\n\n", rep.Rounds)
	fmt.Fprintln(w, "| server | idle conns | RSS before MiB | RSS with idle MiB | KiB per conn | ÷ net |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: |")
	for _, c := range rep.Idle {
		if len(c.Rounds) == 0 {
			fmt.Fprintf(w, "| %s | failed: %s |||||\n", c.Impl, c.Failure)
			continue
		}
		m := c.Median
		r := ""
		if netKiB > 0 {
			r = fmt.Sprintf("%.2f×", m.KiBPerConn/netKiB)
		}
		fmt.Fprintf(w, "| %s | %d | %.1f | %.1f | %.2f | %s |\n", c.Impl, m.Conns, m.BaseMiB, m.IdleMiB, m.KiBPerConn, r)
	}
}

func sizeName(n int) string {
	if n >= 1024 && n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d B", n)
}

func fmtAllocs(a float64) string {
	if a == 0 {
		return "0"
	}
	return fmt.Sprintf("%.3f", a)
}
