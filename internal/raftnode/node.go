// Package raftnode is the part of a hashicorp/raft member that this
// module's replicated services share: it opens the raft-boltdb store and
// the file snapshot store in a data directory, starts this module's raft
// transport (package raft) and raft itself, bootstraps a new cluster,
// restarts a member from its state or joins one through any member's
// HTTP address, records each member's HTTP address through the caller's
// FSM, turns raft's leadership notifications into a deduplicated channel,
// hands leadership over and closes it all in order.
//
// The caller keeps its FSM, its HTTP server and its API: it listens
// first, passes the address as [Config.HTTPAddr], mounts [Node.HandleJoin]
// (or a handler of its own that calls [Node.AddMember]) on POST /join, and
// serves once [Start] returned. [StatusHandler] serves the caller's view of
// the cluster as JSON.
//
// # Join protocol
//
// POST /join carries a [Member] as JSON. The leader makes it a voter
// (unless it is one at that raft address) and records it; it answers 2xx.
// [Node.HandleJoin] on a follower answers 307 Temporary Redirect with the
// leader's HTTP address, when known, in X-Leader; the joining node follows
// it. A node also posts its own record to the leader until the replicated
// state holds it, so that a restarted member on a new HTTP address is found
// again.
//
// With Config.TLS the joins go over https with the node's certificate, and
// the leader takes a join for id X only with X's certificate. Whatever the
// mode, it refuses the changes that could break the cluster (another
// member's raft address, a move asked by anyone but the member, a voter that
// does not answer, a voter that would leave the cluster short of a reachable
// quorum, too many changes at once): see security.go and [ErrQuorum]. A
// refusal for good (400, 403, 409) ends the joining node's retries
// ([ErrJoinRefused]).
//
// The package is internal: its hooks (LogPrefix, Tune, the raw *raft.Raft)
// fit its two users, tftp/cluster and cmd/raftkv, and the follower's answer
// to /join is not settled (the first redirects, the second forwards).
package raftnode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"
	bolt "go.etcd.io/bbolt"

	"github.com/ioactor/ioactor/netio"
	iraft "github.com/ioactor/ioactor/raft"
)

// Member is a node's advertised addresses: the body of POST /join and what
// the FSM records.
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
}

// FSM is the caller's state machine; it also keeps the members' HTTP
// addresses, in whatever form its log and snapshots use.
type FSM interface {
	raft.FSM
	// MemberCommand encodes the log entry that records m. Once the FSM
	// applied it, MemberHTTP(m.ID) returns m.HTTPAddr.
	MemberCommand(m Member) ([]byte, error)
	// MemberHTTP returns the HTTP address the applied log records for the
	// member id, or "".
	MemberHTTP(id string) string
}

