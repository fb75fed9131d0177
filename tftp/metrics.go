package tftp

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// shard holds the counters of the transfers of one event loop: written by
// that loop with atomic adds, read by the collector at scrape time, so the
// hot path never calls Prometheus.
type shard struct {
	active      atomic.Int64
	bytes       [2]atomic.Uint64 // by op: read, write
	retransmits atomic.Uint64
	results     [2][len(results)]atomic.Uint64
	foreign     atomic.Uint64 // datagrams from an unknown TID
	ignored     atomic.Uint64 // datagrams ignored by a transfer
	badRequests atomic.Uint64 // datagrams to the server port that are no request
	// errorsSuppressed counts ERROR packets to strangers not sent, over
	// the rate limits.
	errorsSuppressed atomic.Uint64
	refused          [len(refuseReasons)]atomic.Uint64 // requests refused, by reason
	_                [64]byte                          // keep shards on separate cache lines
}

var opLabels = [2]string{"read", "write"}

type metrics struct {
	shards   []shard
	duration *prometheus.HistogramVec
	// resumeLag is how far ahead of its checkpoint a resumed download's
	// client was, in blocks, when it answered the probe.
	resumeLag prometheus.Histogram
}

func newMetrics(loops int) *metrics {
	return &metrics{
		shards: make([]shard, loops+1), // the last one for drivers without a loop
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "ioactor_tftp_transfer_duration_seconds",
			Help:    "Duration of TFTP transfers that started, from the request to the end, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 11),
		}, []string{"op"}),
		resumeLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ioactor_tftp_resume_lag_blocks",
			Help:    "Blocks a resumed lock-step download's client was ahead of the replicated checkpoint when it answered the new server's probe.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 14),
		}),
	}
}

// collectors returns what a server registers.
func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{collector{m}, m.duration, m.resumeLag}
}

func (m *metrics) shard(loop int) *shard {
	if loop < 0 || loop >= len(m.shards)-1 {
		return &m.shards[len(m.shards)-1]
	}
	return &m.shards[loop]
}

func (m *metrics) observe(op int, d time.Duration) {
	m.duration.WithLabelValues(opLabels[op]).Observe(d.Seconds())
}

var (
	descTransfers = prometheus.NewDesc("ioactor_tftp_transfers_total", "TFTP transfers ended, by operation and result.", []string{"op", "result"}, nil)
	descBytes     = prometheus.NewDesc("ioactor_tftp_bytes_total", "File bytes transferred (acknowledged downloads, received uploads), by operation.", []string{"op"}, nil)
	descRetrans   = prometheus.NewDesc("ioactor_tftp_retransmits_total", "DATA, OACK and ACK packets the server sent again.", nil, nil)
	descActive    = prometheus.NewDesc("ioactor_tftp_active_transfers", "TFTP transfers in progress.", nil, nil)
	descRefused   = prometheus.NewDesc("ioactor_tftp_requests_refused_total", "Requests refused with an ERROR before a transfer started, by reason: busy (max transfers), client_transfers (max per client), client_rate (the client's request rate), shutting_down.", []string{"reason"}, nil)
	descSuppress  = prometheus.NewDesc("ioactor_tftp_errors_suppressed_total", "ERROR packets not sent: over the per-transfer, per-client (refusals) or server-wide error rate.", nil, nil)
	descStray     = prometheus.NewDesc("ioactor_tftp_stray_packets_total", "Datagrams that were not part of a transfer, by kind: foreign_tid (answered with ERROR 5), ignored (malformed or unexpected, from the client), bad_request (to the server port).", []string{"kind"}, nil)
)

type collector struct{ m *metrics }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descTransfers
	ch <- descBytes
	ch <- descRetrans
	ch <- descActive
	ch <- descStray
	ch <- descRefused
	ch <- descSuppress
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	var res [2][len(results)]uint64
	var bytes [2]uint64
	var re, foreign, ignored, bad uint64
	var active int64
	var refused [len(refuseReasons)]uint64
	var suppressed uint64
	for i := range c.m.shards {
		s := &c.m.shards[i]
		for r := range refused {
			refused[r] += s.refused[r].Load()
		}
		suppressed += s.errorsSuppressed.Load()
		for op := range 2 {
			bytes[op] += s.bytes[op].Load()
			for r := range results {
				res[op][r] += s.results[op][r].Load()
			}
		}
		re += s.retransmits.Load()
		active += s.active.Load()
		foreign += s.foreign.Load()
		ignored += s.ignored.Load()
		bad += s.badRequests.Load()
	}
	for op, l := range opLabels {
		for r, rl := range results {
			ch <- prometheus.MustNewConstMetric(descTransfers, prometheus.CounterValue, float64(res[op][r]), l, rl)
		}
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(bytes[op]), l)
	}
	ch <- prometheus.MustNewConstMetric(descRetrans, prometheus.CounterValue, float64(re))
	ch <- prometheus.MustNewConstMetric(descActive, prometheus.GaugeValue, float64(active))
	ch <- prometheus.MustNewConstMetric(descStray, prometheus.CounterValue, float64(foreign), "foreign_tid")
	ch <- prometheus.MustNewConstMetric(descStray, prometheus.CounterValue, float64(ignored), "ignored")
	ch <- prometheus.MustNewConstMetric(descStray, prometheus.CounterValue, float64(bad), "bad_request")
	for r, rl := range refuseReasons {
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(refused[r]), rl)
	}
	ch <- prometheus.MustNewConstMetric(descSuppress, prometheus.CounterValue, float64(suppressed))
}
