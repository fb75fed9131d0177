package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/raftnode"
)

// Headers of the HTTP API.
const (
	// hdrForwardedBy marks a request a follower forwarded to the leader
	// (its value is the follower's ID); a node that is not the leader
	// refuses such a request rather than forwarding it again.
	hdrForwardedBy = "X-Raftkv-Forwarded-By"
	// hdrNode names the node that answered.
	hdrNode = "X-Raftkv-Node"
	// hdrLeader is the leader's HTTP address, when known, on a 503.
	hdrLeader = "X-Raftkv-Leader"
	// hdrNotApplied, on a failed write, says the write was certainly not
	// applied and may be retried; without it the outcome is unknown.
	hdrNotApplied = "X-Raftkv-Not-Applied"
)

// maxValueSize bounds a value (and a forwarded request's body).
const maxValueSize = 1 << 20

var errNoLeader = errors.New("raftkv: no leader known")

// reqError is a failed request's answer.
type reqError struct {
	status     int
	result     string // metric label
	notApplied bool
	err        error
}

func (e *reqError) Error() string { return e.err.Error() }
func (e *reqError) Unwrap() error { return e.err }

// classify turns an error of raft, a context or this package into an
// answer.
func classify(err error) *reqError {
	var re *reqError
	switch {
	case errors.As(err, &re):
		return re
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress),
		errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, errNoLeader):
		// Refused before it reached the log.
		return &reqError{status: http.StatusServiceUnavailable, result: resultUnavailable, notApplied: true, err: err}
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrRaftShutdown):
		// In the log, perhaps: committed or not, nobody knows yet.
		return &reqError{status: http.StatusServiceUnavailable, result: resultUnavailable, err: err}
	case errors.Is(err, context.DeadlineExceeded):
		return &reqError{status: http.StatusGatewayTimeout, result: resultTimeout, err: err}
	default:
		return &reqError{status: http.StatusInternalServerError, result: resultError, err: err}
	}
}

func (n *Node) fail(w http.ResponseWriter, op string, start time.Time, err error) {
	e := classify(err)
	if l := n.leaderHTTP(); l != "" {
		w.Header().Set(hdrLeader, l)
	}
	if e.notApplied {
		w.Header().Set(hdrNotApplied, "1")
	}
	http.Error(w, e.Error(), e.status)
	n.m.observe(op, e.result, start)
}

func forwarded(r *http.Request) bool { return r.Header.Get(hdrForwardedBy) != "" }

// handlePut is PUT /kv/{key}: the body becomes the key's value, through
// the leader's log. 204 once committed and applied on the leader.
func (n *Node) handlePut(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	key := r.PathValue("key")
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxValueSize))
	if err != nil {
		n.fail(w, opPutName, start, &reqError{status: http.StatusBadRequest, result: resultBadRequest, notApplied: true, err: fmt.Errorf("raftkv: read value: %w", err)})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.cfg.RequestTimeout)
	defer cancel()
	if n.IsLeader() {
		err := n.apply(encodeCommand(opPut, key, body))
		if err == nil {
			w.WriteHeader(http.StatusNoContent)
			n.m.observe(opPutName, resultOK, start)
			return
		}
		if !errors.Is(err, raft.ErrNotLeader) || forwarded(r) {
			n.fail(w, opPutName, start, err)
			return
		}
		// Not the leader any more, and the entry never reached the log:
		// forward it.
	}
	n.forward(ctx, w, r, opPutName, body, start)
}

// handleGet is GET /kv/{key}: 200 with the value or 404. With ?stale=1
// any node answers from its own state; otherwise the leader answers
// linearizably (see readLinearizable) and a follower forwards.
func (n *Node) handleGet(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	key := r.PathValue("key")
	if s := r.URL.Query().Get("stale"); s == "1" || s == "true" {
		v, ok := n.fsm.get(key)
		n.writeValue(w, opGetStale, v, ok, start)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.cfg.RequestTimeout)
	defer cancel()
	if n.IsLeader() {
		v, ok, err := n.readLinearizable(ctx, key)
		if err == nil {
			n.writeValue(w, opGet, v, ok, start)
			return
		}
		// A read has no effect: whatever failed, another leader may answer.
		if forwarded(r) || !(errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost)) {
			n.fail(w, opGet, start, err)
			return
		}
	}
	n.forward(ctx, w, r, opGet, nil, start)
}