// Config configures a [Node]. Zero fields take the defaults noted.
type Config struct {
	// ID names the node in the raft configuration; it must be unique and
	// stable across restarts. Required.
	ID string
	// DataDir holds the raft log and stable store (raft.db) and the
	// snapshots; it is created if missing. Required.
	DataDir string
	// RaftAddr is the address the raft transport listens on; a member must
	// come back on the same one after a restart. Required.
	RaftAddr string
	// HTTPAddr is the address other members reach this node's HTTP
	// endpoint (POST /join) at: what the node advertises. Required.
	HTTPAddr string
	// Join is the HTTP address of any member, for a node without state to
	// join through. Empty, with no Bootstrap, bootstraps a one-node
	// cluster. A node with state ignores both: it restarts from its log.
	Join string
	// Bootstrap, when set, is the whole initial configuration of a node
	// without state: every node of a static cluster starts with the same.
	Bootstrap []raft.Server
	// FSM is the replicated state machine. Required.
	FSM FSM

	// Fast shortens raft's timers for loopback clusters (tests, demos):
	// heartbeat and election 300 ms, leader lease 150 ms (half the election
	// timeout, so that a cut-off leader gives up — the TFTP port, the
	// virtual IP — before another node can be elected: never two holders);
	// raft's CommitTimeout stays 50 ms (it paces the empty appends of an
	// idle leader). On a host so loaded that the leader misses its
	// followers for 150 ms it steps down: one failover pause, safe.
	// False keeps raft's defaults.
	Fast bool
	// Tune, if set, adjusts raft's configuration after the defaults and
	// Fast; it must not change LocalID, NotifyCh or Logger.
	Tune func(*raft.Config)
	// LogCache is the number of recent log entries kept in memory in front
	// of the store; zero means none.
	LogCache int

	// NewTransport builds the raft transport; nil means this module's
	// transport (package raft) with System, RaftTimeout, Logger and
	// Registerer.
	NewTransport func(bind string) (raft.Transport, error)
	// System runs the default transport's sockets; nil means a private
	// one that the transport shuts down. A System given here must be shut
	// down after the node is closed.
	System *netio.System
	// RaftTimeout bounds every RPC of the default transport; zero means 2 s.
	RaftTimeout time.Duration
	// Registerer receives the default transport's metrics; nil means none.
	Registerer prometheus.Registerer
	// TLS, when set, secures the HTTP side: joins and advertisements go
	// over https with it (it must carry this node's certificate and the
	// cluster CA as RootCAs), and HandleJoin takes a join for id X only
	// from a client whose certificate names X (see [ErrIdentity]). Nil
	// means plain HTTP and no proof of identity.
	TLS *tls.Config
	// RaftTLS, when set, is the default transport's Config.TLS, and the
	// handshake that checks a joining node's raft address. Nil means
	// plain TCP.
	RaftTLS *tls.Config
	// RequestTimeout bounds each join request (redirects included) and
	// raft's acceptance of a new voter or member record; zero means 5 s.
	RequestTimeout time.Duration

	// Logger receives the node's logs, as they are: give it the node's
	// attributes. Nil means slog.Default().
	Logger *slog.Logger
	// LogPrefix starts the node's log messages: "cluster" logs "cluster:
	// leadership changed". Empty means "raftnode".
	LogPrefix string
	// RaftLogger receives raft's own logs; nil means raft's warnings and
	// errors go to Logger.
	RaftLogger hclog.Logger
}

