package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tftp"
)

// replicator is the tftp.Replicator of a node. Begin, Progress and End
// are queued and go to raft from one goroutine, together: every begin,
// checkpoint and end waiting goes as one batchTag entry (batch.go, up to
// maxBatch of each). Begin and CommitUpload wait for their commit; the
// sending path never waits for raft.
//
// Begins go at once, since a transfer sends nothing before its begin
// committed: a new leader must hold the record of every transfer whose
// first packet left, or that transfer's client is left waiting (a
// download's next DATA never comes) or gets another's blocks. One entry
// with begins commits at a time (group commit): the begins that arrive
// meanwhile wait for it and go together in the next, with whatever
// checkpoints and ends are waiting.
//
// Checkpoints and ends wait for a begin entry or, when none comes, for an
// entry of their own at most every batchGap. Only the newest checkpoint
// of a transfer waits in the queue; up to maxInflight entries are
// committing at once (raft batches them into one append and fsync), so a
// checkpoint's lag behind the transfer is about one commit time plus
// batchGap, not a queue of them. A storm's checkpoints (about 1,000 a
// second however many transfers: tftp's interval grows with them), begins
// and ends make tens of entries a second, not thousands.
//
// An end waits as a checkpoint does: it is no more durable when it has an
// entry of its own. A leader that dies before an end committed leaves
// the transfer's record, and the next leader resumes it from its last
// checkpoint: its client, done, does not answer the probe and the
// resumed transfer times out, or the client asks for its next file from
// the same port and the new request supersedes it (tftp's listener).
type replicator struct {
	n    *Node
	fs   *tftp.FS
	sums *sumCache
	m    *serveMetrics

	mu      sync.Mutex
	begins  []beginning
	pending map[string]Record // latest checkpoint per transfer
	ends    []ended
	flushes []chan struct{}
	// beginning is set while an entry with begins is committing: the
	// begins queued meanwhile wait for it (group commit).
	beginning bool
	wake      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	// inflight holds the entries committing, oldest first, and flush
	// markers; reap waits for them.
	inflight chan inflight
	reaped   chan struct{}
	// waiting is when the oldest entry still committing went to raft, in
	// ns since epoch plus one (monotonic), 0 when none is: Stalled
	// compares it with holdAfter.
	waiting atomic.Int64
	// usual is the smoothed commit time of the entries reaped, in ns:
	// Stalled holds only past several times it (see holdAfter).
	usual atomic.Int64
	epoch time.Time
}

// beginning is a Begin waiting for its entry's commit.
type beginning struct {
	rec  Record
	done chan error // buffered: reap never waits for the caller
}

// holdAfter is how long a checkpoint may take to commit before the node's
// downloads hold (Stalled). A leader cut off from the others learns it
// lost its leadership only when its lease (150 ms with the Fast timers)
// runs out; holding sooner keeps its clients close to the last committed
// checkpoint, which is where the next leader resumes them. A commit takes
// a few milliseconds on a healthy cluster.
//
// Under a boot storm on a busy machine, commits take tens of
// milliseconds, with spikes of hundreds (fsync on every node, two cores
// shared with a thousand transfers): a fixed 50 ms held every download
// hundreds of times a minute (532 holds in a 100 s, 1,000-client storm),
// each held download re-checking every 2 ms. So a commit stalls only
// past holdFactor times the usual (smoothed) commit time as well. A
// cut-off leader still holds 50 ms after the cut when its commits were
// fast; when they were slow, it may serve on until its lease runs out
// (150 ms), and the next leader's probe finds its clients further on.
const (
	holdAfter  = 50 * time.Millisecond
	holdFactor = 4
)

// inflight is an entry being committed, or (done set) a flush marker.
type inflight struct {
	f      raft.ApplyFuture
	at     time.Time // when the oldest of its checkpoints was taken; zero: none
	sent   time.Time // when it went to raft
	begins []beginning
	done   chan struct{}
}

