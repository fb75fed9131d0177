package cluster

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"golang.org/x/net/netutil"

	"github.com/ioactor/ioactor/internal/raftnode"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tftp"
)

// ErrNotLeader is returned by operations that only the leader may perform.
var ErrNotLeader = errors.New("cluster: not the leader")

// NodeConfig configures one cluster node. Zero fields take the defaults
// noted.
type NodeConfig struct {
	// ID names the node; it must be unique and stable across restarts.
	ID string
	// DataDir holds the raft log, stable store and snapshots.
	DataDir string
	// RaftAddr is the address the raft transport listens on.
	RaftAddr string
	// HTTPAddr serves /join and /status for the cluster; required.
	HTTPAddr string
	// Join is the HTTP address of any member; empty starts a new cluster
	// (or restarts an existing member from its data directory).
	Join string
	// Fast shortens raft's timers for a fast failover: heartbeat and
	// election 300 ms, leader lease 150 ms. (Raft's CommitTimeout is
	// commitTimeout whatever Fast says.) A cut-off
	// leader holds its downloads 50 ms (or 4 times its usual commit
	// time, if longer) after its checkpoints stop committing
	// (Replicator.Stalled), whatever the lease.
	Fast bool
	// Tune, when not nil, adjusts raft's configuration after Fast; it must
	// not change LocalID, NotifyCh or Logger.
	Tune func(*raft.Config)
	// FS is this node's root: completed uploads are renamed into it on
	// every node. Nil refuses replicated uploads.
	FS *tftp.FS
	// NewTransport builds the raft transport; nil uses this module's
	// transport (package raft of ioactor) on System.
	NewTransport func(bind string) (raft.Transport, error)
	// System runs the default transport's sockets (it may be the TFTP
	// server's); nil means a private one that the transport shuts down.
	// A System given here must be shut down after Close.
	System *netio.System
	Logger *slog.Logger

	// TLS, when set, turns on mutual TLS on the HTTP endpoint (a client
	// certificate of the cluster CA is required, and /join for id X needs
	// X's) and on the default raft transport. It must hold this node's
	// certificate, the cluster CA as RootCAs and ClientCAs, and
	// ClientAuth RequireAndVerifyClientCert (clustertls's Identity.Config
	// does). Nil means plain HTTP and TCP: anyone who reaches the ports is
	// a member.
	TLS *tls.Config
	// StatusOpen serves GET /status to clients without a certificate too
	// (it is read-only; /join still needs one). Only with TLS.
	StatusOpen bool
	// MaxHTTPConns caps the HTTP endpoint's connections; zero means 2048.
	MaxHTTPConns int
}

// Limits of the cluster HTTP endpoint: every connection is closed within
// them, whatever the client does.
const (
	httpHeaderTimeout = 5 * time.Second // TLS handshake and request headers
	httpReadTimeout   = 10 * time.Second
	httpWriteTimeout  = 10 * time.Second
	httpIdleTimeout   = 30 * time.Second
	httpMaxHeader     = 8 << 10
	httpMaxConns      = 2048
)

// Node is one member of the replicated TFTP service's raft cluster.
type Node struct {
	cfg  NodeConfig
	log  *slog.Logger
	rn   *raftnode.Node
	raft *raft.Raft // rn.Raft()
	fsm  *fsm
	http *http.Server
	ln   net.Listener
	sums *sumCache      // file digests, by name, size and modification time
	wg   sync.WaitGroup // the HTTP server and the digests
	vips addressStatus  // Status.VIPs

	problem atomic.Value // string: why the node is unhealthy, "" when it is not

	closeOnce sync.Once
	closeErr  error
}

// setProblem records why the node is unhealthy ("": it is healthy again).
func (n *Node) setProblem(p string) { n.problem.Store(p) }

// commitTimeout is raft's CommitTimeout for a cluster node: how long an
// idle leader waits (up to twice as long, randomized) before an empty
// append that tells the followers the commit index; raft's default is 50
// ms. Those appends were 26 of an idle leader's ~110 goroutine wake-ups a
// second (three nodes; raft's heartbeats are most of the rest), and each
// wake-up of an idle Go process costs several thread switches: at 500 ms
// the idle leader of BenchmarkIdleCluster used 1.8 % of a core instead of
// 2.5 %. What it delays is only a follower's learning of the last commit
// before a quiet spell (any later entry carries the commit index at once):
// a follower's applied state (its /status, the digests it computes for
// new downloads, an upload renamed into place on it) may lag the leader's
// by up to 1 s after the last change. The leader's commits and the
// failover are not affected: appends go out as soon as entries are
// written, and a new leader applies every committed entry (Barrier)
// before it serves.
const commitTimeout = 500 * time.Millisecond

