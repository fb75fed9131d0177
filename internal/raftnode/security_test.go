package raftnode

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/clustertls"
	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
)

// TestRaftAddrInUse: a node whose raft address is taken fails to start with
// an error that names the address and the cause, and does not panic (a nil
// *Transport in the raft.Transport interface used to reach Close).
func TestRaftAddrInUse(t *testing.T) {
	leakcheck.Check(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = tryStartTestNode(t, t.TempDir(), "n1", ln.Addr().String(), "")
	if err == nil {
		t.Fatal("started on a raft address in use")
	}
	if msg := err.Error(); !strings.Contains(msg, ln.Addr().String()) || !strings.Contains(msg, "address already in use") {
		t.Fatalf("error %q does not name the address and the cause", msg)
	}
}

// certs makes a CA and a node directory per id under dir and returns
// their TLS configs (both roles).
func certs(t *testing.T, dir string, ids ...string) map[string]*tls.Config {
	t.Helper()
	ca := filepath.Join(dir, "ca")
	if err := clustertls.NewCA(ca); err != nil {
		t.Fatal(err)
	}
	out := make(map[string]*tls.Config)
	for _, id := range ids {
		d := filepath.Join(dir, "certs-"+id)
		if err := clustertls.NewNode(ca, id, []string{"127.0.0.1"}, d); err != nil {
			t.Fatal(err)
		}
		ident, err := clustertls.Load(d)
		if err != nil {
			t.Fatal(err)
		}
		out[id] = ident.Config()
	}
	return out
}

// threeNodes starts a, b and c without TLS, a first, the others joining
// through it, and waits until every member knows every address.
func threeNodes(t *testing.T, dir string) (a, b, c *testNode) {
	t.Helper()
	t.Cleanup(http.DefaultTransport.(*http.Transport).CloseIdleConnections)
	a = startTestNode(t, dir, "a", "127.0.0.1:0", "")
	testutil.WaitFor(t, "a to lead", a.IsLeader)
	b = startTestNode(t, dir, "b", "127.0.0.1:0", a.http)
	c = startTestNode(t, dir, "c", "127.0.0.1:0", a.http)
	testutil.WaitFor(t, "every address everywhere", everyoneKnows(a, b, c))
	return a, b, c
}

// leaderOf waits for one of nodes to lead and returns it.
func leaderOf(t *testing.T, nodes ...*testNode) *testNode {
	t.Helper()
	var l *testNode
	testutil.WaitFor(t, "a leader", func() bool {
		l, _ = roles(nodes)
		return l != nil
	})
	return l
}

func postJoinWith(t *testing.T, c *http.Client, url string, m Member) (int, string) {
	t.Helper()
	body, _ := json.Marshal(m)
	resp, err := c.Post(url+"/join", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(msg)
}

// TestRogueJoinsRefused, without TLS: joins of made-up members whose raft
// address does not answer, a rewrite of a member's raft address by anyone
// but that member, and a join at another member's raft address are all
// refused, and the cluster keeps its leader and its three voters.
func TestRogueJoinsRefused(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	a, b, c := threeNodes(t, dir)
	l := leaderOf(t, a, b, c)
	term := l.Raft().CurrentTerm()
	cases := []struct {
		m    Member
		want int
	}{
		// Unreachable: 503, or 429 once the membership changes' burst
		// is spent.
		{Member{ID: "b1", RaftAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:1"}, http.StatusServiceUnavailable},
		{Member{ID: "b2", RaftAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:1"}, http.StatusServiceUnavailable},
		{Member{ID: "b3", RaftAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:1"}, http.StatusServiceUnavailable},
		{Member{ID: "c", RaftAddr: "127.0.0.1:1", HTTPAddr: c.http}, http.StatusForbidden},
		{Member{ID: "evil", RaftAddr: b.RaftAddr(), HTTPAddr: "127.0.0.1:1"}, http.StatusConflict},
	}
	for _, tc := range cases {
		code, msg := postJoinWith(t, http.DefaultClient, "http://"+l.http, tc.m)
		if code != tc.want && !(tc.want == http.StatusServiceUnavailable && code == http.StatusTooManyRequests) {
			t.Errorf("join %+v: %d %s, want %d", tc.m, code, msg, tc.want)
		}
	}
	f := l.Raft().GetConfiguration()
	if err := f.Error(); err != nil || len(f.Configuration().Servers) != 3 {
		t.Fatalf("configuration %+v, %v", f.Configuration(), err)
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == "c" && string(s.Address) != c.RaftAddr() {
			t.Errorf("c's address rewritten to %s", s.Address)
		}
	}
	if !l.IsLeader() || l.Raft().CurrentTerm() != term {
		t.Errorf("leadership moved: term %d → %d", term, l.Raft().CurrentTerm())
	}
}

// TestJoinLosingQuorumRefused: a cluster that has lost one of three voters
// refuses a fourth (it would need three of four, with two reachable), and
// stays available.
func TestJoinLosingQuorumRefused(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	a, b, c := threeNodes(t, dir)
	l := leaderOf(t, a, b, c)
	var lost *testNode
	for _, n := range []*testNode{a, b, c} {
		if n != l {
			lost = n
			break
		}
	}
	lost.close()
	testutil.WaitFor(t, "the leader to see the lost voter fail", func() bool {
		f := l.Raft().GetConfiguration()
		r, v := l.health.reachable(f.Configuration(), raft.ServerID(l.cfg.ID), "", l.probe)
		return f.Error() == nil && v == 3 && r == 2
	})
	// d answers on its raft address (the probe passes); the survivors'
	// leader (whichever it is by now: a loaded machine may re-elect)
	// refuses it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := Member{ID: "d", RaftAddr: ln.Addr().String(), HTTPAddr: "127.0.0.1:1"}
	var survivors []*testNode
	for _, n := range []*testNode{a, b, c} {
		if n != lost {
			survivors = append(survivors, n)
		}
	}
	testutil.WaitFor(t, "a leader's verdict on d", func() bool {
		l = leaderOf(t, survivors...)
		err = l.AddMember(d)
		return !errors.Is(err, raft.ErrNotLeader)
	})
	if !errors.Is(err, ErrQuorum) {
		t.Fatalf("join: %v, want %v", err, ErrQuorum)
	}
	t.Logf("refused: %v", err)
	if err := l.Raft().Apply([]byte(`{"id":"x","http_addr":"y"}`), 5*time.Second).Error(); err != nil {
		t.Fatalf("the cluster is not available: %v", err)
	}
}

// TestJoinNeedsOwnCertificate, with TLS on the HTTP endpoint: a client
// without a certificate, or with one of another CA, does not get past the
// handshake; a member's certificate joins only as itself; the member
// itself joins.
func TestJoinNeedsOwnCertificate(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	tc := certs(t, dir, "a", "b", "c")
	other := certs(t, filepath.Join(dir, "other"), "c")
	a, err := tryStartTLSNode(t, dir, "a", "127.0.0.1:0", "", tc["a"])
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "a to lead", a.IsLeader)
	b, err := tryStartTLSNode(t, dir, "b", "127.0.0.1:0", a.http, tc["b"])
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "every address everywhere", everyoneKnows(a, b))

	client := func(c *tls.Config) *http.Client {
		tr := &http.Transport{TLSClientConfig: c}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	url := "https://" + a.http
	m := Member{ID: "c", RaftAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:1"}
	body, _ := json.Marshal(m)
	if _, err := client(&tls.Config{RootCAs: tc["a"].RootCAs}).Post(url+"/join", "application/json", bytes.NewReader(body)); err == nil {
		t.Error("a client without a certificate got past the handshake")
	}
	if _, err := client(other["c"]).Post(url+"/join", "application/json", bytes.NewReader(body)); err == nil {
		t.Error("a client with another CA's certificate got past the handshake")
	}
	if code, msg := postJoinWith(t, client(tc["b"]), url, m); code != http.StatusForbidden {
		t.Errorf("b joining as c: %d %s, want 403", code, msg)
	}
	if code, msg := postJoinWith(t, client(tc["b"]), url, Member{ID: "a", RaftAddr: b.RaftAddr(), HTTPAddr: b.http}); code != http.StatusForbidden {
		t.Errorf("b rewriting a: %d %s, want 403", code, msg)
	}
	c, err := tryStartTLSNode(t, dir, "c", "127.0.0.1:0", b.http, tc["c"]) // through a follower's 307
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "every address everywhere", everyoneKnows(a, b, c))
}
