package raft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
	"golang.org/x/sys/unix"

	"github.com/ioactor/ioactor/netio"
)

// Transport is a raft.Transport over package tcp. Create it with [New];
// every method is safe from any goroutine.
type Transport struct {
	cfg    Config
	sys    *netio.System
	ownSys bool
	log    *slog.Logger
	m      *metrics
	local  hraft.ServerAddress
	bound  netip.AddrPort

	consumeCh  chan hraft.RPC
	heartbeat  heartbeatFn
	shutdownCh chan struct{}
	closedDone chan struct{}

	// Goroutines the transport started (dispatchers, pipeline deliverers).
	wg sync.WaitGroup

	bud budget // bytes of incoming frames, all server connections (limits.go)

	mu        sync.Mutex
	closed    bool
	peers     map[hraft.ServerAddress]*peer
	pipelines map[*pipeline]struct{}
	servers   map[*serverConn]struct{}
	actors    map[netio.Ref]struct{} // our actors, alive
	tcpConns  map[netio.Ref]struct{} // tcp connection actors our actors use
	listener  netio.Ref              // our listener actor
	tcpLn     netio.Ref              // the tcp listener actor
}

var (
	_ hraft.Transport   = (*Transport)(nil)
	_ hraft.WithClose   = (*Transport)(nil)
	_ hraft.WithPreVote = (*Transport)(nil)
	_ hraft.WithPeers   = (*Transport)(nil)
)

// New starts a transport: it is listening when New returns.
func New(cfg Config) (*Transport, error) {
	cfg = cfg.withDefaults()
	if err := tlsSetup(&cfg); err != nil {
		return nil, err
	}
	bind, err := resolve(cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("raft transport: bind address: %w", err)
	}
	t := &Transport{
		cfg:        cfg,
		log:        cfg.Logger,
		consumeCh:  make(chan hraft.RPC),
		shutdownCh: make(chan struct{}),
		closedDone: make(chan struct{}),
		peers:      make(map[hraft.ServerAddress]*peer),
		pipelines:  make(map[*pipeline]struct{}),
		servers:    make(map[*serverConn]struct{}),
		actors:     make(map[netio.Ref]struct{}),
		tcpConns:   make(map[netio.Ref]struct{}),
	}
	t.m = newMetrics(cfg.Registerer != nil)
	t.bud.max = int64(cfg.MaxBuffered)
	t.sys = cfg.System
	if t.sys == nil {
		// A private System: its loops and logger are this transport's, it
		// registers no metrics (pass a System for the loops' metrics), and
		// Close shuts it down. No state is shared between transports.
		// Raft's traffic is request and answer between goroutines and
		// the loop: the loop parks on the runtime's poller whenever it
		// would block (netio.Config.RawWait).
		t.sys, err = netio.NewSystem(netio.Config{Loops: cfg.Loops, Logger: cfg.Logger, RawWait: -1})
		if err != nil {
			return nil, fmt.Errorf("raft transport: %w", err)
		}
		t.ownSys = true
	}
	fail := func(err error) (*Transport, error) {
		t.Close()
		return nil, err
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(t.m); err != nil {
			t.m.on = false
			return fail(fmt.Errorf("raft transport: register metrics: %w", err))
		}
	}
	res := make(chan error, 1)
	ln := &listener{t: t, addr: bind, result: res}
	ref, err := t.spawn(ln)
	if err != nil {
		return fail(err)
	}
	t.mu.Lock()
	t.listener = ref
	t.mu.Unlock()
	select {
	case err := <-res:
		if err != nil {
			return fail(fmt.Errorf("raft transport: listen on %v: %w", bind, err))
		}
	case <-time.After(cfg.Timeout):
		return fail(fmt.Errorf("raft transport: listen on %v: %w", bind, ErrTimeout))
	}
	t.bound = ln.bound
	t.local = hraft.ServerAddress(ln.bound.String())
	if cfg.Advertise != "" {
		adv, err := netip.ParseAddrPort(cfg.Advertise)
		if err == nil && adv.Addr().IsUnspecified() {
			return fail(fmt.Errorf("raft transport: advertise address %v is not advertisable", adv))
		}
		t.local = hraft.ServerAddress(cfg.Advertise)
	} else if ln.bound.Addr().IsUnspecified() {
		return fail(fmt.Errorf("raft transport: bound to %v: set Advertise", ln.bound))
	}
	return t, nil
}