// joinTimeout bounds StartNode's join: a node whose seed does not take it
// fails to start rather than waiting for ever.
const joinTimeout = 10 * time.Second

// StartNode opens the node's stores, starts raft and the HTTP endpoint, and
// bootstraps or joins the cluster.
func StartNode(ctx context.Context, cfg NodeConfig) (*Node, error) {
	if cfg.ID == "" || cfg.DataDir == "" || cfg.RaftAddr == "" || cfg.HTTPAddr == "" {
		return nil, errors.New("cluster: ID, DataDir, RaftAddr and HTTPAddr are required")
	}
	n := &Node{cfg: cfg, log: cfg.Logger}
	if n.log == nil {
		n.log = slog.Default()
	}
	n.log = n.log.With("node", cfg.ID)
	n.fsm = newFSM(cfg.FS, n.log)
	n.sums = &sumCache{m: make(map[sumKey]string)}
	if cfg.FS != nil {
		// Every node hashes the file of a download as soon as its record
		// arrives, so that a node taking over checks it from the cache
		// instead of hashing it during the failover pause.
		n.fsm.onBegin = func(r Record) {
			if r.State.Op != tftp.OpRRQ || r.SHA256 == "" {
				return
			}
			n.wg.Add(1)
			go func() {
				defer n.wg.Done()
				n.sums.sum(cfg.FS, r.State.Filename)
			}()
		}
	}
	if err := n.start(ctx); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	cfg := n.cfg
	var err error
	if n.ln, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		return fmt.Errorf("cluster: http listen: %w", err)
	}
	var raftTLS *tls.Config
	if cfg.TLS != nil && cfg.NewTransport == nil {
		raftTLS = cfg.TLS
	}
	ctx, cancel := context.WithTimeout(ctx, joinTimeout)
	defer cancel()
	n.rn, err = raftnode.Start(ctx, raftnode.Config{
		ID: cfg.ID, DataDir: cfg.DataDir, RaftAddr: cfg.RaftAddr, HTTPAddr: n.ln.Addr().String(), Join: cfg.Join,
		FSM:  n.fsm,
		Fast: cfg.Fast,
		Tune: func(rc *raft.Config) {
			rc.SnapshotThreshold = 1024
			rc.TrailingLogs = 1024
			rc.CommitTimeout = commitTimeout
			if cfg.Tune != nil {
				cfg.Tune(rc)
			}
		},
		NewTransport: cfg.NewTransport,
		System:       cfg.System,
		TLS:          cfg.TLS,
		RaftTLS:      raftTLS,
		Logger:       n.log,
		LogPrefix:    "cluster",
	})
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	n.raft = n.rn.Raft()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /join", n.rn.HandleJoin) // with TLS it checks the certificate's node id
	mux.HandleFunc("GET /status", raftnode.StatusHandler(n.Status))
	n.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: httpHeaderTimeout,
		ReadTimeout:       httpReadTimeout,
		WriteTimeout:      httpWriteTimeout,
		IdleTimeout:       httpIdleTimeout,
		MaxHeaderBytes:    httpMaxHeader,
		// A stranger's failed handshakes are debug logs, not a flood.
		ErrorLog: slog.NewLogLogger(n.log.Handler(), slog.LevelDebug),
	}
	maxConns := cfg.MaxHTTPConns
	if maxConns <= 0 {
		maxConns = httpMaxConns
	}
	ln := netutil.LimitListener(n.ln, maxConns)
	if cfg.TLS != nil {
		tc := cfg.TLS.Clone()
		if cfg.StatusOpen {
			tc.ClientAuth = tls.VerifyClientCertIfGiven
		}
		ln = tls.NewListener(ln, tc)
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.http.Serve(ln)
	}()
	return nil
}

// Leadership delivers true when this node becomes the leader and false when
// it stops being one; Close closes it. The owner must keep reading it.
func (n *Node) Leadership() <-chan bool { return n.rn.Leadership() }

// IsLeader reports whether the node is the leader now.
func (n *Node) IsLeader() bool { return n.rn.IsLeader() }

