package raftnode

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"golang.org/x/time/rate"

	"github.com/ioactor/ioactor/internal/clustertls"
)

// Membership checks. The leader changes the raft configuration on a join
// only when the change cannot break the cluster:
//
//   - with Config.TLS, POST /join for id X must come with X's certificate
//     (the node id in a certificate of the cluster CA): only X changes
//     what the cluster records about X;
//   - a raft address that another member has is refused (ErrAddressTaken),
//     and so is a new raft address for an existing member unless the
//     request comes from that member (ErrNotOwner);
//   - a new voter must answer on its raft address (a TCP connect, or with
//     TLS a handshake that shows its certificate) before it is added
//     (ErrUnreachable);
//   - as etcd's strict reconfiguration check does, a new voter is refused
//     when the voters that are reachable now (the leader, and the
//     followers whose heartbeats are not failing) would be fewer than the
//     quorum of the grown configuration (ErrQuorum): a cluster that lost
//     one of three voters does not take a fourth (a one-node cluster
//     takes its second: there is no other way to grow);
//   - voter changes are rate-limited (ErrRateLimited): a burst of
//     membershipBurst, then one per membershipEvery.
var (
	ErrNotOwner     = errors.New("raftnode: only the member itself may change its raft address")
	ErrAddressTaken = errors.New("raftnode: raft address belongs to another member")
	ErrQuorum       = errors.New("raftnode: the change would leave the cluster short of a reachable quorum")
	ErrRateLimited  = errors.New("raftnode: too many membership changes; retry later")
	ErrUnreachable  = errors.New("raftnode: the new member does not answer on its raft address")
	ErrIdentity     = errors.New("raftnode: the request's certificate names another node")
)

const (
	membershipEvery = time.Second
	membershipBurst = 4
	probeTimeout    = time.Second
)

// health tracks, on the leader, which voters' heartbeats are failing, from
// raft's observations.
type health struct {
	mu      sync.Mutex
	failing map[raft.ServerID]bool
	limiter *rate.Limiter
	ch      chan raft.Observation
	obs     *raft.Observer
}

func newHealth() *health {
	h := &health{
		failing: make(map[raft.ServerID]bool),
		limiter: rate.NewLimiter(rate.Every(membershipEvery), membershipBurst),
		ch:      make(chan raft.Observation, 64),
	}
	h.obs = raft.NewObserver(h.ch, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation, raft.LeaderObservation, raft.PeerObservation:
			return true
		}
		return false
	})
	return h
}

// run applies observations until ctx ends (a goroutine of the node).
func (h *health) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case o := <-h.ch:
			h.mu.Lock()
			switch d := o.Data.(type) {
			case raft.FailedHeartbeatObservation:
				h.failing[d.PeerID] = true
			case raft.ResumedHeartbeatObservation:
				delete(h.failing, d.PeerID)
			case raft.LeaderObservation:
				// A new term's leader starts its heartbeats afresh.
				clear(h.failing)
			case raft.PeerObservation:
				if d.Removed {
					delete(h.failing, d.Peer.ID)
				}
			}
			h.mu.Unlock()
		}
	}
}

// reachable counts the voters of c (but except) that are reachable now:
// self, and the others whose heartbeats are not failing and that answer
// probe on their raft address. The probe covers the moments raft's
// observations do not: a new leader's first heartbeats, a voter that died
// since the last one.
func (h *health) reachable(c raft.Configuration, self raft.ServerID, except raft.ServerID, probe func(id, addr string) error) (reachable, voters int) {
	var others []raft.Server
	h.mu.Lock()
	for _, s := range c.Servers {
		if s.Suffrage != raft.Voter || s.ID == except {
			continue
		}
		voters++
		switch {
		case s.ID == self:
			reachable++
		case !h.failing[s.ID]:
			others = append(others, s)
		}
	}
	h.mu.Unlock()
	if probe == nil {
		return reachable + len(others), voters
	}
	ok := make(chan bool, len(others))
	for _, s := range others {
		go func() { ok <- probe(string(s.ID), string(s.Address)) == nil }()
	}
	for range others {
		if <-ok {
			reachable++
		}
	}
	return reachable, voters
}

// checkVoterChange decides whether m may become a voter at m.RaftAddr, or
// move there; owner says the request comes from m itself.
func (n *Node) checkVoterChange(c raft.Configuration, m Member, owner bool) error {
	var existing *raft.Server
	for i, s := range c.Servers {
		if string(s.ID) == m.ID {
			existing = &c.Servers[i]
		} else if string(s.Address) == m.RaftAddr {
			return fmt.Errorf("%w: %s is %s's", ErrAddressTaken, m.RaftAddr, s.ID)
		}
	}
	if existing != nil && !owner {
		return fmt.Errorf("%w: %s is at %s", ErrNotOwner, m.ID, existing.Address)
	}
	self := raft.ServerID(n.cfg.ID)
	if existing == nil {
		r, v := n.health.reachable(c, self, "", n.probe)
		// The new voter does not count (it has yet to catch up), except
		// when it is a single node's first peer: there is no other way
		// to grow.
		if need := (v+1)/2 + 1; r < need && v > 1 {
			return fmt.Errorf("%w: %d of %d voters reachable, %d needed with %s as voter %d", ErrQuorum, r, v, need, m.ID, v+1)
		}
	} else if existing.Suffrage == raft.Voter {
		r, v := n.health.reachable(c, self, existing.ID, n.probe)
		if need := (v+1)/2 + 1; r < need {
			return fmt.Errorf("%w: %d of the other %d voters reachable while %s moves, %d needed", ErrQuorum, r, v, m.ID, need)
		}
	}
	if !n.health.limiter.Allow() {
		return ErrRateLimited
	}
	return n.probe(m.ID, m.RaftAddr)
}

// probe checks that node id answers on its raft address: a TCP connect,
// or with TLS on the raft transport a handshake whose certificate names
// id.
func (n *Node) probe(id, addr string) error {
	m := Member{ID: id, RaftAddr: addr}
	ctx, cancel := context.WithTimeout(n.ctx, probeTimeout)
	defer cancel()
	if n.cfg.RaftTLS == nil {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", m.RaftAddr)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrUnreachable, err)
		}
		return c.Close()
	}
	host, _, err := net.SplitHostPort(m.RaftAddr)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	cfg := n.cfg.RaftTLS.Clone()
	cfg.ServerName = host
	c, err := (&tls.Dialer{Config: cfg}).DialContext(ctx, "tcp", m.RaftAddr)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer c.Close()
	got, err := clustertls.ConnID(c.(*tls.Conn).ConnectionState())
	if err != nil || got != m.ID {
		return fmt.Errorf("%w: %s answers with the certificate of %q", ErrIdentity, m.RaftAddr, got)
	}
	return nil
}

// requestID is the node id of the verified client certificate of r, or ""
// when it has none.
func requestID(r *http.Request) string {
	if r.TLS == nil {
		return ""
	}
	id, err := clustertls.ConnID(*r.TLS)
	if err != nil {
		return ""
	}
	return id
}

// joinStatus maps AddMember's errors to HTTP statuses.
func joinStatus(err error) int {
	switch {
	case errors.Is(err, ErrNotOwner), errors.Is(err, ErrIdentity):
		return http.StatusForbidden
	case errors.Is(err, ErrAddressTaken):
		return http.StatusConflict
	case errors.Is(err, ErrRateLimited):
		return http.StatusTooManyRequests
	}
	return http.StatusServiceUnavailable
}
