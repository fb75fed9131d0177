package raft

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
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
	return newTLSTransportLogging(t, cfg, quietLog)
}

// newTLSTransportLogging is newTLSTransport logging to log.
func newTLSTransportLogging(t *testing.T, cfg *tls.Config, log *slog.Logger) *Transport {
	t.Helper()
	tr, err := New(Config{Timeout: 2 * time.Second, Logger: log, TLS: cfg})
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

// logRecords records the Warn and Error records of a transport's logger,
// each as its message and its "err" attribute.
type logRecords struct {
	mu   sync.Mutex
	recs []string
}

func (l *logRecords) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelWarn }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	s := r.Message
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			s += ": " + a.Value.String()
		}
		return true
	})
	l.mu.Lock()
	l.recs = append(l.recs, s)
	l.mu.Unlock()
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

func (l *logRecords) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.recs...)
}

// TestTLSStrangerCountedOnceAtDebug: a stranger whose handshake fails (it
// sends the preamble and zeros, not a ClientHello) is one rejected
// connection, and no Warn line: one per attempt would let anyone who
// reaches the port fill the log.
func TestTLSStrangerCountedOnceAtDebug(t *testing.T) {
	leakcheck.Check(t)
	logs := &logRecords{}
	server := newTLSTransportLogging(t, testTLS(t, "n1"), slog.New(logs))
	c, err := net.Dial("tcp", string(server.LocalAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(append(preamble[:], make([]byte, 64)...)); err != nil {
		t.Fatal(err)
	}
	if !closedWithin(c, 10*time.Second) {
		t.Fatal("the stranger's connection is still open")
	}
	// Counted and logged before the socket is closed.
	if got := server.m.rejected.Load(); got != 1 {
		t.Errorf("rejected %d for one stranger, want 1", got)
	}
	if recs := logs.all(); len(recs) != 0 {
		t.Errorf("Warn records for one failed handshake: %q", recs)
	}
}

// TestTLSSnapshotOnlyAsFirstRequest: with TLS, an InstallSnapshot after
// other requests on the same connection (here three AppendEntries in one
// record, which start the dispatcher's reader goroutine) is refused as
// malformed, as without TLS: its data would otherwise be read by two
// goroutines. Raft never sees it. Our client sends each snapshot on a
// connection of its own (TestConformanceInstallSnapshotStreams).
func TestTLSSnapshotOnlyAsFirstRequest(t *testing.T) {
	leakcheck.Check(t)
	logs := &logRecords{}
	server := newTLSTransportLogging(t, testTLS(t, "n1"), slog.New(logs))
	const size, nQueued = 256 << 10, 3
	snaps := make(chan struct{}, 1)
	serve(t, server, func(rpc hraft.RPC) {
		switch rpc.Command.(type) {
		case *hraft.AppendEntriesRequest:
			rpc.Respond(&hraft.AppendEntriesResponse{Success: true}, nil)
		case *hraft.InstallSnapshotRequest:
			snaps <- struct{}{}
			_, err := io.Copy(io.Discard, rpc.Reader)
			rpc.Respond(&hraft.InstallSnapshotResponse{Success: err == nil}, err)
		}
	})
	cfg := testTLS(t, "n2").Clone()
	cfg.ServerName = "127.0.0.1"
	c, err := tls.Dial("tcp", string(server.LocalAddr()), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first := append([]byte(nil), preamble[:]...)
	for id := uint64(1); id <= nQueued; id++ {
		first = append(first, frameBytes(kindAppendEntries, id, appendRequest(nil, &hraft.AppendEntriesRequest{RPCHeader: header("n2"), Term: 1}))...)
	}
	if _, err := c.Write(first); err != nil { // one record
		t.Fatal(err)
	}
	snap := &hraft.InstallSnapshotRequest{RPCHeader: header("n2"), SnapshotVersion: 1, Term: 1, LastLogIndex: 1, LastLogTerm: 1, Size: size}
	// The server may reset the connection before all of it is written.
	c.Write(append(frameBytes(kindInstallSnapshot, nQueued+1, appendRequest(nil, snap)), make([]byte, size)...))
	if !closedWithin(c, 10*time.Second) {
		t.Fatal("the connection is still open")
	}
	select {
	case <-snaps:
		t.Error("raft got an InstallSnapshot that was not its connection's first request")
	default:
	}
	recs := logs.all()
	if len(recs) != 1 || !strings.Contains(recs[0], "on a connection read by its dispatcher") {
		t.Errorf("want one rejection of the InstallSnapshot as malformed, logged %q", recs)
	}
	if got := server.m.rejected.Load(); got != 1 {
		t.Errorf("rejected %d, want 1", got)
	}
}

// TestTLSStrangersHoldNoReadBuffer: connections that never finish their
// handshake hold no read buffer (64 KiB each once it is done): 64 of them
// grow the heap by far less than 64 × 64 KiB.
func TestTLSStrangersHoldNoReadBuffer(t *testing.T) {
	leakcheck.Check(t)
	server := newTLSTransport(t, testTLS(t, "n1"))
	const n = 64
	heap := func() int64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapAlloc)
	}
	base := heap()
	for range n {
		c, err := net.Dial("tcp", string(server.LocalAddr()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	accepted := func() int {
		server.mu.Lock()
		defer server.mu.Unlock()
		return len(server.servers)
	}
	for d := time.Now().Add(10 * time.Second); accepted() < n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(d) {
			t.Fatalf("%d of %d connections accepted", accepted(), n)
		}
	}
	// Their dispatchers wait in the handshake; watch them for a while
	// (less than newTLSTransport's Timeout, which closes them).
	const limit = 1 << 20
	for d := time.Now().Add(time.Second); time.Now().Before(d); time.Sleep(50 * time.Millisecond) {
		if grown := heap() - base; grown > limit {
			t.Fatalf("%d silent strangers grew the heap by %d KiB, want < %d KiB", n, grown>>10, limit>>10)
		}
	}
}