// Status is what /status reports.
type Status struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Term  uint64 `json:"term"`
	// Healthy is false while the node cannot do its part: a leader that
	// cannot bind the TFTP port. Problem says why.
	Healthy   bool     `json:"healthy"`
	Problem   string   `json:"problem,omitempty"`
	Leader    string   `json:"leader"`
	Members   []Member `json:"members"`
	Voters    []string `json:"voters"`
	Transfers []Record `json:"transfers"`
	// VIPs is what this node's host holds of the virtual addresses.
	VIPs []AddressStatus `json:"vips,omitempty"`
}

// Status returns the node's view of the cluster.
func (n *Node) Status() Status {
	_, leader := n.raft.LeaderWithID()
	s := n.fsm.state()
	problem, _ := n.problem.Load().(string)
	st := Status{ID: n.cfg.ID, State: n.raft.State().String(), Term: n.raft.CurrentTerm(), Healthy: problem == "", Problem: problem, Leader: string(leader), Members: s.Members, Transfers: s.Transfers, VIPs: n.addressStatus()}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			st.Voters = append(st.Voters, string(srv.ID))
		}
	}
	return st
}

// HTTPAddr is the address the node's HTTP endpoint listens on.
func (n *Node) HTTPAddr() string { return n.ln.Addr().String() }

// RaftAddr is the address the node's raft transport listens on.
func (n *Node) RaftAddr() string { return n.rn.RaftAddr() }

func (n *Node) apply(c command) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return n.applyEntry(string(c.Op), b)
}

func (n *Node) applyEntry(op string, b []byte) error {
	if !n.IsLeader() {
		return ErrNotLeader
	}
	return applied(op, n.raft.Apply(b, 5*time.Second))
}

// applied waits for an entry's commit and returns its error: ErrNotLeader
// when the node lost its leadership first, or the state machine's.
func applied(op string, f raft.ApplyFuture) error {
	if err := f.Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return fmt.Errorf("%w: %w", ErrNotLeader, err)
		}
		return fmt.Errorf("cluster: apply %s: %w", op, err)
	}
	if err, ok := f.Response().(error); ok {
		return err
	}
	return nil
}

// Begin commits a transfer's identity; it returns once a quorum has it.
func (n *Node) Begin(r Record) error { return n.applyBatch("begin", &batch{begins: []Record{r}}) }

// applyBatch commits b as one entry.
func (n *Node) applyBatch(op string, b *batch) error {
	e, err := b.encode()
	if err != nil {
		return fmt.Errorf("cluster: encode %s: %w", op, err)
	}
	return n.applyEntry(op, e)
}

// Progress commits a checkpoint of a transfer's position.
func (n *Node) Progress(r Record) error { return n.applyEntry("progress", encodeProgress(&r)) }

// UploadData replicates a chunk of the upload keyed key, at offset off of
// the file; chunks must come in order. It returns once a quorum has it.
func (n *Node) UploadData(key string, off int64, data []byte) error {
	return n.applyEntry("upload data", encodeData(key, off, data))
}

// CommitUpload ends an upload whose every byte has been replicated: each
// node checks the size and SHA-256 in r and renames the file into place. It
// returns the leader's own commit error.
func (n *Node) CommitUpload(r Record) error { return n.apply(command{Op: opCommit, Record: &r}) }

// End removes a finished or abandoned transfer, by key (an unfinished
// upload is discarded on every node).
func (n *Node) End(key string) error { return n.applyBatch("end", &batch{ends: []ended{{key: key}}}) }

// Transfers returns the live transfers of the replicated state, for a new
// leader to resume.
func (n *Node) Transfers() []Record { return n.fsm.state().Transfers }

// Barrier waits until this node has applied every committed entry (a new
// leader calls it before resuming transfers).
func (n *Node) Barrier(timeout time.Duration) error { return n.raft.Barrier(timeout).Error() }

// Handover transfers leadership to another member, if this node leads.
func (n *Node) Handover() error { return n.rn.Handover() }

// Close stops the HTTP endpoint, raft and the stores. It does not hand over
// leadership: call Handover first for a graceful stop.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		var errs []error
		if n.http != nil {
			errs = append(errs, n.http.Close())
		} else if n.ln != nil {
			n.ln.Close()
		}
		if n.rn != nil {
			errs = append(errs, n.rn.Close())
		}
		n.wg.Wait()
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}
