package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/loadgen"

	"github.com/ioactor/ioactor/internal/svgchart"
)

// stormPlot draws the boot storm's medians against the number of clients:
// aggregate MB/s, server CPU s per GiB, and the p50 and p99 of per-client
// completion time, one line per contender (BenchmarkStorm with
// STORM_PLOT=FILE.svg).
func stormPlot(ns []int, servers []*stormContender, samples map[int]map[string][]stormSample) []byte {
	xs := make([]string, len(ns))
	for k, n := range ns {
		xs[k] = strconv.Itoa(n)
	}
	panels := []struct {
		title, unit string
		log         bool
		value       func(*stormSample) float64
	}{
		{"Aggregate throughput", "MB/s", false, func(m *stormSample) float64 { return m.res.MBps() }},
		{"Server CPU per GiB served", "CPU s/GiB (user+sys)", false, func(m *stormSample) float64 {
			return m.cpu.Seconds() / (float64(m.res.Bytes) / (1 << 30))
		}},
		{"Per-client completion, p50", "seconds (log)", true, func(m *stormSample) float64 { return m.res.Quantile(0.5).Seconds() }},
		{"Per-client completion, p99", "seconds (log)", true, func(m *stormSample) float64 { return m.res.Quantile(0.99).Seconds() }},
	}
	c := svgchart.Chart{Title: "Boot storm: N lock-step clients at once, medians of interleaved rounds", Columns: 2}
	for _, s := range servers {
		c.Series = append(c.Series, s.name)
	}
	for _, p := range panels {
		pn := svgchart.Panel{Title: p.title, XLabel: "clients at once", YLabel: p.unit, LogY: p.log, X: xs}
		for _, s := range servers {
			ys := make([]float64, len(ns))
			for k, n := range ns {
				// A storm in which no client finished has no
				// completion time (Quantile is 0): no point.
				if m := stormMedian(samples[n][s.name]); m != nil && m.res.Bytes > 0 {
					ys[k] = p.value(m)
				}
			}
			pn.Y = append(pn.Y, ys)
		}
		c.Panels = append(c.Panels, pn)
	}
	return svgchart.Draw(c)
}

// writeStormPlot writes stormPlot to STORM_PLOT, when that is set.
func writeStormPlot(ns []int, servers []*stormContender, samples map[int]map[string][]stormSample) error {
	path := os.Getenv("STORM_PLOT")
	if path == "" {
		return nil
	}
	if err := os.WriteFile(path, stormPlot(ns, servers, samples), 0o644); err != nil {
		return fmt.Errorf("STORM_PLOT: %w", err)
	}
	return nil
}

func TestStormPlot(t *testing.T) {
	servers := []*stormContender{{tftpServer: &tftpServer{name: "ioactor-single"}}, {tftpServer: &tftpServer{name: "atftpd"}}}
	res := func(mb, p50 float64, failed int) stormSample {
		r := loadgen.StormResult{Bytes: int64(mb * 1e6), Elapsed: time.Second, Failed: failed}
		if failed == 0 {
			r.Completion = []time.Duration{time.Duration(p50 * float64(time.Second)), time.Duration(2 * p50 * float64(time.Second))}
		}
		return stormSample{res: r, cpu: time.Second}
	}
	samples := map[int]map[string][]stormSample{
		20:   {"ioactor-single": {res(25, 4, 0)}, "atftpd": {res(20, 6, 0)}},
		1000: {"ioactor-single": {res(18, 45, 0)}, "atftpd": {res(0.2, 0, 1000)}},
	}
	svg := string(stormPlot([]int{20, 1000}, servers, samples))
	// 4 panels × 2 servers × 2 N, less the two times of atftpd's
	// failed storm (p50, p99: no completion; MB/s and CPU stay).
	if got, want := strings.Count(svg, "<circle"), 4*2*2-2; got != want {
		t.Errorf("%d points, want %d", got, want)
	}
	for _, s := range []string{"ioactor-single", "atftpd", "Aggregate throughput", "clients at once"} {
		if !strings.Contains(svg, s) {
			t.Errorf("the plot has no %q", s)
		}
	}
}
