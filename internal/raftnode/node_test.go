package raftnode

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
)

// memberFSM's log holds member records only, as JSON.
type memberFSM struct {
	mu      sync.RWMutex
	members map[string]string
}

func newMemberFSM() *memberFSM { return &memberFSM{members: make(map[string]string)} }

func (f *memberFSM) Apply(l *raft.Log) any {
	var m Member
	if err := json.Unmarshal(l.Data, &m); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.members[m.ID] = m.HTTPAddr
	return nil
}

func (f *memberFSM) MemberCommand(m Member) ([]byte, error) { return json.Marshal(m) }

func (f *memberFSM) MemberHTTP(id string) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.members[id]
}

func (f *memberFSM) list() map[string]string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return maps.Clone(f.members)
}

type membersSnapshot map[string]string

func (f *memberFSM) Snapshot() (raft.FSMSnapshot, error) { return membersSnapshot(f.list()), nil }

func (f *memberFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	m := make(map[string]string)
	if err := json.NewDecoder(rc).Decode(&m); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.members = m
	return nil
}

func (s membersSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (membersSnapshot) Release() {}

// testNode is a Node with its FSM, its HTTP endpoint (POST /join only)
// and the leadership changes it delivered.
type testNode struct {
	*Node
	fsm     *memberFSM
	http    string
	changes chan bool // Leadership, copied; closed when it is
	close   func()
}

func startTestNode(t *testing.T, dir, id, raftAddr, join string) *testNode {
	t.Helper()
	tn, err := tryStartTestNode(t, dir, id, raftAddr, join)
	if err != nil {
		t.Fatal(err)
	}
	return tn
}

func tryStartTestNode(t *testing.T, dir, id, raftAddr, join string) (*testNode, error) {
	return tryStartTLSNode(t, dir, id, raftAddr, join, nil)
}

// tryStartTLSNode is tryStartTestNode with tc (nil: none) on the HTTP
// endpoint and the joins.
func tryStartTLSNode(t *testing.T, dir, id, raftAddr, join string, tc *tls.Config) (*testNode, error) {
	var ln net.Listener
	var err error
	if tc != nil {
		ln, err = tls.Listen("tcp", "127.0.0.1:0", tc)
	} else {
		ln, err = net.Listen("tcp", "127.0.0.1:0")
	}
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.DiscardHandler)
	if os.Getenv("RAFTNODE_TEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	tn := &testNode{fsm: newMemberFSM(), http: ln.Addr().String(), changes: make(chan bool, 64)}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tn.Node, err = Start(ctx, Config{
		ID: id, DataDir: filepath.Join(dir, id), RaftAddr: raftAddr, HTTPAddr: tn.http, Join: join,
		FSM: tn.fsm, Fast: true, Logger: log.With("node", id), RequestTimeout: 2 * time.Second, TLS: tc,
	})
	if err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /join", tn.HandleJoin)
	srv := &http.Server{Handler: mux}
	var wg sync.WaitGroup
	wg.Go(func() { srv.Serve(ln) })
	wg.Go(func() {
		defer close(tn.changes)
		for l := range tn.Leadership() {
			tn.changes <- l
		}
	})
	var once sync.Once
	tn.close = func() {
		once.Do(func() {
			srv.Close()
			if err := tn.Close(); err != nil {
				t.Errorf("close %s: %v", id, err)
			}
			wg.Wait()
		})
	}
	t.Cleanup(tn.close)
	return tn, nil
}

func nextChange(t *testing.T, n *testNode) bool {
	t.Helper()
	select {
	case l, ok := <-n.changes:
		if !ok {
			t.Fatalf("%s: Leadership closed", n.cfg.ID)
		}
		return l
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no leadership change", n.cfg.ID)
		return false
	}
}

// everyoneKnows reports whether each node's FSM records every node's HTTP
// address.
func everyoneKnows(nodes ...*testNode) func() bool {
	return func() bool {
		for _, n := range nodes {
			ms := n.fsm.list()
			for _, o := range nodes {
				if ms[o.cfg.ID] != o.http {
					return false
				}
			}
		}
		return true
	}
}