// resolve turns "host:port" into an address; names are looked up.
func resolve(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
	}
	a, err := net.ResolveTCPAddr("tcp", s)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// spawn starts one of the transport's actors, unless it is closed.
func (t *Transport) spawn(a netio.Actor) (netio.Ref, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return netio.Ref{}, ErrTransportShutdown
	}
	ref := t.sys.Spawn(a)
	t.actors[ref] = struct{}{}
	return ref, nil
}

func (t *Transport) untrackActor(ref netio.Ref) {
	t.mu.Lock()
	delete(t.actors, ref)
	t.mu.Unlock()
}

func (t *Transport) trackConn(ref netio.Ref) {
	t.mu.Lock()
	t.tcpConns[ref] = struct{}{}
	t.mu.Unlock()
}

// forgetConnUnlessClosing drops a socket our actor leaves behind (it closes
// right after, by the death pact); Close keeps them, to wait for them.
func (t *Transport) forgetConnUnlessClosing(ref netio.Ref) {
	t.mu.Lock()
	if !t.closed {
		delete(t.tcpConns, ref)
	}
	t.mu.Unlock()
}

func (t *Transport) untrackConn(ref netio.Ref) {
	t.mu.Lock()
	delete(t.tcpConns, ref)
	t.mu.Unlock()
}

// Consumer returns the channel raft reads RPCs from.
func (t *Transport) Consumer() <-chan hraft.RPC { return t.consumeCh }

// LocalAddr returns the address peers reach this transport at.
func (t *Transport) LocalAddr() hraft.ServerAddress { return t.local }

// SetHeartbeatHandler sets the fast path for heartbeats: they arrive on a
// connection of their own and are handed to cb directly, never behind
// another RPC. With no handler they go to the Consumer channel.
func (t *Transport) SetHeartbeatHandler(cb func(rpc hraft.RPC)) { t.heartbeat.set(cb) }

// EncodePeer returns the address as bytes.
func (t *Transport) EncodePeer(id hraft.ServerID, addr hraft.ServerAddress) []byte {
	return []byte(addr)
}

// DecodePeer is the inverse of EncodePeer.
func (t *Transport) DecodePeer(b []byte) hraft.ServerAddress { return hraft.ServerAddress(b) }

// AppendEntries sends one AppendEntries RPC and waits for its answer. A
// heartbeat (no entries, no previous entry, no commit index) goes on the
// peer's heartbeat connection.
func (t *Transport) AppendEntries(id hraft.ServerID, target hraft.ServerAddress, args *hraft.AppendEntriesRequest, resp *hraft.AppendEntriesResponse) error {
	if isHeartbeat(args) {
		return t.roundTrip(target, kindHeartbeat, roleHeartbeat, args, resp)
	}
	return t.roundTrip(target, kindAppendEntries, roleRPC, args, resp)
}

// RequestVote sends a RequestVote RPC and waits for its answer.
func (t *Transport) RequestVote(id hraft.ServerID, target hraft.ServerAddress, args *hraft.RequestVoteRequest, resp *hraft.RequestVoteResponse) error {
	return t.roundTrip(target, kindRequestVote, roleRPC, args, resp)
}

// RequestPreVote sends a RequestPreVote RPC and waits for its answer.
func (t *Transport) RequestPreVote(id hraft.ServerID, target hraft.ServerAddress, args *hraft.RequestPreVoteRequest, resp *hraft.RequestPreVoteResponse) error {
	return t.roundTrip(target, kindRequestPreVote, roleRPC, args, resp)
}

// TimeoutNow sends a TimeoutNow RPC and waits for its answer.
func (t *Transport) TimeoutNow(id hraft.ServerID, target hraft.ServerAddress, args *hraft.TimeoutNowRequest, resp *hraft.TimeoutNowResponse) error {
	return t.roundTrip(target, kindTimeoutNow, roleRPC, args, resp)
}

func (t *Transport) opErr(kind rpcKind, target hraft.ServerAddress, err error) error {
	t.m.rpcErrors[kind].Add(1)
	return &OpError{Op: kind.String(), Peer: target, Err: err}
}

