package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ioactor/ioactor/internal/raftnode"
)

// Config configures a [Node]. Zero fields take the defaults noted.
type Config struct {
	// ID names the node in the raft configuration; it must be unique and
	// stable across restarts.
	ID string
	// DataDir holds the raft log and stable store (raft.db, bbolt, fsync
	// on every commit) and the snapshots.
	DataDir string
	// RaftAddr is the numeric "ip:port" the raft transport listens on; a
	// member must come back on the same one after a restart.
	RaftAddr string
	// HTTPAddr is the address of the client API.
	HTTPAddr string
	// Join is the HTTP address of any member, for a node without state to
	// join through. Empty, with no Bootstrap, bootstraps a one-node
	// cluster. A node with state ignores both: it rejoins from its log.
	Join string
	// Bootstrap, when set, is the whole initial configuration: every node
	// of a static cluster starts with the same one.
	Bootstrap []raft.Server

	// Registry receives the node's metrics and the transport's, and is
	// served on /metrics; nil means no metrics.
	Registry *prometheus.Registry
	// Logger receives the node's logs and raft's (at warning level and
	// above); nil means slog.Default().
	Logger *slog.Logger

	// HeartbeatTimeout is raft's heartbeat and election timeout (the
	// leader lease is half of it); zero means 500 ms.
	HeartbeatTimeout time.Duration
	// SnapshotThreshold is the number of log entries between snapshots;
	// zero means 8192.
	SnapshotThreshold uint64
	// RequestTimeout bounds a client request's forward to the leader and
	// its wait for readiness, and each join request; zero means 5 s.
	RequestTimeout time.Duration
	// RaftTimeout bounds every raft RPC of the transport; zero means 2 s
	// (raftnode's default).
	RaftTimeout time.Duration
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.HeartbeatTimeout <= 0 {
		c.HeartbeatTimeout = 500 * time.Millisecond
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5 * time.Second
	}
	return c
}

// Node is one member of the replicated key-value store: a raftnode.Node
// (raft, its bbolt stores and this module's raft transport) and the HTTP
// API. Its methods are safe from any goroutine.
type Node struct {
	cfg      Config
	log      *slog.Logger
	fsm      *fsm
	node     *raftnode.Node
	raft     *raft.Raft // node.Raft()
	srv      *http.Server
	ln       net.Listener
	httpAddr string
	clientTr *http.Transport // forwards to the leader
	client   *http.Client
	m        *nodeMetrics

	// ctx ends when the node closes: forwards and the maintenance loop
	// stop with it.
	ctx    context.Context
	cancel context.CancelFunc
	bg     sync.WaitGroup // the HTTP server's Serve and maintain

	reqMu    sync.Mutex
	reqs     int           // HTTP handlers running
	reqsIdle chan struct{} // closed when reqs drops to zero, if someone waits
	closing  bool          // no more handlers

	closeOnce sync.Once
	closeErr  error
}

