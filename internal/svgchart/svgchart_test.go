package svgchart

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"strings"
	"testing"
)

// elements parses svg as XML (so a chart that is not well-formed fails)
// and counts its elements by name.
func elements(t *testing.T, svg []byte) map[string]int {
	t.Helper()
	n := map[string]int{}
	d := xml.NewDecoder(bytes.NewReader(svg))
	for {
		tok, err := d.Token()
		if err == io.EOF {
			return n
		}
		if err != nil {
			t.Fatalf("the SVG is not well-formed XML: %v\n%s", err, svg)
		}
		if se, ok := tok.(xml.StartElement); ok {
			n[se.Name.Local]++
		}
	}
}

func TestDrawLinesAndMissingPoints(t *testing.T) {
	svg := Draw(Chart{
		Title:   `storm <N> & "friends"`,
		Series:  []string{"ours", "tftpd-hpa", "absent"},
		Columns: 2,
		Panels: []Panel{
			{Title: "MB/s", XLabel: "clients", YLabel: "MB/s", X: []string{"20", "200", "1000"},
				Y: [][]float64{{25, 20, 18}, {24, 0, 11}, {0, math.NaN(), 0}}},
			{Title: "p99", YLabel: "s (log)", LogY: true, X: []string{"20", "200", "1000"},
				Y: [][]float64{{9, 16, 86}, {10, 14, 141}, {}}},
			{Title: "empty", X: []string{"a"}},
		},
	})
	n := elements(t, svg)
	// Points: panel 1 has 3 + 2 (the 0 is skipped), panel 2 has 3 + 3;
	// "absent" has none anywhere.
	if got := n["circle"]; got != 11 {
		t.Errorf("%d points, want 11", got)
	}
	// Lines: two series with points in each of the two panels with data.
	if got := n["path"]; got != 4 {
		t.Errorf("%d lines, want 4", got)
	}
	if got := n["g"]; got != 3 {
		t.Errorf("%d panels, want 3", got)
	}
	s := string(svg)
	if !strings.Contains(s, "storm &lt;N&gt; &amp; &#34;friends&#34;") {
		t.Errorf("the title is not escaped:\n%s", s)
	}
	if !strings.Contains(s, "no data") {
		t.Error("a panel without values does not say so")
	}
	for _, tick := range []string{">10<", ">100<", ">1k<"} { // the log panel's decades
		if !strings.Contains(s, tick) {
			t.Errorf("no tick %s on the log axis", tick)
		}
	}
}

func TestShortNum(t *testing.T) {
	for v, want := range map[float64]string{0: "0", 0.571: "0.57", 42.4: "42", 3400: "3.4k", 1.25e6: "1.3M"} {
		if got := ShortNum(v); got != want {
			t.Errorf("ShortNum(%v) = %q, want %q", v, got, want)
		}
	}
}
