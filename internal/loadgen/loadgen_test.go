package loadgen

import (
	"testing"
	"time"
)

func TestHistogramQuantiles(t *testing.T) {
	var h Histogram
	for i := 1; i <= 10000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 5000 * time.Microsecond}, {0.99, 9900 * time.Microsecond}, {0.999, 9990 * time.Microsecond}} {
		got := h.Quantile(c.q)
		if got > c.want || float64(got) < float64(c.want)*0.93 {
			t.Errorf("q%.3f = %v, want within 7%% below %v", c.q, got, c.want)
		}
	}
	if h.Count() != 10000 {
		t.Fatalf("count %d", h.Count())
	}
}

func TestBucketsAreMonotonic(t *testing.T) {
	prev := -1
	for v := uint64(0); v < 1<<40; v = v*9/8 + 1 {
		b := bucket(v)
		if b < prev || lowerBound(b) > v {
			t.Fatalf("v=%d bucket %d (prev %d) lower %d", v, b, prev, lowerBound(b))
		}
		prev = b
	}
}