// Start opens the node's stores, starts raft, the transport and the HTTP
// API, and bootstraps or joins the cluster when the node has no state.
// ctx bounds the join.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.ID == "" || cfg.DataDir == "" || cfg.RaftAddr == "" || cfg.HTTPAddr == "" {
		return nil, errors.New("raftkv: ID, DataDir, RaftAddr and HTTPAddr are required")
	}
	cfg = cfg.withDefaults()
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.ID), fsm: newFSM()}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if err := n.start(ctx); err != nil {
		return nil, errors.Join(err, n.Close())
	}
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	cfg := n.cfg
	var err error
	// Listen first: the node advertises the address it got.
	if n.ln, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return fmt.Errorf("raftkv: http listen: %w", err)
	}
	n.httpAddr = n.ln.Addr().String()
	var reg prometheus.Registerer
	if cfg.Registry != nil {
		reg = cfg.Registry
	}
	n.node, err = raftnode.Start(ctx, raftnode.Config{
		ID: cfg.ID, DataDir: cfg.DataDir, RaftAddr: cfg.RaftAddr, HTTPAddr: n.httpAddr,
		Join: cfg.Join, Bootstrap: cfg.Bootstrap, FSM: n.fsm,
		Tune: func(rc *raft.Config) {
			rc.HeartbeatTimeout = cfg.HeartbeatTimeout
			rc.ElectionTimeout = cfg.HeartbeatTimeout
			rc.LeaderLeaseTimeout = cfg.HeartbeatTimeout / 2
			rc.CommitTimeout = 10 * time.Millisecond
			rc.MaxAppendEntries = 128
			rc.BatchApplyCh = true
			rc.SnapshotThreshold = cfg.SnapshotThreshold
			rc.TrailingLogs = max(1024, cfg.SnapshotThreshold)
		},
		LogCache:       512,
		RaftTimeout:    cfg.RaftTimeout,
		Registerer:     reg,
		RequestTimeout: cfg.RequestTimeout,
		Logger:         n.log,
		LogPrefix:      "raftkv",
	})
	if err != nil {
		return err
	}
	n.raft = n.node.Raft()
	if n.m, err = newNodeMetrics(reg, n); err != nil {
		return fmt.Errorf("raftkv: register metrics: %w", err)
	}

	n.clientTr = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: cfg.RequestTimeout}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	n.client = &http.Client{Transport: n.clientTr}
	n.srv = &http.Server{
		Handler:           n.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       60 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return n.ctx },
		ErrorLog:          slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
	}
	n.bg.Add(2)
	go func() {
		defer n.bg.Done()
		if err := n.srv.Serve(n.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			n.log.Error("raftkv: http server", "err", err)
		}
	}()
	go func() {
		defer n.bg.Done()
		n.maintain()
	}()
	return nil
}

// HTTPAddr is the address the client API listens on.
func (n *Node) HTTPAddr() string { return n.httpAddr }

// RaftAddr is the address of the raft transport.
func (n *Node) RaftAddr() string { return n.node.RaftAddr() }

// IsLeader reports whether the node is raft's leader now.
func (n *Node) IsLeader() bool { return n.node.IsLeader() }

// leaderHTTP is the leader's HTTP address as far as this node knows it.
func (n *Node) leaderHTTP() string { return n.node.LeaderHTTP() }

// maintain is the node's background loop: it takes the leadership
// changes and, when the node leads and has not applied a command of its
// term yet, applies a no-op (linearizable reads wait for one). raftnode
// logs the changes and advertises the node's HTTP address. It stops with
// the node.
func (n *Node) maintain() {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	leaderCh := n.node.Leadership() // the owner must keep reading it
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-leaderCh:
		case <-tick.C:
		}
		if n.IsLeader() {
			if t, _, _ := n.fsm.state(); t < n.raft.CurrentTerm() {
				if err := n.apply(encodeCommand(opNoop, "", nil)); err != nil {
					n.log.Debug("raftkv: no-op", "err", err)
				}
			}
		}
	}
}

// apply commits a command through raft (leader only) and returns the
// FSM's answer.
func (n *Node) apply(cmd []byte) error {
	f := n.raft.Apply(cmd, n.cfg.RequestTimeout)
	if err := f.Error(); err != nil {
		return err
	}
	if err, ok := f.Response().(error); ok {
		return err
	}
	return nil
}

// readLinearizable reads key on the leader, linearizably, without writing
// to the log. A read that starts after a write was acknowledged must see
// it. Writes are acknowledged by the leader of their term after its FSM
// applied them, and raft's leader completeness puts every entry committed
// in earlier terms before the first entry of the current term; so the
// leader of term t may answer from its FSM once (1) its FSM has applied a
// command of term t (the no-op maintain applies, or any write) and (2)
// raft.VerifyLeader, issued after that, confirms with a quorum that it
// still leads, and (3) the term did not change meanwhile (VerifyLeader
// then spoke for term t). This is raft's ReadIndex (§6.4 of Ongaro's
// thesis) with the index wait made unnecessary by waiting for the
// leader's own first command instead.
func (n *Node) readLinearizable(ctx context.Context, key string) (string, bool, error) {
	for {
		if err := ctx.Err(); err != nil {
			return "", false, err
		}
		t := n.raft.CurrentTerm()
		if n.raft.State() != raft.Leader {
			return "", false, raft.ErrNotLeader
		}
		applied, err := n.fsm.waitTerm(ctx, t)
		if err != nil {
			return "", false, fmt.Errorf("raftkv: waiting for the leader's first command: %w", err)
		}
		if applied != t {
			continue // the term moved on: look again
		}
		if err := n.raft.VerifyLeader().Error(); err != nil {
			return "", false, err
		}
		if n.raft.CurrentTerm() != t {
			continue
		}
		v, ok := n.fsm.get(key)
		return v, ok, nil
	}
}