const maxInflight = 8

// batchGap is the least time between two entries that carry no begin:
// the checkpoints and ends arriving meanwhile wait and go in the next
// entry. Under a storm there is always one waiting, and without a gap
// the replicator sent an entry as soon as raft took the last (about 100
// a second, each an append and an fsync on every node); with it, at most
// 50 a second carry all of them. A checkpoint's commit lags the transfer
// by up to batchGap more; Stalled counts from when an entry went to
// raft, so the holds of a cut-off leader are unchanged.
const batchGap = 20 * time.Millisecond

func newReplicator(n *Node, fsys *tftp.FS, m *serveMetrics) *replicator {
	r := &replicator{n: n, fs: fsys, sums: n.sums, m: m, pending: make(map[string]Record),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		inflight: make(chan inflight, maxInflight), reaped: make(chan struct{}), epoch: time.Now()}
	go r.run()
	go r.reap()
	return r
}

// errStopped answers the begins of a replicator that stopped.
var errStopped = fmt.Errorf("cluster: the replicator stopped: %w", ErrNotLeader)

// Begin records a transfer (tftp.Replicator). It fails with an error
// wrapping ErrNotLeader and tftp.ErrStandby when this node does not lead,
// or lost its leadership before the record committed: the server then
// drops the request without an answer, and the client's retransmitted
// request reaches the next leader. (A record whose commit was not known
// may still commit there: the next leader resumes it, and the client's
// request supersedes it.)
func (r *replicator) Begin(st tftp.TransferState) error {
	err := r.begin(st)
	if errors.Is(err, ErrNotLeader) {
		return fmt.Errorf("%w (%w)", err, tftp.ErrStandby)
	}
	return err
}

func (r *replicator) begin(st tftp.TransferState) error {
	rec := Record{State: st, Updated: time.Now()}
	if st.Op == tftp.OpRRQ {
		sum, err := r.sums.sum(r.fs, st.Filename)
		if err != nil {
			return err
		}
		rec.SHA256 = sum
	}
	if !r.n.IsLeader() {
		return ErrNotLeader
	}
	b := beginning{rec: rec, done: make(chan error, 1)}
	r.mu.Lock()
	r.begins = append(r.begins, b)
	r.mu.Unlock()
	r.kick()
	select {
	case err := <-b.done:
		return err
	case <-r.reaped:
		// Every entry sent has been answered by now.
		select {
		case err := <-b.done:
			return err
		default:
			return errStopped
		}
	}
}

func (r *replicator) Progress(st tftp.TransferState) {
	r.mu.Lock()
	r.pending[st.Client.String()] = Record{State: st, Updated: time.Now()}
	r.mu.Unlock()
	r.kick()
}

// Stalled reports that an entry has been committing for more than
// holdAfter (tftp.Replicator).
func (r *replicator) Stalled(now time.Time) bool {
	at := r.waiting.Load()
	return at != 0 && now.Sub(r.epoch)-time.Duration(at-1) > r.holdAfter()
}

// holdAfter is how long a commit may take before Stalled.
func (r *replicator) holdAfter() time.Duration {
	return max(holdAfter, holdFactor*time.Duration(r.usual.Load()))
}

// committed records how long an entry took to commit.
func (r *replicator) committed(took time.Duration) {
	u := r.usual.Load()
	if u == 0 {
		u = int64(took)
	}
	r.usual.Store((7*u + int64(took)) / 8)
}

func (r *replicator) End(st tftp.TransferState) {
	r.mu.Lock()
	key := st.Client.String()
	if p, ok := r.pending[key]; ok && p.State.ID == st.ID {
		delete(r.pending, key)
	}
	r.ends = append(r.ends, ended{key: key, id: st.ID})
	r.mu.Unlock()
	r.kick()
}