// roundTrip sends one request and waits for its answer, which the
// connection guarantees within Timeout.
//
// A call that a connection used before carried fails with the peer's close
// or reset is sent once more, on a fresh connection: the peer restarted,
// and the client had not yet seen the old incarnation's FIN when it picked
// the connection (tcp.FINArrived drops it, but the call may be first).
// The old incarnation never answered; raft's RPCs are safe to repeat.
func (t *Transport) roundTrip(target hraft.ServerAddress, kind rpcKind, role connRole, args, resp any) error {
	for retried := false; ; retried = true {
		c, err := t.conn(target, role)
		if err != nil {
			return t.opErr(kind, target, err)
		}
		wire := kind
		if kind == kindHeartbeat {
			wire = kindAppendEntries
		}
		reused := c.answered.Load()
		cl := getCall(kind, t.cfg.Timeout)
		if err := c.enqueue(cl, wire, args); err != nil {
			putCall(cl)
			if !retried && reused && errors.Is(err, ErrConnectionClosed) {
				continue
			}
			return t.opErr(kind, target, err)
		}
		c.wait(cl)
		err = cl.err
		if err == nil {
			err = decodeAnswer(cl.buf, resp)
		}
		t.m.observe(kind, cl.start)
		putCall(cl)
		if err != nil && !retried && reused && stale(err) {
			continue
		}
		if err != nil {
			return t.opErr(kind, target, err)
		}
		return nil
	}
}

// stale reports whether a call failed because its connection's peer had
// closed or reset it (not a timeout, not an answer).
func stale(err error) bool {
	return errors.Is(err, ErrConnectionClosed) && (errors.Is(err, errPeerClosed) ||
		errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE))
}

// conn returns a connection of the given role to target.
func (t *Transport) conn(target hraft.ServerAddress, role connRole) (*clientConn, error) {
	p, err := t.peerFor(target)
	if err != nil {
		return nil, err
	}
	return p.get(role)
}

func (t *Transport) peerFor(target hraft.ServerAddress) (*peer, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrTransportShutdown
	}
	p := t.peers[target]
	if p == nil {
		p = &peer{t: t, target: target, others: make(map[*clientConn]struct{})}
		t.peers[target] = p
	}
	return p, nil
}

// Connect opens the connections to peer ahead of the first RPC (the
// Transport argument is ignored: this is a network transport).
func (t *Transport) Connect(peer hraft.ServerAddress, _ hraft.Transport) {
	p, err := t.peerFor(peer)
	if err != nil {
		return
	}
	p.get(roleHeartbeat)
	p.get(roleRPC)
}

// Disconnect closes every connection and pipeline to peer and forgets its
// back-off; the next RPC dials again.
func (t *Transport) Disconnect(peer hraft.ServerAddress) {
	t.mu.Lock()
	p := t.peers[peer]
	delete(t.peers, peer)
	var pls []*pipeline
	for pl := range t.pipelines {
		if pl.target == peer {
			pls = append(pls, pl)
		}
	}
	t.mu.Unlock()
	for _, pl := range pls {
		pl.Close()
	}
	if p != nil {
		p.closeAll(fmt.Errorf("%w: disconnected", ErrConnectionClosed))
	}
}

// DisconnectAll disconnects every peer.
func (t *Transport) DisconnectAll() {
	t.mu.Lock()
	var addrs []hraft.ServerAddress
	for a := range t.peers {
		addrs = append(addrs, a)
	}
	for pl := range t.pipelines {
		addrs = append(addrs, pl.target)
	}
	t.mu.Unlock()
	for _, a := range addrs {
		t.Disconnect(a)
	}
}

// IsShutdown reports whether Close was called.
func (t *Transport) IsShutdown() bool {
	select {
	case <-t.shutdownCh:
		return true
	default:
		return false
	}
}

