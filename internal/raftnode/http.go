package raftnode

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// HeaderLeader carries the leader's HTTP address on a follower's 307
// answer to POST /join.
const HeaderLeader = "X-Leader"

// ErrJoinRefused: the leader refused the join for good (a bad request, a
// certificate that names another node, an address that is another
// member's); the joining node stops trying.
var ErrJoinRefused = errors.New("raftnode: join refused")

// maxRedirects bounds the 307 answers one join request follows (two
// followers with stale views could point at each other).
const maxRedirects = 4

// join asks the member at addr to add this node, every 200 ms until it
// succeeds or ctx ends.
func (n *Node) join(ctx context.Context, addr string) error {
	for {
		err := n.postJoin(ctx, addr)
		if err == nil {
			n.log.Info(n.cfg.LogPrefix+": joined", "via", addr)
			return nil
		}
		if errors.Is(err, ErrJoinRefused) {
			return err // retrying would be refused again
		}
		n.log.Info(n.cfg.LogPrefix+": join failed, retrying", "via", addr, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("raftnode: join via %s: %w", addr, errors.Join(err, ctx.Err()))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// postJoin posts this node's record to addr's /join, following the
// redirects to the leader, within RequestTimeout.
func (n *Node) postJoin(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.RequestTimeout)
	defer cancel()
	body, err := json.Marshal(n.self())
	if err != nil {
		return err
	}
	for hop := 0; ; hop++ {
		leader, err := n.post(ctx, addr, body)
		if err == nil || leader == "" || leader == addr || hop == maxRedirects {
			return err
		}
		addr = leader
	}
}

// post makes one POST /join; on a 307 it returns the leader's address
// with the error.
func (n *Node) post(ctx context.Context, addr string, body []byte) (leader string, err error) {
	scheme := "http://"
	if n.cfg.TLS != nil {
		scheme = "https://"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, scheme+addr+"/join", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := n.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("raftnode: join via %s: %w", addr, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 == 2 {
		return "", nil
	}
	err = fmt.Errorf("raftnode: join via %s: %s: %s", addr, resp.Status, bytes.TrimSpace(msg))
	switch resp.StatusCode {
	case http.StatusBadRequest, http.StatusForbidden, http.StatusConflict:
		err = fmt.Errorf("%w: %w", ErrJoinRefused, err)
	}
	if resp.StatusCode == http.StatusTemporaryRedirect {
		return resp.Header.Get(HeaderLeader), err
	}
	return "", err
}

// HandleJoin is POST /join with a [Member]: the leader adds it (see
// AddMember) and answers 200; a follower answers 307 with the leader's
// HTTP address, when it knows it, in X-Leader. A body without id or
// raft_addr is a 400. With Config.TLS, a request whose client certificate
// does not name m.ID is a 403, and the member may move its own raft
// address. A change refused by the membership checks is a 403 (not the
// owner), 409 (address taken), 429 (rate limit) or 503 (quorum,
// unreachable, raft's errors).
func (n *Node) HandleJoin(w http.ResponseWriter, r *http.Request) {
	var m Member
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4096)).Decode(&m); err != nil || m.ID == "" || m.RaftAddr == "" {
		http.Error(w, "bad join request", http.StatusBadRequest)
		return
	}
	owner := false
	if n.cfg.TLS != nil {
		if id := requestID(r); id != m.ID {
			n.log.Warn(n.cfg.LogPrefix+": join refused", "id", m.ID, "certificate", id, "remote", r.RemoteAddr)
			http.Error(w, fmt.Sprintf("%v: the certificate names %q, the join %q", ErrIdentity, id, m.ID), http.StatusForbidden)
			return
		}
		owner = true
	}
	if !n.IsLeader() {
		w.Header().Set(HeaderLeader, n.LeaderHTTP())
		http.Error(w, "not the leader", http.StatusTemporaryRedirect)
		return
	}
	if err := n.addMember(m, owner); err != nil {
		n.log.Warn(n.cfg.LogPrefix+": join refused", "id", m.ID, "raft", m.RaftAddr, "remote", r.RemoteAddr, "err", err)
		http.Error(w, err.Error(), joinStatus(err))
		return
	}
}

// StatusHandler is GET /status: what status returns, as indented JSON.
func StatusHandler[T any](status func() T) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(status())
	}
}