func (r *replicator) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// CommitUpload replicates the content in chunks, then commits it: every
// node checks the digest and renames the file into place.
func (r *replicator) CommitUpload(st tftp.TransferState, content io.Reader) error {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var off int64
	key := st.Client.String()
	for {
		n, err := io.ReadFull(content, buf)
		if n > 0 {
			h.Write(buf[:n])
			if err := r.n.UploadData(key, off, buf[:n]); err != nil {
				return fmt.Errorf("cluster: replicate upload: %w", err)
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("cluster: read upload: %w", err)
		}
	}
	st.Size = off
	return r.n.CommitUpload(Record{State: st, SHA256: hex.EncodeToString(h.Sum(nil)), Updated: time.Now()})
}

// run sends the queued begins, checkpoints and ends to raft, paced as
// the replicator's doc says. An entry that fails (no longer the leader)
// is dropped, and its begins fail: the next leader has the last committed
// checkpoints, and finds the clients from there.
func (r *replicator) run() {
	defer close(r.done)
	defer close(r.inflight)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var last time.Time // when the last entry went
	for {
		b, waiters, flushes, wait := r.take(last)
		if b == nil && flushes == nil {
			var tick <-chan time.Time
			if wait > 0 {
				timer.Reset(wait)
				tick = timer.C
			}
			select {
			case <-r.stop:
				r.failBegins()
				return
			case <-r.wake:
			case <-tick:
			}
			timer.Stop()
			continue
		}
		if b != nil {
			last = time.Now()
			if !r.send(b, waiters) {
				r.failBegins()
				return
			}
		}
		// Everything queued before the flushes has been started.
		for _, ch := range flushes {
			select {
			case r.inflight <- inflight{done: ch}:
			case <-r.stop:
				r.failBegins()
				return
			}
		}
	}
}

// take returns the entry to send now (nil: none) with the begins it
// answers, and the flushes that go after it; with neither, how long until
// the queued checkpoints and ends are due (0: nothing is queued, wait for
// a kick). last is when the last entry went.
func (r *replicator) take(last time.Time) (b *batch, waiters []beginning, flushes []chan struct{}, wait time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	begins := len(r.begins) > 0 && !r.beginning
	rest := len(r.pending) > 0 || len(r.ends) > 0
	if !begins && !rest && len(r.flushes) == 0 {
		return nil, nil, nil, 0
	}
	if !begins && len(r.flushes) == 0 {
		if left := batchGap - time.Since(last); left > 0 {
			return nil, nil, nil, left
		}
	}
	b = &batch{}
	if begins {
		n := min(len(r.begins), maxBatch)
		waiters, r.begins = r.begins[:n:n], r.begins[n:]
		for _, w := range waiters {
			b.begins = append(b.begins, w.rec)
		}
		r.beginning = true
	}
	for k, v := range r.pending {
		if len(b.progress) == maxBatch {
			break
		}
		b.progress = append(b.progress, v)
		delete(r.pending, k)
	}
	n := min(len(r.ends), maxBatch)
	b.ends = append(b.ends, r.ends[:n]...)
	r.ends = r.ends[n:]
	if len(r.ends) == 0 {
		r.ends = nil
	}
	// A flush waits for every checkpoint and end queued before it: it
	// goes after the entry that empties the queue. (Taken with an entry
	// and then dropped, a flush under a storm's checkpoints timed out.)
	if len(r.pending) == 0 && len(r.ends) == 0 {
		flushes, r.flushes = r.flushes, nil
	}
	if b.empty() {
		b = nil
	}
	return b, waiters, flushes, 0
}

// send starts committing b (false: the replicator is stopping). The
// begins it carries (waiters) are answered by reap, or here when it
// cannot go.
func (r *replicator) send(b *batch, waiters []beginning) bool {
	in := inflight{begins: waiters, sent: time.Now()}
	if len(b.progress) > 0 {
		in.at = b.progress[0].Updated
		for _, rec := range b.progress {
			if rec.Updated.Before(in.at) {
				in.at = rec.Updated
			}
		}
		r.m.batch.Observe(float64(len(b.progress)))
	}
	f, err := r.n.batchAsync(b)
	if err != nil {
		r.answer(waiters, err)
		return true
	}
	in.f = f
	select {
	case r.inflight <- in:
		return true
	case <-r.stop:
		// reap still answers what is in flight; these never went.
		r.answer(waiters, errStopped)
		return false
	}
}

// answer tells the begins of an entry its outcome and lets the next
// begins go.
func (r *replicator) answer(waiters []beginning, err error) {
	for _, w := range waiters {
		w.done <- err
	}
	if len(waiters) > 0 {
		r.mu.Lock()
		r.beginning = false
		r.mu.Unlock()
		r.kick()
	}
}

// failBegins answers the begins still queued when the replicator stops.
func (r *replicator) failBegins() {
	r.mu.Lock()
	waiters := r.begins
	r.begins = nil
	r.mu.Unlock()
	for _, w := range waiters {
		w.done <- errStopped
	}
}

// reap waits for the entries in flight, in order.
func (r *replicator) reap() {
	defer close(r.reaped)
	for in := range r.inflight {
		if in.done != nil {
			close(in.done)
			continue
		}
		r.waiting.Store(int64(in.sent.Sub(r.epoch)) + 1)
		limit := r.holdAfter()
		err := applied("batch", in.f)
		r.waiting.Store(0)
		r.answer(in.begins, err)
		if err == nil {
			took := time.Since(in.sent)
			r.committed(took)
			if in.at.IsZero() {
				continue // no checkpoint in it
			}
			r.m.checkpoint.Observe(time.Since(in.at).Seconds())
			if took > limit {
				r.m.held.Inc()
				r.n.log.Warn("cluster: a checkpoint took long to commit; downloads were held meanwhile", "took", took, "usual", time.Duration(r.usual.Load()))
			}
		}
	}
}

// flush waits, at most d, until every checkpoint and end queued so far is
// committed or failed.
func (r *replicator) flush(d time.Duration) bool {
	ch := make(chan struct{})
	r.mu.Lock()
	r.flushes = append(r.flushes, ch)
	r.mu.Unlock()
	r.kick()
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

func (r *replicator) close() {
	close(r.stop)
	<-r.done
	<-r.reaped
}

// sumCache remembers file digests by name, size and modification time, so a
// file is hashed once, not on every request.
type sumCache struct {
	mu sync.Mutex
	m  map[sumKey]string
}

type sumKey struct {
	name  string
	size  int64
	mtime int64
}

func (c *sumCache) sum(fsys *tftp.FS, name string) (string, error) {
	f, size, err := fsys.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	k := sumKey{name: name, size: size, mtime: fi.ModTime().UnixNano()}
	c.mu.Lock()
	s, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return s, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	s = hex.EncodeToString(h.Sum(nil))
	c.mu.Lock()
	c.m[k] = s
	c.mu.Unlock()
	return s, nil
}

// ServeConfig configures [Serve].
type ServeConfig struct {
	// TFTP is the server's configuration; Serve sets SinglePort and the
	// Replicator, and needs FS set to the node's [*tftp.FS] (a replicated
	// server serves a directory tree only: see [tftp.ErrNotReplicable]);
	// a Rewrite hook is allowed.
	TFTP tftp.ServerConfig
	// Registerer, when not nil, receives the failover metrics.
	Registerer prometheus.Registerer
	// BindTimeout is how long a new leader tries to bind the TFTP port
	// (and acquire Address) before it reports itself unhealthy and hands
	// leadership over (zero: 5 s). On one host the old leader may hold the
	// port for a moment.
	BindTimeout time.Duration
	// Address, when not nil, is the virtual IP that TFTP.Listen is on:
	// acquired after gaining leadership, before the bind; released after
	// the port is released (see package internal/vip for why that order).
	Address Address
}

// Serve runs the replicated TFTP service until ctx ends: while the node
// leads, it binds the TFTP port and resumes the transfers of the replicated
// state; when the node stops leading, it closes the port at once, so that
// two nodes never answer a client. A graceful stop (ctx cancelled) hands
// leadership over first.
func Serve(ctx context.Context, sys *netio.System, n *Node, cfg ServeConfig) error {
	fsys, ok := cfg.TFTP.FS.(*tftp.FS)
	if !ok || fsys == nil {
		return fmt.Errorf("cluster: ServeConfig.TFTP.FS must be the node's *tftp.FS: %w", tftp.ErrNotReplicable)
	}
	m := newServeMetrics(cfg.Registerer)
	defer m.unregister()
	rep := newReplicator(n, fsys, m)
	defer rep.close()
	tcfg := cfg.TFTP
	tcfg.SinglePort = true
	tcfg.Replicator = rep
	var srv *tftp.Server
	holding := false
	stopServing := func() {
		if srv != nil {
			srv.Close()
			srv = nil
			n.log.Info("cluster: TFTP port released")
		}
		if holding {
			holding = false
			releaseAddress(n, cfg.Address)
		}
	}
	defer stopServing()
	if cfg.Address != nil {
		// A copy a previous run of this node left (killed, or its host
		// frozen) goes before anything else.
		releaseAddress(n, cfg.Address)
	}
	leading := false
	var since time.Time // when this node last gained leadership
	for {
		select {
		case <-ctx.Done():
			if leading {
				// Release the port (the transfers stop and queue their
				// exact position), commit those positions, then hand
				// leadership over, so that the next leader binds and
				// resumes at once, at the client's block.
				stopServing()
				if !rep.flush(time.Second) {
					n.log.Warn("cluster: the last checkpoints were not committed in time")
				}
				if err := n.Handover(); err != nil {
					n.log.Warn("cluster: leadership transfer failed", "err", err)
				}
			}
			return nil
		case isLeader, ok := <-n.Leadership():
			if !ok {
				return nil
			}
			leading = isLeader
			if !isLeader {
				stopServing()
				n.setProblem("")
				continue
			}
			since = time.Now()
			// Apply everything committed before resuming from it; retry
			// while this node leads (a barrier can time out on a node that
			// is still catching up).
			barrier := n.Barrier(2 * time.Second)
			for barrier != nil && n.IsLeader() && ctx.Err() == nil {
				n.log.Warn("cluster: barrier before serving failed; retrying", "err", barrier)
				barrier = n.Barrier(2 * time.Second)
			}
			if barrier != nil {
				continue
			}
			// The transfers to resume, whose file is still the one they
			// started with.
			var states []tftp.TransferState
			for _, r := range n.Transfers() {
				if r.State.Op == tftp.OpRRQ && r.SHA256 != "" {
					if sum, err := rep.sums.sum(fsys, r.State.Filename); err != nil || sum != r.SHA256 {
						n.log.Error("cluster: file differs from the one the transfer started with; not resuming", "file", r.State.Filename, "err", err)
						rep.End(r.State)
						continue
					}
				}
				states = append(states, r.State)
			}
			tcfg.Resume = states
			// Add and announce the address before the bind and before
			// the resumed transfers' first packets.
			acquire := func() error { return nil }
			if cfg.Address != nil {
				acquire = func() error {
					if holding {
						return nil
					}
					if err := cfg.Address.Acquire(since); err != nil {
						return fmt.Errorf("acquire the virtual IP: %w", err)
					}
					holding = true
					n.log.Info("cluster: virtual IP acquired", "since_leader", time.Since(since))
					return nil
				}
			}
			if srv = bindLeader(ctx, sys, n, tcfg, cfg.BindTimeout, acquire); srv == nil {
				continue
			}
			m.failovers.Inc()
			m.resumed.Add(float64(len(states)))
			n.log.Info("cluster: serving TFTP", "addr", srv.Addr().String(), "resumed", len(states))
		}
	}
}

// bindLeader binds the TFTP port while n leads and ctx lasts. On one host
// the old leader may still hold the port for a moment (it releases it when
// it steps down), so it retries every 10 ms. A leader that cannot bind
// within bindTimeout is unhealthy: it says why in its log and its Status,
// and hands leadership over once, so that a node that can bind serves. It
// goes on trying, once a second, for as long as it still leads.
//
// acquire runs before each try; an error from it is a failure to bind.
func bindLeader(ctx context.Context, sys *netio.System, n *Node, tcfg tftp.ServerConfig, bindTimeout time.Duration, acquire func() error) *tftp.Server {
	if bindTimeout <= 0 {
		bindTimeout = 5 * time.Second
	}
	start := time.Now()
	var logged time.Time
	handedOver := false
	for n.IsLeader() && ctx.Err() == nil {
		err := acquire()
		if err == nil {
			var srv *tftp.Server
			if srv, err = tftp.NewServer(sys, tcfg); err == nil {
				n.setProblem("")
				return srv
			}
		}
		wait := 10 * time.Millisecond
		if time.Since(start) >= bindTimeout {
			wait = time.Second
			problem := fmt.Sprintf("the leader cannot bind the TFTP port %v: %v", tcfg.Listen, err)
			n.setProblem(problem)
			if time.Since(logged) >= 30*time.Second {
				logged = time.Now()
				n.log.Error("cluster: "+problem, "after", time.Since(start).Round(time.Millisecond))
			}
			if !handedOver {
				handedOver = true
				n.log.Warn("cluster: handing leadership over to a node that can bind the TFTP port")
				if err := n.Handover(); err != nil {
					n.log.Warn("cluster: leadership transfer failed; still trying to bind", "err", err)
				}
				continue
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	return nil
}

// releaseAddress deletes the virtual IP from this host.
func releaseAddress(n *Node, a Address) {
	deleted, err := a.Release()
	if err != nil {
		n.log.Error("cluster: cannot delete the virtual IP", "err", err)
	}
	if deleted {
		n.log.Info("cluster: virtual IP released")
	}
}

type serveMetrics struct {
	reg                prometheus.Registerer
	failovers, resumed prometheus.Counter
	checkpoint         prometheus.Histogram
	batch              prometheus.Histogram
	held               prometheus.Counter
}

func newServeMetrics(reg prometheus.Registerer) *serveMetrics {
	m := &serveMetrics{
		reg:       reg,
		failovers: prometheus.NewCounter(prometheus.CounterOpts{Name: "ioactor_tftp_cluster_leaderships_total", Help: "Times this node became the leader and bound the TFTP port."}),
		resumed:   prometheus.NewCounter(prometheus.CounterOpts{Name: "ioactor_tftp_cluster_resumed_transfers_total", Help: "Transfers resumed from the replicated state after a failover."}),
		checkpoint: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ioactor_tftp_cluster_checkpoint_seconds",
			Help:    "Time from a transfer's checkpoint to its commit through raft: how far the replicated position lags the transfer.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		held: prometheus.NewCounter(prometheus.CounterOpts{Name: "ioactor_tftp_cluster_holds_total",
			Help: "Checkpoints that took so long to commit that the node's downloads held (Replicator.Stalled)."}),
		batch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ioactor_tftp_cluster_checkpoint_batch_size",
			Help:    "Checkpoints carried by one raft entry (all the transfers' checkpoints waiting when it went to raft).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11),
		}),
	}
	if reg != nil {
		for _, c := range m.collectors() {
			reg.MustRegister(c)
		}
	}
	return m
}

func (m *serveMetrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.failovers, m.resumed, m.checkpoint, m.batch, m.held}
}

func (m *serveMetrics) unregister() {
	if m.reg != nil {
		for _, c := range m.collectors() {
			m.reg.Unregister(c)
		}
	}
}