func (n *Node) writeValue(w http.ResponseWriter, op, v string, ok bool, start time.Time) {
	if !ok {
		http.Error(w, "not found", http.StatusNotFound)
		n.m.observe(op, resultNotFound, start)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	io.WriteString(w, v)
	n.m.observe(op, resultOK, start)
}

// handleJoin is POST /join {"id","raft_addr","http_addr"}: the leader
// adds the node as a voter (unless it is one with that address) and
// records its HTTP address; a follower forwards.
func (n *Node) handleJoin(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4096))
	var j raftnode.Member
	if err == nil {
		err = json.Unmarshal(body, &j)
	}
	if err == nil && (j.ID == "" || j.RaftAddr == "" || j.HTTPAddr == "") {
		err = errors.New("id, raft_addr and http_addr are required")
	}
	if err != nil {
		n.fail(w, opJoin, start, &reqError{status: http.StatusBadRequest, result: resultBadRequest, notApplied: true, err: fmt.Errorf("raftkv: bad join request: %w", err)})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), n.cfg.RequestTimeout)
	defer cancel()
	if n.IsLeader() {
		err := n.node.AddMember(j)
		if err == nil {
			w.WriteHeader(http.StatusNoContent)
			n.m.observe(opJoin, resultOK, start)
			return
		}
		if !errors.Is(err, raft.ErrNotLeader) || forwarded(r) {
			n.fail(w, opJoin, start, err)
			return
		}
	}
	n.forward(ctx, w, r, opJoin, body, start)
}

// forward relays the request to the leader and its answer back, within
// ctx (the request's timeout).
func (n *Node) forward(ctx context.Context, w http.ResponseWriter, r *http.Request, op string, body []byte, start time.Time) {
	if forwarded(r) {
		n.fail(w, op, start, fmt.Errorf("%w (request forwarded by %s)", raft.ErrNotLeader, r.Header.Get(hdrForwardedBy)))
		return
	}
	leader := n.leaderHTTP()
	if leader == "" || leader == n.httpAddr {
		n.fail(w, op, start, errNoLeader)
		return
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, "http://"+leader+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		n.fail(w, op, start, err)
		return
	}
	req.Header.Set(hdrForwardedBy, n.cfg.ID)
	if ct := r.Header.Get("Content-Type"); ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	resp, err := n.client.Do(req)
	if err != nil {
		n.m.forwards[resultError].Inc()
		e := &reqError{status: http.StatusBadGateway, result: resultError, err: fmt.Errorf("raftkv: forward to leader %s: %w", leader, err)}
		var oe *net.OpError
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			e.status, e.result = http.StatusGatewayTimeout, resultTimeout
		case errors.As(err, &oe) && oe.Op == "dial":
			e.notApplied = true // never sent
		}
		n.fail(w, op, start, e)
		return
	}
	defer resp.Body.Close()
	n.m.forwards[resultOK].Inc()
	for _, h := range []string{"Content-Type", hdrNode, hdrLeader, hdrNotApplied} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, io.LimitReader(resp.Body, maxValueSize+4096))
	n.m.observe(op, resultForwarded, start)
}

// Status is the answer of GET /status.
type Status struct {
	ID           string            `json:"id"`
	State        string            `json:"state"`
	Term         uint64            `json:"term"`
	LeaderID     string            `json:"leader_id"`
	LeaderHTTP   string            `json:"leader_http"`
	RaftAddr     string            `json:"raft_addr"`
	HTTPAddr     string            `json:"http_addr"`
	LastIndex    uint64            `json:"last_index"`
	CommitIndex  uint64            `json:"commit_index"`
	AppliedIndex uint64            `json:"applied_index"`
	FSMIndex     uint64            `json:"fsm_index"`
	FSMTerm      uint64            `json:"fsm_term"`
	Keys         int               `json:"keys"`
	Voters       []Voter           `json:"voters"`
	Members      map[string]string `json:"members"` // ID → HTTP address
}

// Voter is one server of the raft configuration.
type Voter struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	Suffrage string `json:"suffrage"`
}

// Status returns the node's view of the cluster.
func (n *Node) Status() Status {
	_, lid := n.raft.LeaderWithID()
	ft, fi, keys := n.fsm.state()
	s := Status{
		ID: n.cfg.ID, State: n.raft.State().String(), Term: n.raft.CurrentTerm(),
		LeaderID: string(lid), LeaderHTTP: n.leaderHTTP(),
		RaftAddr: n.RaftAddr(), HTTPAddr: n.httpAddr,
		LastIndex: n.raft.LastIndex(), CommitIndex: n.raft.CommitIndex(), AppliedIndex: n.raft.AppliedIndex(),
		FSMIndex: fi, FSMTerm: ft, Keys: keys, Members: n.fsm.memberList(),
	}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			s.Voters = append(s.Voters, Voter{ID: string(srv.ID), RaftAddr: string(srv.Address), Suffrage: srv.Suffrage.String()})
		}
		sort.Slice(s.Voters, func(i, j int) bool { return s.Voters[i].ID < s.Voters[j].ID })
	}
	return s
}