// Handover transfers leadership to another voter if this node leads;
// raft bounds it (by its election timeout).
func (n *Node) Handover() error { return n.node.Handover() }

// Drain stops accepting HTTP connections, turns keep-alives off (idle
// connections close, answers in progress carry "Connection: close"), and
// waits, up to ctx, for the requests in progress (they may still forward
// to the leader). Connections that never sent a request stay until Close.
func (n *Node) Drain(ctx context.Context) error {
	n.srv.SetKeepAlivesEnabled(false)
	n.ln.Close()
	if err := n.waitRequests(ctx); err != nil {
		return fmt.Errorf("raftkv: drain: %w", err)
	}
	return nil
}

// Shutdown stops the node gracefully: it hands leadership over, drains
// the HTTP requests in progress (up to ctx), then closes.
func (n *Node) Shutdown(ctx context.Context) error {
	herr := n.Handover()
	if herr != nil {
		n.log.Warn("raftkv: shutdown without handover", "err", herr)
	}
	return errors.Join(n.Drain(ctx), n.Close())
}

// Close stops the node at once, as a crash would (without losing what
// was written): it closes the HTTP listener and every connection, lets
// the handlers already inside raft see their call through (raft bounds
// it), shuts raft down, and closes the transport and the stores. It is
// idempotent.
//
// Raft is shut down only once nothing waits on it: hashicorp/raft never
// answers an Apply or VerifyLeader future still queued when it shuts down
// (those futures have no shutdown channel), so a handler waiting on one
// would wait forever.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { n.closeErr = n.close() })
	return n.closeErr
}

func (n *Node) close() error {
	var errs []error
	n.cancel() // forwards, readiness waits and maintain stop
	if n.srv != nil {
		n.srv.Close() // also closes n.ln
	} else if n.ln != nil {
		n.ln.Close()
	}
	n.reqMu.Lock()
	n.closing = true
	n.reqMu.Unlock()
	n.waitRequests(context.Background())
	n.bg.Wait()
	if n.node != nil {
		errs = append(errs, n.node.Close())
	}
	if n.clientTr != nil {
		n.clientTr.CloseIdleConnections()
	}
	if n.m != nil && n.cfg.Registry != nil {
		n.m.unregister(n.cfg.Registry)
	}
	return errors.Join(errs...)
}

// enter registers a running handler; false once the node is closing.
func (n *Node) enter() bool {
	n.reqMu.Lock()
	defer n.reqMu.Unlock()
	if n.closing {
		return false
	}
	n.reqs++
	return true
}

// exit ends what enter began.
func (n *Node) exit() {
	n.reqMu.Lock()
	defer n.reqMu.Unlock()
	n.reqs--
	if n.reqs == 0 && n.reqsIdle != nil {
		close(n.reqsIdle)
		n.reqsIdle = nil
	}
}

// waitRequests waits until no handler runs, or ctx ends.
func (n *Node) waitRequests(ctx context.Context) error {
	n.reqMu.Lock()
	if n.reqs == 0 {
		n.reqMu.Unlock()
		return nil
	}
	if n.reqsIdle == nil {
		n.reqsIdle = make(chan struct{})
	}
	idle := n.reqsIdle
	n.reqMu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("PUT /kv/{key}", n.handlePut)
	mux.HandleFunc("GET /kv/{key}", n.handleGet)
	mux.HandleFunc("POST /join", n.handleJoin)
	mux.HandleFunc("GET /status", raftnode.StatusHandler(n.Status))
	if n.cfg.Registry != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(n.cfg.Registry, promhttp.HandlerOpts{}))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !n.enter() {
			http.Error(w, "node shutting down", http.StatusServiceUnavailable)
			return
		}
		defer n.exit()
		w.Header().Set(hdrNode, n.cfg.ID)
		mux.ServeHTTP(w, r)
	})
}
