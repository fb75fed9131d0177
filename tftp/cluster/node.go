package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

	iraft "github.com/ioactor/ioactor/raft"
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
	// Fast shortens raft's timers for loopback clusters (tests, demos):
	// heartbeat and election 300 ms, leader lease 150 ms.
	Fast bool
	// FS is this node's root: completed uploads are renamed into it on
	// every node. Nil refuses replicated uploads.
	FS *tftp.FS
	// NewTransport builds the raft transport; nil uses this module's
	// transport (package raft of ioactor) on its own event loop.
	NewTransport func(bind string) (raft.Transport, error)
	Logger       *slog.Logger
}

// Node is one member of the replicated TFTP service's raft cluster.
type Node struct {
	cfg    NodeConfig
	log    *slog.Logger
	raft   *raft.Raft
	fsm    *fsm
	trans  raft.Transport
	stores []io.Closer
	http   *http.Server
	ln     net.Listener
	notify chan bool
	leader chan bool // deduplicated leadership changes for the owner
	sums   *sumCache // file digests, by name, size and modification time
	wg     sync.WaitGroup
	stop   chan struct{}
}

// StartNode opens the node's stores, starts raft and the HTTP endpoint, and
// bootstraps or joins the cluster.
func StartNode(ctx context.Context, cfg NodeConfig) (*Node, error) {
	if cfg.ID == "" || cfg.DataDir == "" || cfg.RaftAddr == "" || cfg.HTTPAddr == "" {
		return nil, errors.New("cluster: ID, DataDir, RaftAddr and HTTPAddr are required")
	}
	n := &Node{cfg: cfg, log: cfg.Logger, notify: make(chan bool, 16), leader: make(chan bool, 16), stop: make(chan struct{})}
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
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return fmt.Errorf("cluster: data dir: %w", err)
	}
	store, err := raftboltdb.NewBoltStore(filepath.Join(cfg.DataDir, "raft.db"))
	if err != nil {
		return fmt.Errorf("cluster: raft store: %w", err)
	}
	n.stores = append(n.stores, store)
	snaps, err := raft.NewFileSnapshotStore(cfg.DataDir, 2, io.Discard)
	if err != nil {
		return fmt.Errorf("cluster: snapshot store: %w", err)
	}
	newTransport := cfg.NewTransport
	if newTransport == nil {
		newTransport = func(bind string) (raft.Transport, error) {
			return iraft.New(iraft.Config{BindAddr: bind, Timeout: 2 * time.Second, Logger: n.log})
		}
	}
	if n.trans, err = newTransport(cfg.RaftAddr); err != nil {
		return fmt.Errorf("cluster: raft transport on %s: %w", cfg.RaftAddr, err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.NotifyCh = n.notify
	rc.Logger = hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: os.Stderr})
	rc.SnapshotThreshold = 1024
	rc.TrailingLogs = 1024
	if cfg.Fast {
		rc.HeartbeatTimeout = 300 * time.Millisecond
		rc.ElectionTimeout = 300 * time.Millisecond
		rc.LeaderLeaseTimeout = 150 * time.Millisecond
		rc.CommitTimeout = 5 * time.Millisecond
	}
	existing, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		return fmt.Errorf("cluster: read state: %w", err)
	}
	if n.raft, err = raft.NewRaft(rc, n.fsm, store, store, snaps, n.trans); err != nil {
		return fmt.Errorf("cluster: start raft: %w", err)
	}
	n.ln, err = net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("cluster: http listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /join", n.handleJoin)
	mux.HandleFunc("GET /status", n.handleStatus)
	n.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	n.wg.Add(2)
	go func() {
		defer n.wg.Done()
		n.http.Serve(n.ln)
	}()
	go func() {
		defer n.wg.Done()
		n.watchLeadership()
	}()
	switch {
	case existing:
		// A restarted member rejoins through its own log.
	case cfg.Join == "":
		f := n.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: n.trans.LocalAddr()}}})
		if err := f.Error(); err != nil {
			return fmt.Errorf("cluster: bootstrap: %w", err)
		}
	default:
		if err := n.join(ctx, cfg.Join); err != nil {
			return err
		}
	}
	// Advertise this node's HTTP address once a leader exists.
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.advertise()
	}()
	return nil
}

// watchLeadership turns raft's notifications into deduplicated leadership
// changes on Leadership().
func (n *Node) watchLeadership() {
	last := false
	for {
		select {
		case <-n.stop:
			return
		case isLeader := <-n.notify:
			if isLeader == last {
				continue
			}
			last = isLeader
			n.log.Info("cluster: leadership changed", "leader", isLeader)
			select {
			case n.leader <- isLeader:
			case <-n.stop:
				return
			}
		}
	}
}

// Leadership delivers true when this node becomes the leader and false when
// it stops being one; Close closes it. The owner must keep reading it.
func (n *Node) Leadership() <-chan bool { return n.leader }

// IsLeader reports whether the node is the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

