package raft

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the transport's counters: plain atomics written on the hot
// path, turned into Prometheus metrics only when scraped (metrics is the
// Collector). With no Registerer the latency clock is not even read.
type metrics struct {
	on bool

	rpc           [numKinds]histogram // client-side latency, by RPC
	rpcErrors     [numKinds]atomic.Uint64
	served        [numKinds]atomic.Uint64 // requests handed to raft
	bytesIn       atomic.Uint64
	bytesOut      atomic.Uint64
	snapshotBytes atomic.Uint64
	pipelineDepth atomic.Int64
	reconnects    atomic.Uint64
	dialFailures  atomic.Uint64
	rejected      atomic.Uint64
	spoofed       atomic.Uint64 // requests whose header named another node than the TLS peer
}

// latencyBuckets are the histogram's upper bounds, in seconds.
var latencyBuckets = []float64{10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1, 2.5, 5, 10}

type histogram struct {
	counts [20]atomic.Uint64 // len(latencyBuckets)+1, the last for +Inf
	sum    atomic.Uint64     // nanoseconds
}

func newMetrics(on bool) *metrics { return &metrics{on: on} }

func (m *metrics) observe(kind rpcKind, start time.Time) {
	if !m.on {
		return
	}
	d := time.Since(start)
	s := d.Seconds()
	h := &m.rpc[kind]
	i := 0
	for i < len(latencyBuckets) && s > latencyBuckets[i] {
		i++
	}
	h.counts[i].Add(1)
	h.sum.Add(uint64(d))
}

var (
	descRPC = prometheus.NewDesc("ioactor_raft_transport_rpc_duration_seconds",
		"Time from sending an RPC to having its answer, by RPC.", []string{"rpc"}, nil)
	descRPCErrors = prometheus.NewDesc("ioactor_raft_transport_rpc_errors_total",
		"RPCs that failed (timeout, connection loss, remote error), by RPC.", []string{"rpc"}, nil)
	descServed = prometheus.NewDesc("ioactor_raft_transport_requests_served_total",
		"Requests received and handed to raft, by RPC.", []string{"rpc"}, nil)
	descBytes = prometheus.NewDesc("ioactor_raft_transport_bytes_total",
		"Bytes written to and read from the transport's sockets.", []string{"direction"}, nil)
	descSnapshot = prometheus.NewDesc("ioactor_raft_transport_snapshot_sent_bytes_total",
		"Snapshot data bytes sent.", nil, nil)
	descDepth = prometheus.NewDesc("ioactor_raft_transport_pipeline_inflight",
		"Pipelined AppendEntries sent and not yet delivered to raft.", nil, nil)
	descReconnects = prometheus.NewDesc("ioactor_raft_transport_reconnects_total",
		"Connections dialed to replace an earlier one to the same peer.", nil, nil)
	descDialFailures = prometheus.NewDesc("ioactor_raft_transport_dial_failures_total",
		"Dials that failed.", nil, nil)
	descRejected = prometheus.NewDesc("ioactor_raft_transport_rejected_connections_total",
		"Connections closed because they carried an oversized or malformed frame, failed the TLS handshake or exceeded a limit.", nil, nil)
	descSpoofed = prometheus.NewDesc("ioactor_raft_transport_identity_refused_total",
		"Requests refused because their RPC header named another node than the peer's TLS certificate.", nil, nil)
)

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRPC, descRPCErrors, descServed, descBytes, descSnapshot, descDepth, descReconnects, descDialFailures, descRejected, descSpoofed} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for k := 1; k < numKinds; k++ {
		name := rpcKind(k).String()
		h := &m.rpc[k]
		buckets := make(map[float64]uint64, len(latencyBuckets))
		var cum uint64
		for i, b := range latencyBuckets {
			cum += h.counts[i].Load()
			buckets[b] = cum
		}
		cum += h.counts[len(latencyBuckets)].Load()
		ch <- prometheus.MustNewConstHistogram(descRPC, cum, time.Duration(h.sum.Load()).Seconds(), buckets, name)
		ch <- prometheus.MustNewConstMetric(descRPCErrors, prometheus.CounterValue, float64(m.rpcErrors[k].Load()), name)
		ch <- prometheus.MustNewConstMetric(descServed, prometheus.CounterValue, float64(m.served[k].Load()), name)
	}
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(m.bytesOut.Load()), "out")
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(m.bytesIn.Load()), "in")
	ch <- prometheus.MustNewConstMetric(descSnapshot, prometheus.CounterValue, float64(m.snapshotBytes.Load()))
	ch <- prometheus.MustNewConstMetric(descDepth, prometheus.GaugeValue, float64(m.pipelineDepth.Load()))
	ch <- prometheus.MustNewConstMetric(descReconnects, prometheus.CounterValue, float64(m.reconnects.Load()))
	ch <- prometheus.MustNewConstMetric(descDialFailures, prometheus.CounterValue, float64(m.dialFailures.Load()))
	ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(m.rejected.Load()))
	ch <- prometheus.MustNewConstMetric(descSpoofed, prometheus.CounterValue, float64(m.spoofed.Load()))
}