// Close stops the transport: the listener, every connection and every
// goroutine it started. RPCs in flight fail with ErrTransportShutdown, as
// does every later call. Close is idempotent; a second call waits for the
// first to finish.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		<-t.closedDone
		return nil
	}
	t.closed = true
	var peers []*peer
	for _, p := range t.peers {
		peers = append(peers, p)
	}
	var pls []*pipeline
	for pl := range t.pipelines {
		pls = append(pls, pl)
	}
	var servers []*serverConn
	for s := range t.servers {
		servers = append(servers, s)
	}
	ln := t.listener
	t.mu.Unlock()
	defer close(t.closedDone)

	close(t.shutdownCh)
	for _, pl := range pls {
		pl.Close()
	}
	for _, p := range peers {
		p.closeAll(ErrTransportShutdown)
	}
	ln.Tell(closeReq{})
	for _, s := range servers {
		s.stop()
	}

	// Wait for our actors, then for the sockets they leave to close.
	ctx, cancel := context.WithTimeout(context.Background(), t.cfg.Timeout+time.Second)
	defer cancel()
	var errs []error
	wait := func(set map[netio.Ref]struct{}, what string) {
		t.mu.Lock()
		refs := make([]netio.Ref, 0, len(set))
		for r := range set {
			refs = append(refs, r)
		}
		t.mu.Unlock()
		for _, r := range refs {
			select {
			case <-r.Done():
			case <-ctx.Done():
				errs = append(errs, fmt.Errorf("raft transport: close: %s still running: %w", what, ctx.Err()))
				return
			}
		}
	}
	wait(t.actors, "connection actors")
	t.mu.Lock()
	if !t.tcpLn.IsZero() {
		t.tcpConns[t.tcpLn] = struct{}{}
	}
	t.mu.Unlock()
	wait(t.tcpConns, "sockets")
	t.wg.Wait()
	if t.ownSys {
		if err := t.sys.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("raft transport: close: %w", err))
		}
	}
	if t.cfg.Registerer != nil && t.m.on {
		t.cfg.Registerer.Unregister(t.m)
	}
	return errors.Join(errs...)
}

// peer is the set of connections to one address, and its dial back-off.
type peer struct {
	t      *Transport
	target hraft.ServerAddress

	mu       sync.Mutex
	hb       *clientConn
	rpc      []*clientConn
	others   map[*clientConn]struct{} // pipelines and snapshots
	closed   bool
	failures int
	retryAt  time.Time
	lastErr  error
	hadConn  bool // a connection was up before: a new dial is a reconnect
}

// get returns a live connection of the role, dialing one when needed.
func (p *peer) get(role connRole) (*clientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("%w: disconnected", ErrConnectionClosed)
	}
	switch role {
	case roleHeartbeat:
		if p.hb != nil && !p.hb.isClosed.Load() {
			return p.hb, nil
		}
	case roleRPC:
		var best *clientConn
		for _, c := range p.rpc {
			if c.isClosed.Load() {
				continue
			}
			if best == nil || c.npend.Load() < best.npend.Load() {
				best = c
			}
		}
		if best != nil && (best.npend.Load() == 0 || len(p.rpc) >= p.t.cfg.MaxPool) {
			return best, nil
		}
	}
	if p.failures > 0 && time.Now().Before(p.retryAt) {
		return nil, fmt.Errorf("%w: %w", ErrPeerUnavailable, p.lastErr)
	}
	addr, err := resolve(string(p.target))
	if err != nil {
		return nil, fmt.Errorf("resolve: %w", err)
	}
	c := newClientConn(p.t, p, role, addr)
	ref, err := p.t.spawn(c)
	if err != nil {
		return nil, err
	}
	c.ref = ref
	if p.hadConn && role != roleSnapshot {
		p.t.m.reconnects.Add(1)
	}
	switch role {
	case roleHeartbeat:
		p.hb = c
	case roleRPC:
		p.rpc = append(p.rpc, c)
	default:
		p.others[c] = struct{}{}
	}
	return c, nil
}

// dialed records a dial's outcome for the back-off.
func (p *peer) dialed(c *clientConn, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err == nil:
		p.failures, p.lastErr, p.hadConn = 0, nil, true
	case errors.Is(err, ErrTransportShutdown):
	default:
		p.t.m.dialFailures.Add(1)
		p.failures++
		p.lastErr = err
		if b := p.t.cfg.ReconnectBackoff; b > 0 {
			d := b << min(p.failures-1, 20)
			p.retryAt = time.Now().Add(min(d, p.t.cfg.MaxReconnectBackoff))
		}
	}
}

