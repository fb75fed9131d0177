package loadgen

import (
	"math/bits"
	"time"
)

// Histogram records durations in log-linear buckets (16 per power of two,
// so within 6.25 % of the true value), HDR-style: constant memory, O(1)
// record, mergeable.
type Histogram struct {
	counts [16 + 60*16]uint64
	n      uint64
}

func bucket(v uint64) int {
	if v < 16 {
		return int(v)
	}
	e := bits.Len64(v) - 5
	return 16 + e*16 + int(v>>uint(e)-16)
}

func lowerBound(i int) uint64 {
	if i < 16 {
		return uint64(i)
	}
	e := (i - 16) / 16
	return (16 + uint64((i-16)%16)) << uint(e)
}

// Record adds one observation.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucket(uint64(d))]++
	h.n++
}

// Merge adds o's observations to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 { return h.n }

// Quantile returns the lower bound of the bucket holding quantile q (0..1).
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q * float64(h.n))
	if rank >= h.n {
		rank = h.n - 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen > rank {
			return time.Duration(lowerBound(i))
		}
	}
	return time.Duration(lowerBound(len(h.counts) - 1))
}