func postJoin(t *testing.T, addr string, body []byte) *http.Response {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/join", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestJoinThroughFollowerAndHandover: a node joining through a follower is
// redirected to the leader; every member's HTTP address reaches every FSM;
// a join of a member already recorded writes nothing; leadership changes
// come once each, and Close closes the channel and leaves nothing behind.
func TestJoinThroughFollowerAndHandover(t *testing.T) {
	leakcheck.Check(t)
	t.Cleanup(http.DefaultTransport.(*http.Transport).CloseIdleConnections)
	dir := t.TempDir()
	a := startTestNode(t, dir, "a", "127.0.0.1:0", "")
	if !nextChange(t, a) {
		t.Fatal("a's first leadership change is not true")
	}
	b := startTestNode(t, dir, "b", "127.0.0.1:0", a.http)
	testutil.WaitFor(t, "b to know the leader's address", func() bool { return b.LeaderHTTP() == a.http })
	c := startTestNode(t, dir, "c", "127.0.0.1:0", b.http) // through a follower
	testutil.WaitFor(t, "every address everywhere", everyoneKnows(a, b, c))
	f := a.Raft().GetConfiguration()
	if err := f.Error(); err != nil || len(f.Configuration().Servers) != 3 {
		t.Fatalf("configuration %+v, %v", f.Configuration(), err)
	}

	// The checks below look again when an election on a loaded machine
	// moved leadership in between.
	nodes := []*testNode{a, b, c}
	body, _ := json.Marshal(c.self())
	testutil.WaitFor(t, "a follower's 307 to the leader", func() bool {
		l, f := roles(nodes)
		if l == nil || f == nil {
			return false
		}
		resp := postJoin(t, f.http, body)
		return resp.StatusCode == http.StatusTemporaryRedirect && resp.Header.Get(HeaderLeader) == l.http
	})
	if resp := postJoin(t, a.http, []byte(`{"id":"d"}`)); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("join without raft_addr: %s, want 400", resp.Status)
	}
	testutil.WaitFor(t, "a repeated join that adds no log entry", func() bool {
		l, _ := roles(nodes)
		if l == nil || l.Raft().Barrier(5*time.Second).Error() != nil {
			return false
		}
		term, last := l.Raft().CurrentTerm(), l.Raft().LastIndex()
		resp := postJoin(t, l.http, body)
		return resp.StatusCode == http.StatusOK && l.Raft().LastIndex() == last && l.Raft().CurrentTerm() == term
	})

	l, _ := roles(nodes)
	if l == nil {
		t.Fatal("no leader")
	}
	if err := l.Handover(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the old leader's false", func() bool { return !nextChange(t, l) })
	// Each change comes once (true, false, true...), and Close ends the
	// channel.
	for _, n := range nodes {
		n.close()
	}
	for _, n := range nodes {
		was := n == a && n != l // what was read already: a's first true, l's changes up to a false
		for v := range n.changes {
			if v == was {
				t.Errorf("%s: leadership change to %v twice in a row", n.cfg.ID, v)
			}
			was = v
		}
	}
}

// roles returns a leader and a follower among nodes, nil if none.
func roles(nodes []*testNode) (leader, follower *testNode) {
	for _, n := range nodes {
		if n.IsLeader() {
			leader = n
		} else {
			follower = n
		}
	}
	return leader, follower
}

// TestRestartAdvertisesNewHTTPAddr: a member restarted from its data
// directory on a new HTTP address (same raft address) records it through
// the leader.
func TestRestartAdvertisesNewHTTPAddr(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	a := startTestNode(t, dir, "a", "127.0.0.1:0", "")
	testutil.WaitFor(t, "a to lead", a.IsLeader)
	b := startTestNode(t, dir, "b", "127.0.0.1:0", a.http)
	testutil.WaitFor(t, "every address everywhere", everyoneKnows(a, b))
	raftB := b.RaftAddr()
	b.close()
	var b2 *testNode
	var err error
	for attempt := 0; attempt < 50; attempt++ { // the raft port was just released
		if b2, err = tryStartTestNode(t, dir, "b", raftB, ""); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("restart b: %v", err)
	}
	testutil.WaitFor(t, "b's new address everywhere", everyoneKnows(a, b2))
	if b2.IsLeader() {
		t.Error("the restarted follower leads")
	}
}
