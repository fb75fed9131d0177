package raft

import (
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/clustertls"
	"github.com/ioactor/ioactor/internal/leakcheck"
)

// testCerts is one CA for the test binary, and a node certificate per id.
var testCerts struct {
	once sync.Once
	dir  string
	err  error
	mu   sync.Mutex
	cfgs map[string]*tls.Config
}

// testTLS returns a mutual-TLS config for node id, signed by the test
// binary's CA.
func testTLS(tb testing.TB, id string) *tls.Config {
	tb.Helper()
	testCerts.once.Do(func() {
		testCerts.dir, testCerts.err = os.MkdirTemp("", "raft-tls-test")
		if testCerts.err == nil {
			testCerts.err = clustertls.NewCA(filepath.Join(testCerts.dir, "ca"))
		}
		testCerts.cfgs = make(map[string]*tls.Config)
	})
	if testCerts.err != nil {
		tb.Fatal(testCerts.err)
	}
	return certFor(tb, testCerts.dir, id)
}

func certFor(tb testing.TB, dir, id string) *tls.Config {
	tb.Helper()
	testCerts.mu.Lock()
	defer testCerts.mu.Unlock()
	key := dir + "/" + id
	if c := testCerts.cfgs[key]; c != nil {
		return c
	}
	d := filepath.Join(dir, "node-"+id)
	if err := clustertls.NewNode(filepath.Join(dir, "ca"), id, []string{"127.0.0.1"}, d); err != nil {
		tb.Fatal(err)
	}
	ident, err := clustertls.Load(d)
	if err != nil {
		tb.Fatal(err)
	}
	testCerts.cfgs[key] = ident.Config()
	return testCerts.cfgs[key]
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testCerts.dir != "" {
		os.RemoveAll(testCerts.dir)
	}
	os.Exit(code)
}

func newTLSTransport(t *testing.T, cfg *tls.Config) *Transport {
	t.Helper()
	tr, err := New(Config{Timeout: 2 * time.Second, Logger: quietLog, TLS: cfg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// TestForgedRequestVoteRefused: a member's transport (certificate of n1)
// sending a RequestVote whose header claims n2 is refused and counted;
// raft never sees it. The same with n1's own id is served.
func TestForgedRequestVoteRefused(t *testing.T) {
	leakcheck.Check(t)
	server := newTLSTransport(t, testTLS(t, "n3"))
	client := newTLSTransport(t, testTLS(t, "n1"))
	served := make(chan string, 4)
	serve(t, server, func(rpc hraft.RPC) {
		req := rpc.Command.(*hraft.RequestVoteRequest)
		served <- string(req.ID)
		rpc.Respond(&hraft.RequestVoteResponse{Term: req.Term}, nil)
	})
	forged := &hraft.RequestVoteRequest{RPCHeader: header("n2"), Term: 99}
	var resp hraft.RequestVoteResponse
	err := client.RequestVote("n3", server.LocalAddr(), forged, &resp)
	if err == nil {
		t.Fatal("a RequestVote claiming another node was answered")
	}
	if got := server.m.spoofed.Load(); got != 1 {
		t.Errorf("identity_refused %d, want 1", got)
	}
	own := &hraft.RequestVoteRequest{RPCHeader: header("n1"), Term: 99}
	if err := client.RequestVote("n3", server.LocalAddr(), own, &resp); err != nil {
		t.Fatalf("own RequestVote: %v", err)
	}
	if id := <-served; id != "n1" {
		t.Fatalf("raft saw %q", id)
	}
	select {
	case id := <-served:
		t.Fatalf("raft saw a second request, from %q", id)
	default:
	}
}

// TestTLSStrangersRefused: a transport without TLS, and one with a
// certificate of another CA, cannot reach a TLS transport.
func TestTLSStrangersRefused(t *testing.T) {
	leakcheck.Check(t)
	server := newTLSTransport(t, testTLS(t, "n1"))
	serve(t, server, func(rpc hraft.RPC) { rpc.Respond(&hraft.RequestVoteResponse{}, nil) })

	other := t.TempDir()
	if err := clustertls.NewCA(filepath.Join(other, "ca")); err != nil {
		t.Fatal(err)
	}
	plain, err := New(Config{Timeout: time.Second, Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	for name, tr := range map[string]*Transport{"plain": plain, "other CA": newTLSTransport(t, certFor(t, other, "n2"))} {
		var resp hraft.RequestVoteResponse
		err := tr.RequestVote("n1", server.LocalAddr(), &hraft.RequestVoteRequest{RPCHeader: header("n2"), Term: 1}, &resp)
		if err == nil {
			t.Errorf("%s: answered", name)
		}
		var op *OpError
		if !errors.As(err, &op) {
			t.Errorf("%s: %v is not an *OpError", name, err)
		}
	}
}

// TestTLSSilentConnectionsClosed: with TLS the server's dispatcher runs the
// handshake and reads the preamble itself; a connection that sends nothing,
// and one that completes the handshake but sends no preamble, are each
// closed within Config.Timeout (plus slack), and the transport keeps
// serving.
func TestTLSSilentConnectionsClosed(t *testing.T) {
	leakcheck.Check(t)
	server := newTLSTransport(t, testTLS(t, "n1"))
	serve(t, server, func(rpc hraft.RPC) { rpc.Respond(&hraft.RequestVoteResponse{}, nil) })
	addr := string(server.LocalAddr())
	silent, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	cfg := testTLS(t, "n2").Clone()
	cfg.ServerName = "127.0.0.1"
	mute, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer mute.Close()
	limit := 2*time.Second + 5*time.Second // newTLSTransport's Timeout, and slack for -race on a loaded machine
	for name, c := range map[string]net.Conn{"no handshake": silent, "no preamble": mute} {
		if !closedWithin(c, limit) {
			t.Errorf("%s: still open after %v", name, limit)
		}
	}
	client := newTLSTransport(t, testTLS(t, "n2"))
	var resp hraft.RequestVoteResponse
	if err := client.RequestVote("n1", server.LocalAddr(), &hraft.RequestVoteRequest{RPCHeader: header("n2"), Term: 1}, &resp); err != nil {
		t.Fatalf("a member after the silent ones: %v", err)
	}
}
