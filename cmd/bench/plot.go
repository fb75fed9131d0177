package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/ioactor/ioactor/bench"
	"github.com/ioactor/ioactor/internal/svgchart"
)

// The charts: one panel per (size, pipeline), the connection count on a
// categorical x axis, one line per contender (internal/svgchart draws them).

func writePlots(dir string, rep *report, conns, sizes, pipes []int, impls []bench.Impl) error {
	charts := []struct {
		file, title, unit string
		log               bool
		value             func(sample) float64
	}{
		{"throughput.svg", "Echo throughput vs connections", "messages/s", false, func(s sample) float64 { return s.MsgsPerSec }},
		{"latency-p99.svg", "Echo p99 round-trip latency vs connections", "p99 µs (log)", true, func(s sample) float64 { return s.P99us }},
		{"cpu-per-message.svg", "Server CPU per message vs connections", "µs/msg (user+sys)", false, func(s sample) float64 { return s.CPUUs }},
	}
	var errs []error
	for _, c := range charts {
		svg := chart(rep, c.title, c.unit, c.log, c.value, conns, sizes, pipes, impls)
		errs = append(errs, os.WriteFile(filepath.Join(dir, c.file), svg, 0o644))
	}
	return errors.Join(errs...)
}

func chart(rep *report, title, unit string, logY bool, value func(sample) float64, conns, sizes, pipes []int, impls []bench.Impl) []byte {
	byKey := make(map[string]*cell)
	for _, c := range rep.Cells {
		byKey[key(c.Impl, c.Point)] = c
	}
	c := svgchart.Chart{
		Title:   fmt.Sprintf("%s (%d CPUs, median of %d × %s)", title, rep.CPUs, rep.Rounds, rep.Duration),
		Columns: len(pipes),
	}
	for _, i := range impls {
		c.Series = append(c.Series, string(i))
	}
	var xs []string
	for _, n := range conns {
		xs = append(xs, strconv.Itoa(n))
	}
	for _, size := range sizes {
		for _, pipe := range pipes {
			p := svgchart.Panel{
				Title:  fmt.Sprintf("%s messages, %d in flight per connection", sizeName(size), pipe),
				XLabel: "connections", YLabel: unit, LogY: logY, X: xs,
			}
			for _, i := range impls {
				ys := make([]float64, len(conns))
				for k, n := range conns {
					if cl := byKey[key(i, point{n, size, pipe})]; cl != nil && len(cl.Rounds) > 0 {
						ys[k] = value(cl.Median)
					}
				}
				p.Y = append(p.Y, ys)
			}
			c.Panels = append(c.Panels, p)
		}
	}
	return svgchart.Draw(c)
}