func (c Config) withDefaults() Config {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.LogPrefix == "" {
		c.LogPrefix = "raftnode"
	}
	if c.RaftTimeout <= 0 {
		c.RaftTimeout = 2 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.RaftLogger == nil {
		c.RaftLogger = NewRaftLogger(c.Logger, hclog.Warn)
	}
	return c
}

// Node is one raft member: its stores, transport and raft, its join and
// advertisement, and its leadership watch. Its methods are safe from any
// goroutine.
type Node struct {
	cfg      Config
	log      *slog.Logger
	raft     *raft.Raft
	trans    raft.Transport
	store    *raftboltdb.BoltStore
	clientTr *http.Transport // joins and advertisements
	client   *http.Client
	health   *health   // voters' reachability and the membership rate limit
	notify   chan bool // raft's NotifyCh
	leader   chan bool // deduplicated leadership changes, for the owner

	// ctx ends when the node closes: the advertisement and its requests
	// stop with it.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // watch and advertise

	closeOnce sync.Once
	closeErr  error
}

// Start opens the node's stores, starts the transport and raft, and
// bootstraps, restarts or joins the cluster; ctx bounds the join. Then,
// in the background, it advertises the node's addresses until the
// replicated state holds them.
func Start(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.ID == "" || cfg.DataDir == "" || cfg.RaftAddr == "" || cfg.HTTPAddr == "" || cfg.FSM == nil {
		return nil, errors.New("raftnode: ID, DataDir, RaftAddr, HTTPAddr and FSM are required")
	}
	cfg = cfg.withDefaults()
	n := &Node{cfg: cfg, log: cfg.Logger, health: newHealth(), notify: make(chan bool, 16), leader: make(chan bool, 16)}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.clientTr = &http.Transport{
		DialContext:         (&net.Dialer{Timeout: cfg.RequestTimeout}).DialContext,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	if cfg.TLS != nil {
		n.clientTr.TLSClientConfig = cfg.TLS.Clone()
		n.clientTr.TLSHandshakeTimeout = cfg.RequestTimeout
	}
	n.client = &http.Client{Transport: n.clientTr}
	if err := n.start(ctx); err != nil {
		return nil, errors.Join(err, n.Close())
	}
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	cfg := n.cfg
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("raftnode: data dir: %w", err)
	}
	var err error
	n.store, err = raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(cfg.DataDir, "raft.db"),
		BoltOptions: &bolt.Options{Timeout: time.Second}, // a store still open elsewhere fails, not hangs
	})
	if err != nil {
		return fmt.Errorf("raftnode: open raft store: %w", err)
	}
	var logs raft.LogStore = n.store
	if cfg.LogCache > 0 {
		if logs, err = raft.NewLogCache(cfg.LogCache, n.store); err != nil {
			return fmt.Errorf("raftnode: log cache: %w", err)
		}
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, cfg.RaftLogger)
	if err != nil {
		return fmt.Errorf("raftnode: snapshot store: %w", err)
	}
	newTransport := cfg.NewTransport
	if newTransport == nil {
		newTransport = func(bind string) (raft.Transport, error) {
			t, err := iraft.New(iraft.Config{System: cfg.System, BindAddr: bind, Timeout: cfg.RaftTimeout, TLS: cfg.RaftTLS, Logger: n.log, Registerer: cfg.Registerer})
			if err != nil {
				// Not t: a nil *Transport in the interface is not nil,
				// and Close would call its method.
				return nil, err
			}
			return t, nil
		}
	}
	trans, err := newTransport(cfg.RaftAddr)
	if err != nil {
		return fmt.Errorf("raftnode: raft transport on %s: %w", cfg.RaftAddr, err)
	}
	n.trans = trans
	rc := raft.DefaultConfig()
	if cfg.Fast {
		rc.HeartbeatTimeout = 300 * time.Millisecond
		rc.ElectionTimeout = 300 * time.Millisecond
		rc.LeaderLeaseTimeout = 150 * time.Millisecond
	}
	if cfg.Tune != nil {
		cfg.Tune(rc)
	}
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.NotifyCh = n.notify
	rc.Logger = cfg.RaftLogger
	existing, err := raft.HasExistingState(logs, n.store, snaps)
	if err != nil {
		return fmt.Errorf("raftnode: read raft state: %w", err)
	}
	if n.raft, err = raft.NewRaft(rc, cfg.FSM, logs, n.store, snaps, n.trans); err != nil {
		return fmt.Errorf("raftnode: start raft: %w", err)
	}
	n.raft.RegisterObserver(n.health.obs)
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		n.watch()
	}()
	go func() {
		defer n.wg.Done()
		n.health.run(n.ctx)
	}()

	switch {
	case existing:
		n.log.Info(cfg.LogPrefix+": restarting from existing state", "dir", cfg.DataDir)
	case len(cfg.Bootstrap) > 0:
		if err := n.raft.BootstrapCluster(raft.Configuration{Servers: cfg.Bootstrap}).Error(); err != nil {
			return fmt.Errorf("raftnode: bootstrap: %w", err)
		}
	case cfg.Join == "":
		c := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: n.trans.LocalAddr()}}}
		if err := n.raft.BootstrapCluster(c).Error(); err != nil {
			return fmt.Errorf("raftnode: bootstrap: %w", err)
		}
	default:
		if err := n.join(ctx, cfg.Join); err != nil {
			return err
		}
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.advertise()
	}()
	return nil
}

// Raft is the node's raft, for the caller's commands and reads. The
// caller must not shut it down: Close does.
func (n *Node) Raft() *raft.Raft { return n.raft }

// RaftAddr is the address of the raft transport.
func (n *Node) RaftAddr() string { return string(n.trans.LocalAddr()) }

// IsLeader reports whether the node is raft's leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// LeaderHTTP is the leader's HTTP address as far as this node knows it,
// or "".
func (n *Node) LeaderHTTP() string {
	_, id := n.raft.LeaderWithID()
	if id == "" {
		return ""
	}
	return n.cfg.FSM.MemberHTTP(string(id))
}

// Leadership delivers true when this node becomes the leader and false
// when it stops being one; Close closes it. The owner must keep reading
// it: raft waits for its notifications to be taken.
func (n *Node) Leadership() <-chan bool { return n.leader }

// watch turns raft's notifications into deduplicated leadership changes
// on Leadership.
func (n *Node) watch() {
	last := false
	for {
		select {
		case <-n.ctx.Done():
			return
		case isLeader := <-n.notify:
			if isLeader == last {
				continue
			}
			last = isLeader
			n.log.Info(n.cfg.LogPrefix+": leadership changed", "leader", isLeader, "term", n.raft.CurrentTerm())
			select {
			case n.leader <- isLeader:
			case <-n.ctx.Done():
				return
			}
		}
	}
}

