package main

import (
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// Request kinds and results: the closed label sets of the node's metrics.
const (
	opGet      = "get"
	opGetStale = "get_stale"
	opPutName  = "put"
	opJoin     = "join"

	resultOK          = "ok"
	resultNotFound    = "not_found"
	resultForwarded   = "forwarded"
	resultUnavailable = "unavailable"
	resultTimeout     = "timeout"
	resultBadRequest  = "bad_request"
	resultError       = "error"
)

var (
	opNames     = []string{opGet, opGetStale, opPutName, opJoin}
	resultNames = []string{resultOK, resultNotFound, resultForwarded, resultUnavailable, resultTimeout, resultBadRequest, resultError}
)

// nodeMetrics are a node's request metrics plus raft's state, read at
// scrape time. The children are resolved up front, so a request only
// touches atomics.
type nodeMetrics struct {
	requests map[string]map[string]prometheus.Counter
	duration map[string]prometheus.Observer
	forwards map[string]prometheus.Counter // by result: ok, error
	cols     []prometheus.Collector
}

// newNodeMetrics registers the metrics on reg (nil: not registered, still
// usable).
func newNodeMetrics(reg prometheus.Registerer, n *Node) (*nodeMetrics, error) {
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ioactor", Subsystem: "raftkv", Name: "requests_total",
		Help: "Client requests served by this node, by operation and result (forwarded: answered by the leader through this node).",
	}, []string{"op", "result"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "ioactor", Subsystem: "raftkv", Name: "request_duration_seconds",
		Help:    "Time to answer a client request, forwarding included.",
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16),
	}, []string{"op"})
	fwd := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "ioactor", Subsystem: "raftkv", Name: "forwards_total",
		Help: "Requests this node forwarded to the leader, by result (error: no answer from the leader).",
	}, []string{"result"})
	m := &nodeMetrics{
		requests: make(map[string]map[string]prometheus.Counter),
		duration: make(map[string]prometheus.Observer),
		forwards: map[string]prometheus.Counter{resultOK: fwd.WithLabelValues(resultOK), resultError: fwd.WithLabelValues(resultError)},
		cols:     []prometheus.Collector{reqs, dur, fwd, &raftCollector{n: n}},
	}
	for _, op := range opNames {
		m.requests[op] = make(map[string]prometheus.Counter)
		for _, res := range resultNames {
			m.requests[op][res] = reqs.WithLabelValues(op, res)
		}
		m.duration[op] = dur.WithLabelValues(op)
	}
	if reg == nil {
		return m, nil
	}
	for i, c := range m.cols {
		if err := reg.Register(c); err != nil {
			for _, r := range m.cols[:i] {
				reg.Unregister(r)
			}
			return nil, err
		}
	}
	return m, nil
}

func (m *nodeMetrics) unregister(reg prometheus.Registerer) {
	if reg == nil {
		return
	}
	for _, c := range m.cols {
		reg.Unregister(c)
	}
}

func (m *nodeMetrics) observe(op, result string, start time.Time) {
	m.requests[op][result].Inc()
	m.duration[op].Observe(time.Since(start).Seconds())
}

// raftCollector reports raft's state at scrape time. raft's own go-metrics
// are not bridged: go-metrics has one process-wide sink, which this
// program leaves alone.
type raftCollector struct{ n *Node }

var (
	descState = prometheus.NewDesc("ioactor_raftkv_raft_state", "1 for the raft state this node is in.", []string{"state"}, nil)
	descTerm  = prometheus.NewDesc("ioactor_raftkv_raft_term", "The node's current raft term.", nil, nil)
	descIdx   = prometheus.NewDesc("ioactor_raftkv_raft_index", "The node's raft log indexes: last (written), commit, applied (handed to the FSM).", []string{"kind"}, nil)
	descKeys  = prometheus.NewDesc("ioactor_raftkv_keys", "Keys in the node's copy of the store.", nil, nil)
)

func (c *raftCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descState
	ch <- descTerm
	ch <- descIdx
	ch <- descKeys
}

func (c *raftCollector) Collect(ch chan<- prometheus.Metric) {
	r := c.n.raft
	if r == nil {
		return
	}
	cur := r.State()
	for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		v := 0.0
		if s == cur {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, s.String())
	}
	ch <- prometheus.MustNewConstMetric(descTerm, prometheus.GaugeValue, float64(r.CurrentTerm()))
	ch <- prometheus.MustNewConstMetric(descIdx, prometheus.GaugeValue, float64(r.LastIndex()), "last")
	ch <- prometheus.MustNewConstMetric(descIdx, prometheus.GaugeValue, float64(r.CommitIndex()), "commit")
	ch <- prometheus.MustNewConstMetric(descIdx, prometheus.GaugeValue, float64(r.AppliedIndex()), "applied")
	_, _, keys := c.n.fsm.state()
	ch <- prometheus.MustNewConstMetric(descKeys, prometheus.GaugeValue, float64(keys))
}