// forget drops a connection that ended.
func (p *peer) forget(c *clientConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.hb == c {
		p.hb = nil
	}
	for i, x := range p.rpc {
		if x == c {
			p.rpc = append(p.rpc[:i], p.rpc[i+1:]...)
			break
		}
	}
	delete(p.others, c)
}

// closeAll closes every connection to the peer.
func (p *peer) closeAll(err error) {
	p.mu.Lock()
	p.closed = true
	var cs []*clientConn
	if p.hb != nil {
		cs = append(cs, p.hb)
	}
	cs = append(cs, p.rpc...)
	for c := range p.others {
		cs = append(cs, c)
	}
	p.mu.Unlock()
	for _, c := range cs {
		c.close(err, false)
	}
}

// InstallSnapshot streams a snapshot to target on a connection of its own:
// the request, then exactly args.Size bytes of data, each chunk written
// only once the kernel took the one before the last (so a receiver that
// stops reading stops the sender), then waits for the answer.
func (t *Transport) InstallSnapshot(id hraft.ServerID, target hraft.ServerAddress, args *hraft.InstallSnapshotRequest, resp *hraft.InstallSnapshotResponse, data io.Reader) error {
	c, err := t.conn(target, roleSnapshot)
	if err != nil {
		return t.opErr(kindInstallSnapshot, target, err)
	}
	err = t.installSnapshot(c, args, resp, data)
	if err != nil {
		c.close(err, true) // reset: the receiver must not take a short body for a whole one
		return t.opErr(kindInstallSnapshot, target, err)
	}
	c.close(fmt.Errorf("%w: snapshot sent", ErrConnectionClosed), false)
	return nil
}

func (t *Transport) installSnapshot(c *clientConn, args *hraft.InstallSnapshotRequest, resp *hraft.InstallSnapshotResponse, data io.Reader) error {
	timeout := t.cfg.Timeout
	// Not pooled: on an early return the call may still be completed by the
	// connection's end, after we are gone.
	cl := &call{kind: kindInstallSnapshot, start: time.Now(), done: make(chan struct{}, 1)}
	cl.deadline = cl.start.Add(100 * 365 * 24 * time.Hour) // set once the data is sent
	if err := c.enqueue(cl, kindInstallSnapshot, args); err != nil {
		return err
	}
	answered := false
	chunk := t.cfg.SnapshotChunkSize
	var store [2][]byte
	chunks := [2]*rawChunk{{done: make(chan error, 1)}, {done: make(chan error, 1)}}
	busy := [2]bool{}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	waitChunk := func(i int) error {
		if !busy[i] {
			return nil
		}
		timer.Reset(timeout)
		select {
		case err := <-chunks[i].done:
			busy[i] = false
			return err
		case <-cl.done:
			answered = true
			return errAnsweredEarly
		case <-timer.C:
			return fmt.Errorf("%w: no progress sending snapshot data for %v", ErrTimeout, timeout)
		}
	}
	remaining := args.Size
	i := 0
	var sendErr error
	for remaining > 0 {
		if sendErr = waitChunk(i); sendErr != nil {
			break
		}
		if store[i] == nil {
			store[i] = make([]byte, chunk)
		}
		n := int(min(int64(chunk), remaining))
		if _, err := io.ReadFull(data, store[i][:n]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("%w: %d bytes missing", ErrSnapshotSize, remaining)
			}
			return fmt.Errorf("read snapshot data: %w", err)
		}
		chunks[i].data = store[i][:n] // the writer's until done
		if err := c.w.enqueueRaw(c.ref, chunks[i], t.m); err != nil {
			return err
		}
		busy[i] = true
		t.m.snapshotBytes.Add(uint64(n))
		remaining -= int64(n)
		i ^= 1
	}
	if sendErr == nil {
		for j := range chunks {
			if sendErr = waitChunk(j); sendErr != nil {
				break
			}
		}
	}
	if sendErr != nil && sendErr != errAnsweredEarly {
		return sendErr
	}
	if !answered {
		wait := timeout * time.Duration(max(1, args.Size/snapshotTimeoutUnit))
		c.setDeadline(cl, time.Now().Add(wait))
		<-cl.done
	}
	err := cl.err
	if err == nil {
		err = decodeAnswer(cl.buf, resp)
	}
	t.m.observe(kindInstallSnapshot, cl.start)
	return err
}

var errAnsweredEarly = errors.New("answered before all data was sent")