// AddMember makes m a voter (unless it is one at that raft address) and
// records its HTTP address through the FSM (unless recorded already). The
// leader only: elsewhere raft's errors (raft.ErrNotLeader) come back
// wrapped. The caller has not proven it is m: a change of an existing
// member's raft address is refused (ErrNotOwner), and a new voter must
// pass the checks described at [ErrQuorum].
func (n *Node) AddMember(m Member) error { return n.addMember(m, false) }

// addMember is AddMember; owner says the request comes from m itself.
func (n *Node) addMember(m Member, owner bool) error {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("raftnode: read configuration: %w", err)
	}
	voter := false
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == m.ID && string(s.Address) == m.RaftAddr && s.Suffrage == raft.Voter {
			voter = true
		}
	}
	if !voter {
		if err := n.checkVoterChange(f.Configuration(), m, owner); err != nil {
			return fmt.Errorf("raftnode: add voter %s at %s: %w", m.ID, m.RaftAddr, err)
		}
		if err := n.raft.AddVoter(raft.ServerID(m.ID), raft.ServerAddress(m.RaftAddr), 0, n.cfg.RequestTimeout).Error(); err != nil {
			return fmt.Errorf("raftnode: add voter %s: %w", m.ID, err)
		}
		n.log.Info(n.cfg.LogPrefix+": voter added", "id", m.ID, "raft", m.RaftAddr)
	}
	if n.cfg.FSM.MemberHTTP(m.ID) == m.HTTPAddr {
		return nil
	}
	cmd, err := n.cfg.FSM.MemberCommand(m)
	if err != nil {
		return fmt.Errorf("raftnode: encode member %s: %w", m.ID, err)
	}
	af := n.raft.Apply(cmd, n.cfg.RequestTimeout)
	if err := af.Error(); err != nil {
		return fmt.Errorf("raftnode: record member %s: %w", m.ID, err)
	}
	if err, ok := af.Response().(error); ok {
		return fmt.Errorf("raftnode: record member %s: %w", m.ID, err)
	}
	return nil
}

// self is this node's record.
func (n *Node) self() Member {
	return Member{ID: n.cfg.ID, RaftAddr: n.RaftAddr(), HTTPAddr: n.cfg.HTTPAddr}
}

// advertise records this node's addresses in the replicated state,
// directly when it leads, through the leader otherwise, until the FSM
// holds them or the node closes.
func (n *Node) advertise() {
	m := n.self()
	for n.cfg.FSM.MemberHTTP(m.ID) != m.HTTPAddr {
		var err error
		if n.IsLeader() {
			err = n.addMember(m, true)
		} else if addr := n.LeaderHTTP(); addr != "" {
			err = n.postJoin(n.ctx, addr)
		}
		if err != nil {
			n.log.Debug(n.cfg.LogPrefix+": advertise", "err", err)
		}
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Handover transfers leadership to another voter if this node leads;
// raft bounds each of its three tries by its election timeout.
func (n *Node) Handover() error {
	// A transfer times out when its target has not won within an
	// election timeout, which a loaded host can miss: try three times
	// while this node still leads.
	var err error
	for try := 0; try < 3 && n.IsLeader(); try++ {
		if err = n.raft.LeadershipTransfer().Error(); err == nil {
			return nil
		}
	}
	if err != nil && n.IsLeader() {
		return fmt.Errorf("raftnode: leadership transfer: %w", err)
	}
	return nil
}

// Close stops the node's goroutines, shuts raft down, and closes the
// transport and the stores; it closes Leadership. It does not hand
// leadership over: call Handover first for a graceful stop. It is
// idempotent.
//
// The caller stops its own users of Raft (HTTP handlers) first:
// hashicorp/raft does not answer every future still queued when it shuts
// down, so one waiting on such a future would wait forever.
func (n *Node) Close() error {
	n.closeOnce.Do(func() { n.closeErr = n.close() })
	return n.closeErr
}

func (n *Node) close() error {
	var errs []error
	n.cancel()
	n.wg.Wait() // the advertisement may be inside raft: stop it first
	if n.raft != nil {
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raftnode: raft shutdown: %w", err))
		}
	}
	if c, ok := n.trans.(raft.WithClose); ok {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("raftnode: transport close: %w", err))
		}
	}
	close(n.leader)
	n.clientTr.CloseIdleConnections()
	if n.store != nil {
		if err := n.store.Close(); err != nil {
			errs = append(errs, fmt.Errorf("raftnode: store close: %w", err))
		}
	}
	return errors.Join(errs...)
}
