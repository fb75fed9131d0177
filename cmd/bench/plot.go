package main

import (
	"bytes"
	"errors"
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"

	"github.com/ioactor/ioactor/bench"
)

// The charts are hand-written SVG: one panel per (size, pipeline), the
// connection count on a categorical x axis, one line per contender.

var palette = []string{"#1f77b4", "#17becf", "#2ca02c", "#d62728", "#7f7f7f", "#9467bd", "#ff7f0e"}

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
	const (
		pw, ph         = 380, 250 // panel
		ml, mr, mt, mb = 70, 20, 40, 45
		top            = 70 // title and legend
	)
	byKey := make(map[string]*cell)
	for _, c := range rep.Cells {
		byKey[key(c.Impl, c.Point)] = c
	}
	cols, rows := len(pipes), len(sizes)
	W, H := cols*(pw+ml+mr), top+rows*(ph+mt+mb)
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="16" text-anchor="middle">%s (%d CPUs, median of %d × %s)</text>`+"\n", W/2, html.EscapeString(title), rep.CPUs, rep.Rounds, rep.Duration)
	for k, i := range impls {
		x := 20 + k*150
		fmt.Fprintf(&b, `<line x1="%d" y1="45" x2="%d" y2="45" stroke="%s" stroke-width="3"/><text x="%d" y="49">%s</text>`+"\n", x, x+24, palette[k%len(palette)], x+30, i)
	}
	for r, size := range sizes {
		for c, pipe := range pipes {
			ox, oy := c*(pw+ml+mr)+ml, top+r*(ph+mt+mb)+mt
			// Y range over this panel.
			lo, hi := math.Inf(1), 0.0
			for _, i := range impls {
				for _, n := range conns {
					if cl := byKey[key(i, point{n, size, pipe})]; cl != nil && len(cl.Rounds) > 0 {
						v := value(cl.Median)
						if v > 0 {
							lo, hi = min(lo, v), max(hi, v)
						}
					}
				}
			}
			if hi == 0 {
				continue
			}
			var y func(float64) float64
			var ticks []float64
			if logY {
				l0, l1 := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
				if l1 == l0 {
					l1++
				}
				y = func(v float64) float64 { return float64(ph) * (1 - (math.Log10(v)-l0)/(l1-l0)) }
				for e := l0; e <= l1; e++ {
					ticks = append(ticks, math.Pow(10, e))
				}
			} else {
				step := niceStep(hi / 5)
				top := math.Ceil(hi/step) * step
				y = func(v float64) float64 { return float64(ph) * (1 - v/top) }
				for v := 0.0; v <= top+step/2; v += step {
					ticks = append(ticks, v)
				}
			}
			x := func(k int) float64 {
				if len(conns) == 1 {
					return pw / 2
				}
				return 20 + float64(k)*float64(pw-40)/float64(len(conns)-1)
			}
			fmt.Fprintf(&b, `<g transform="translate(%d,%d)">`+"\n", ox, oy)
			fmt.Fprintf(&b, `<text x="%d" y="-12" text-anchor="middle" font-weight="bold">%s messages, %d in flight per connection</text>`+"\n", pw/2, sizeName(size), pipe)
			fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", pw, ph)
			for _, t := range ticks {
				ty := y(t)
				fmt.Fprintf(&b, `<line x1="0" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/><text x="-6" y="%.1f" text-anchor="end">%s</text>`+"\n", ty, pw, ty, ty+4, shortNum(t))
			}
			for k, n := range conns {
				fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x(k), ph+16, n)
			}
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">connections</text>`+"\n", pw/2, ph+34)
			fmt.Fprintf(&b, `<text transform="translate(-52,%d) rotate(-90)" text-anchor="middle">%s</text>`+"\n", ph/2, html.EscapeString(unit))
			for ii, i := range impls {
				col := palette[ii%len(palette)]
				var path bytes.Buffer
				for k, n := range conns {
					cl := byKey[key(i, point{n, size, pipe})]
					if cl == nil || len(cl.Rounds) == 0 || value(cl.Median) <= 0 {
						continue
					}
					cmd := "L"
					if path.Len() == 0 {
						cmd = "M"
					}
					px, py := x(k), y(value(cl.Median))
					fmt.Fprintf(&path, "%s%.1f,%.1f ", cmd, px, py)
					fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s %s: %s</title></circle>`+"\n", px, py, col, i, cl.Point, shortNum(value(cl.Median)))
				}
				if path.Len() > 0 {
					fmt.Fprintf(&b, `<path d="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", path.String(), col)
				}
			}
			b.WriteString("</g>\n")
		}
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

func shortNum(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", math.Round(v/1e5)/10)
	case v >= 1e3:
		return fmt.Sprintf("%gk", math.Round(v/1e2)/10)
	case v >= 10 || v == 0:
		return fmt.Sprintf("%g", math.Round(v))
	default:
		return fmt.Sprintf("%.2g", v)
	}
}
