// Package svgchart draws the benchmark charts of this module: a grid of
// panels, each a line chart over a categorical x axis with one line per
// series, as a self-contained SVG file (no scripts, no fonts, no external
// references), so the README can show it and a browser or an image viewer
// can open it.
//
// Usage:
//
//	svg := svgchart.Draw(svgchart.Chart{
//		Title:  "Boot storm, aggregate MB/s",
//		Series: []string{"ours", "tftpd-hpa"},
//		Columns: 2,
//		Panels: []svgchart.Panel{{
//			Title: "MB/s", XLabel: "clients", YLabel: "MB/s",
//			X:     []string{"20", "200"},
//			Y:     [][]float64{{25, 20}, {24, 22}}, // Y[series][x]; 0 = no point
//		}},
//	})
//
// A value ≤ 0 (or NaN) is a missing point: the line skips it.
package svgchart

import (
	"bytes"
	"fmt"
	"html"
	"math"
)

// Chart is a titled grid of panels sharing one legend.
type Chart struct {
	Title   string
	Series  []string // the legend: one line per series in every panel
	Panels  []Panel
	Columns int // panels per row; 0 means all in one row
}

// Panel is one line chart.
type Panel struct {
	Title  string
	XLabel string
	YLabel string
	LogY   bool
	X      []string    // categories, left to right
	Y      [][]float64 // Y[series][x]; a value ≤ 0 or NaN is no point
}

// palette is the series colours, in order (repeated past its end).
var palette = []string{"#1f77b4", "#17becf", "#2ca02c", "#d62728", "#7f7f7f", "#9467bd", "#ff7f0e"}

const (
	pw, ph         = 380, 250 // a panel's plot area
	ml, mr, mt, mb = 70, 20, 40, 45
	legendRow      = 24
	legendItem     = 170
)

// Draw renders c as an SVG document.
func Draw(c Chart) []byte {
	cols := c.Columns
	if cols <= 0 || cols > len(c.Panels) {
		cols = max(len(c.Panels), 1)
	}
	rows := (len(c.Panels) + cols - 1) / cols
	W := cols * (pw + ml + mr)
	perRow := max(W/legendItem, 1)
	top := 36 + legendRow*((len(c.Series)+perRow-1)/perRow) + 10
	H := top + rows*(ph+mt+mb)
	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	b.WriteString(`<rect width="100%" height="100%" fill="white"/>` + "\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="16" text-anchor="middle">%s</text>`+"\n", W/2, html.EscapeString(c.Title))
	for k, s := range c.Series {
		x, y := 20+(k%perRow)*legendItem, 45+(k/perRow)*legendRow
		fmt.Fprintf(&b, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/><text x="%d" y="%d">%s</text>`+"\n",
			x, y, x+24, y, colour(k), x+30, y+4, html.EscapeString(s))
	}
	for i, p := range c.Panels {
		ox, oy := (i%cols)*(pw+ml+mr)+ml, top+(i/cols)*(ph+mt+mb)+mt
		panel(&b, p, c.Series, ox, oy)
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}

func colour(k int) string { return palette[k%len(palette)] }

func valid(v float64) bool { return v > 0 && !math.IsInf(v, 0) }

func panel(b *bytes.Buffer, p Panel, series []string, ox, oy int) {
	fmt.Fprintf(b, `<g transform="translate(%d,%d)">`+"\n", ox, oy)
	fmt.Fprintf(b, `<text x="%d" y="-12" text-anchor="middle" font-weight="bold">%s</text>`+"\n", pw/2, html.EscapeString(p.Title))
	fmt.Fprintf(b, `<rect width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", pw, ph)
	defer b.WriteString("</g>\n")
	lo, hi := math.Inf(1), 0.0
	for _, ys := range p.Y {
		for _, v := range ys {
			if valid(v) {
				lo, hi = min(lo, v), max(hi, v)
			}
		}
	}
	if hi == 0 {
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle" fill="#999">no data</text>`+"\n", pw/2, ph/2)
		return
	}
	y, ticks := scale(lo, hi, p.LogY)
	x := func(k int) float64 {
		if len(p.X) <= 1 {
			return pw / 2
		}
		return 20 + float64(k)*float64(pw-40)/float64(len(p.X)-1)
	}
	for _, t := range ticks {
		ty := y(t)
		fmt.Fprintf(b, `<line x1="0" y1="%.1f" x2="%d" y2="%.1f" stroke="#eee"/><text x="-6" y="%.1f" text-anchor="end">%s</text>`+"\n", ty, pw, ty, ty+4, ShortNum(t))
	}
	for k, name := range p.X {
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", x(k), ph+16, html.EscapeString(name))
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", pw/2, ph+34, html.EscapeString(p.XLabel))
	fmt.Fprintf(b, `<text transform="translate(-52,%d) rotate(-90)" text-anchor="middle">%s</text>`+"\n", ph/2, html.EscapeString(p.YLabel))
	for s, ys := range p.Y {
		var path bytes.Buffer
		name := ""
		if s < len(series) {
			name = series[s]
		}
		for k, v := range ys {
			if k >= len(p.X) || !valid(v) {
				continue
			}
			cmd := "L"
			if path.Len() == 0 {
				cmd = "M"
			}
			px, py := x(k), y(v)
			fmt.Fprintf(&path, "%s%.1f,%.1f ", cmd, px, py)
			fmt.Fprintf(b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s, %s: %s</title></circle>`+"\n",
				px, py, colour(s), html.EscapeString(name), html.EscapeString(p.X[k]), ShortNum(v))
		}
		if path.Len() > 0 {
			fmt.Fprintf(b, `<path d="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", path.String(), colour(s))
		}
	}
}

// scale maps [lo, hi] onto the panel's height (0 at the top) and gives the
// y ticks: decades on a log axis, a 1-2-5 step from 0 on a linear one.
func scale(lo, hi float64, logY bool) (func(float64) float64, []float64) {
	var ticks []float64
	if logY {
		l0, l1 := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
		if l1 == l0 {
			l1++
		}
		for e := l0; e <= l1; e++ {
			ticks = append(ticks, math.Pow(10, e))
		}
		return func(v float64) float64 { return ph * (1 - (math.Log10(v)-l0)/(l1-l0)) }, ticks
	}
	step := niceStep(hi / 5)
	top := math.Ceil(hi/step) * step
	for v := 0.0; v <= top+step/2; v += step {
		ticks = append(ticks, v)
	}
	return func(v float64) float64 { return ph * (1 - v/top) }, ticks
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

// ShortNum formats an axis or point value: 1.2M, 3.4k, 42, 0.57.
func ShortNum(v float64) string {
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