func (n *Node) advertise() {
	m := &Member{ID: n.cfg.ID, RaftAddr: string(n.trans.LocalAddr()), HTTPAddr: n.ln.Addr().String()}
	for {
		if n.IsLeader() {
			if err := n.apply(command{Op: opMember, Member: m}); err == nil {
				return
			}
		} else if addr := n.leaderHTTP(); addr != "" {
			if err := n.postJoin(context.Background(), addr, m); err == nil {
				return
			}
		}
		select {
		case <-n.stop:
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (n *Node) leaderHTTP() string {
	_, id := n.raft.LeaderWithID()
	n.fsm.mu.RLock()
	defer n.fsm.mu.RUnlock()
	return n.fsm.members[string(id)].HTTPAddr
}

func (n *Node) join(ctx context.Context, addr string) error {
	m := &Member{ID: n.cfg.ID, RaftAddr: string(n.trans.LocalAddr()), HTTPAddr: n.ln.Addr().String()}
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		if err = n.postJoin(ctx, addr, m); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster: join %s: %w", addr, errors.Join(err, ctx.Err()))
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("cluster: join %s: %w", addr, err)
}

func (n *Node) postJoin(ctx context.Context, addr string, m *Member) error {
	body, _ := json.Marshal(m)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/join", bytes.NewReader(body))
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	switch resp.StatusCode {
	case http.StatusOK:
		return nil
	case http.StatusTemporaryRedirect:
		if loc := resp.Header.Get("X-Leader"); loc != "" && loc != addr {
			return n.postJoin(ctx, loc, m)
		}
	}
	return fmt.Errorf("cluster: join via %s: %s: %s", addr, resp.Status, bytes.TrimSpace(msg))
}

// handleJoin adds a member (leader) or points at the leader (follower).
func (n *Node) handleJoin(w http.ResponseWriter, r *http.Request) {
	var m Member
	if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&m); err != nil || m.ID == "" || m.RaftAddr == "" {
		http.Error(w, "bad join request", http.StatusBadRequest)
		return
	}
	if !n.IsLeader() {
		w.Header().Set("X-Leader", n.leaderHTTP())
		http.Error(w, "not the leader", http.StatusTemporaryRedirect)
		return
	}
	if f := n.raft.AddVoter(raft.ServerID(m.ID), raft.ServerAddress(m.RaftAddr), 0, 10*time.Second); f.Error() != nil {
		http.Error(w, f.Error().Error(), http.StatusServiceUnavailable)
		return
	}
	if err := n.apply(command{Op: opMember, Member: &m}); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	n.log.Info("cluster: member joined", "member", m.ID, "raft", m.RaftAddr)
}

// Status is what /status reports.
type Status struct {
	ID        string   `json:"id"`
	State     string   `json:"state"`
	Leader    string   `json:"leader"`
	Members   []Member `json:"members"`
	Voters    []string `json:"voters"`
	Transfers []Record `json:"transfers"`
}

// Status returns the node's view of the cluster.
func (n *Node) Status() Status {
	_, leader := n.raft.LeaderWithID()
	s := n.fsm.state()
	st := Status{ID: n.cfg.ID, State: n.raft.State().String(), Leader: string(leader), Members: s.Members, Transfers: s.Transfers}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			st.Voters = append(st.Voters, string(srv.ID))
		}
	}
	return st
}

func (n *Node) handleStatus(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(n.Status())
}

// HTTPAddr is the address the node's HTTP endpoint listens on.
func (n *Node) HTTPAddr() string { return n.ln.Addr().String() }

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
	f := n.raft.Apply(b, 5*time.Second)
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
func (n *Node) Begin(r Record) error { return n.apply(command{Op: opBegin, Record: &r}) }

// Progress commits a checkpoint of a transfer's position.
func (n *Node) Progress(r Record) error { return n.applyEntry("progress", encodeProgress(&r)) }

// progressAsync starts committing a checkpoint and returns at once; nil
// when the node does not lead.
func (n *Node) progressAsync(r *Record) raft.ApplyFuture {
	if !n.IsLeader() {
		return nil
	}
	return n.raft.Apply(encodeProgress(r), 5*time.Second)
}

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
func (n *Node) End(key string) error { return n.apply(command{Op: opEnd, ID: key}) }

// Transfers returns the live transfers of the replicated state, for a new
// leader to resume.
func (n *Node) Transfers() []Record { return n.fsm.state().Transfers }

// Barrier waits until this node has applied every committed entry (a new
// leader calls it before resuming transfers).
func (n *Node) Barrier(timeout time.Duration) error { return n.raft.Barrier(timeout).Error() }

// Handover transfers leadership to another member, if this node leads.
func (n *Node) Handover() error {
	if !n.IsLeader() {
		return nil
	}
	return n.raft.LeadershipTransfer().Error()
}

// Close stops raft, the HTTP endpoint and the stores. It does not hand over
// leadership: call Handover first for a graceful stop.
func (n *Node) Close() error {
	var errs []error
	select {
	case <-n.stop:
		return nil
	default:
		close(n.stop)
	}
	if n.raft != nil {
		errs = append(errs, n.raft.Shutdown().Error())
	}
	if c, ok := n.trans.(raft.WithClose); ok {
		errs = append(errs, c.Close())
	}
	if n.http != nil {
		errs = append(errs, n.http.Close())
	}
	n.wg.Wait()
	close(n.leader)
	for _, s := range n.stores {
		errs = append(errs, s.Close())
	}
	return errors.Join(errs...)
}
