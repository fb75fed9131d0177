package raft

import (
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

func newOurs(t *testing.T, cfg Config) *Transport {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLog
	}
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Error(err)
		}
	})
	return tr
}

// answerVotes serves RequestVote on tr until the end of the test.
func answerVotes(t *testing.T, tr *Transport) {
	serve(t, tr, func(rpc hraft.RPC) {
		switch req := rpc.Command.(type) {
		case *hraft.RequestVoteRequest:
			rpc.Respond(&hraft.RequestVoteResponse{Term: req.Term, Granted: true}, nil)
		case *hraft.AppendEntriesRequest:
			rpc.Respond(&hraft.AppendEntriesResponse{Term: req.Term, Success: true}, nil)
		}
	})
}

func vote(tr *Transport, target hraft.ServerAddress) error {
	var resp hraft.RequestVoteResponse
	err := tr.RequestVote("id", target, &hraft.RequestVoteRequest{Term: 7}, &resp)
	if err == nil && (!resp.Granted || resp.Term != 7) {
		err = errors.New("wrong answer")
	}
	return err
}

// expectClosed waits for the peer to close c.
func expectClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the transport kept a connection that sent bad data")
	}
}

func frameBytes(kind rpcKind, id uint64, body []byte) []byte {
	b, start := beginFrame(nil, kind, id)
	b = append(b, body...)
	binary.BigEndian.PutUint32(b[start:], uint32(len(b)-start-frameHeaderLen))
	return b
}

func TestBadInputClosesOnlyThatConnection(t *testing.T) {
	leakcheck.Check(t)
	reg := prometheus.NewRegistry()
	server := newOurs(t, Config{MaxFrameSize: 1024, Registerer: reg})
	answerVotes(t, server)
	client := newOurs(t, Config{})
	if err := vote(client, server.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	huge := make([]byte, 4)
	binary.BigEndian.PutUint32(huge, 1<<20)
	cases := map[string][]byte{
		"bad preamble":   []byte("GET / HTTP/1.1\r\n\r\n"),
		"oversized":      append(preamble[:], huge...),
		"length 0":       append(preamble[:], 0, 0, 0, 0),
		"unknown kind":   append(preamble[:], frameBytes(99, 1, []byte{1, 2, 3})...),
		"garbage append": append(preamble[:], frameBytes(kindAppendEntries, 1, []byte{0xff, 0xff, 0xff})...),
		"response frame": append(preamble[:], frameBytes(kindResponse, 1, []byte{2})...),
		"bad snapshot":   append(preamble[:], frameBytes(kindInstallSnapshot, 1, []byte{1})...),
	}
	for name, input := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := net.Dial("tcp", string(server.LocalAddr()))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write(input)
			expectClosed(t, c)
			// The transport's own connections are untouched.
			if err := vote(client, server.LocalAddr()); err != nil {
				t.Fatalf("a good client failed after a bad one: %v", err)
			}
		})
	}
	if got := counter(t, reg, "ioactor_raft_transport_rejected_connections_total"); got != float64(len(cases)) {
		t.Errorf("rejected connections = %v, want %d", got, len(cases))
	}
}

func TestSendingAnOversizedFrameFailsUnsent(t *testing.T) {
	leakcheck.Check(t)
	server := newOurs(t, Config{})
	answerVotes(t, server)
	client := newOurs(t, Config{MaxFrameSize: 1024})
	req := &hraft.AppendEntriesRequest{Term: 1, PrevLogEntry: 1, Entries: []*hraft.Log{{Index: 2, Data: make([]byte, 4096)}}}
	err := client.AppendEntries("id", server.LocalAddr(), req, new(hraft.AppendEntriesResponse))
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("oversized append: %v, want ErrFrameTooLarge", err)
	}
	if err := vote(client, server.LocalAddr()); err != nil {
		t.Fatalf("the connection broke: %v", err)
	}
}

// fakeServer accepts one connection, reads the preamble and one request
// frame, then writes reply.
func fakeServer(t *testing.T, reply func(id uint64) []byte) hraft.ServerAddress {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		hdr := make([]byte, len(preamble)+frameHeaderLen)
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		body := make([]byte, binary.BigEndian.Uint32(hdr[len(preamble):]))
		if _, err := io.ReadFull(c, body); err != nil {
			return
		}
		f, _ := parseFrame(body)
		c.Write(reply(f.id))
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		io.Copy(io.Discard, c)
	}()
	return hraft.ServerAddress(ln.Addr().String())
}

func TestBadAnswerFailsTheCall(t *testing.T) {
	leakcheck.Check(t)
	cases := map[string]struct {
		reply func(id uint64) []byte
		want  error
	}{
		"oversized":    {func(uint64) []byte { return []byte{0xff, 0xff, 0xff, 0xff} }, ErrFrameTooLarge},
		"request kind": {func(id uint64) []byte { return frameBytes(kindRequestVote, id, nil) }, ErrMalformed},
		"bad payload": {func(id uint64) []byte {
			return frameBytes(kindResponse, id, []byte{respPayload, 0xff})
		}, ErrMalformed},
		"closed": {func(uint64) []byte { return nil }, ErrConnectionClosed},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			client := newOurs(t, Config{Timeout: 2 * time.Second})
			addr := fakeServer(t, c.reply)
			if name == "closed" {
				addr = fakeServerClosing(t)
			}
			start := time.Now()
			err := vote(client, addr)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			var oe *OpError
			if !errors.As(err, &oe) || oe.Op != "request_vote" || oe.Peer != addr {
				t.Errorf("error %v is not an OpError naming the RPC and peer", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("failing took %v", d)
			}
		})
	}
}

// fakeServerClosing accepts connections and closes them at once.
func fakeServerClosing(t *testing.T) hraft.ServerAddress {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.ReadFull(c, make([]byte, 8))
			c.Close()
		}
	}()
	return hraft.ServerAddress(ln.Addr().String())
}

func TestReconnectWithBackoff(t *testing.T) {
	leakcheck.Check(t)
	reg := prometheus.NewRegistry()
	client := newOurs(t, Config{Registerer: reg, ReconnectBackoff: 200 * time.Millisecond})
	server := newOurs(t, Config{})
	answerVotes(t, server)
	addr := server.LocalAddr()
	if err := vote(client, addr); err != nil {
		t.Fatal(err)
	}
	server.Close()
	// The peer is gone: the next call fails (refused), and within the
	// back-off calls fail at once without dialing.
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := vote(client, addr)
		if errors.Is(err, ErrPeerUnavailable) {
			break
		}
		if err == nil || time.Now().After(deadline) {
			t.Fatalf("calls to a dead peer: %v, want ErrPeerUnavailable during the back-off", err)
		}
	}
	// A new incarnation at the same address is found again.
	server2 := newOurs(t, Config{BindAddr: string(addr)})
	answerVotes(t, server2)
	deadline = time.Now().Add(3 * time.Second)
	for vote(client, addr) != nil {
		if time.Now().After(deadline) {
			t.Fatal("never reconnected")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := counter(t, reg, "ioactor_raft_transport_reconnects_total"); got < 1 {
		t.Errorf("reconnects = %v, want ≥ 1", got)
	}
	if got := counter(t, reg, "ioactor_raft_transport_dial_failures_total"); got < 1 {
		t.Errorf("dial failures = %v, want ≥ 1", got)
	}
}

func TestMetrics(t *testing.T) {
	leakcheck.Check(t)
	reg := prometheus.NewRegistry()
	client := newOurs(t, Config{Registerer: reg})
	server := newOurs(t, Config{})
	answerVotes(t, server)
	for range 10 {
		if err := vote(client, server.LocalAddr()); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sawHist bool
	for _, mf := range mfs {
		if mf.GetName() != "ioactor_raft_transport_rpc_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label(m, "rpc") == "request_vote" && m.GetHistogram().GetSampleCount() == 10 {
				sawHist = true
			}
		}
	}
	if !sawHist {
		t.Error("no request_vote latency histogram with 10 samples")
	}
	if got := counter(t, reg, "ioactor_raft_transport_bytes_total"); got <= 0 {
		t.Errorf("bytes = %v", got)
	}
	// Two transports on one registry collide: the second New fails cleanly.
	if _, err := New(Config{Registerer: reg, Logger: quietLog}); err == nil || !strings.Contains(err.Error(), "metrics") {
		t.Errorf("second transport on one registry: %v", err)
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// counter sums every series of a counter family.
func counter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// TestServerStopsReadingWhenRaftIsBehind: with raft not consuming, a
// connection queues a bounded number of requests, then stops reading; once
// raft catches up every request is answered. With TLS the many requests
// per read give the connection a reader goroutine (startReader), which
// waits for room (waitRoom).
func TestServerStopsReadingWhenRaftIsBehind(t *testing.T) {
	t.Run("plain", func(t *testing.T) { testStopsReading(t, Config{}) })
	t.Run("TLS", func(t *testing.T) {
		testStopsReading(t, Config{TLS: testTLS(t, "suite"), PeerID: func(*x509.Certificate) (string, error) { return "", nil }})
	})
}

func testStopsReading(t *testing.T, cfg Config) {
	leakcheck.Check(t)
	server := newOurs(t, cfg)
	cfg.MaxPool = 1
	client := newOurs(t, cfg)
	release := make(chan struct{})
	var first sync.Once
	serve(t, server, func(rpc hraft.RPC) {
		first.Do(func() { <-release })
		rpc.Respond(&hraft.RequestVoteResponse{Term: rpc.Command.(*hraft.RequestVoteRequest).Term}, nil)
	})
	const n = 3 * serverQueueFrames
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var resp hraft.RequestVoteResponse
			err := client.RequestVote("id", server.LocalAddr(), &hraft.RequestVoteRequest{Term: uint64(i)}, &resp)
			if err == nil && resp.Term != uint64(i) {
				err = errors.New("wrong answer")
			}
			errs <- err
		}()
	}
	time.Sleep(300 * time.Millisecond)
	server.mu.Lock()
	var queued int
	for s := range server.servers {
		queued = max(queued, s.queueLen())
	}
	server.mu.Unlock()
	// The bound is serverQueueFrames plus what one socket read held.
	if queued >= n-1 {
		t.Errorf("all %d requests queued for raft: reading never stopped", queued)
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Every call to a peer that cannot be reached fails with
// ErrPeerUnavailable: the one whose dial is refused as well as those
// refused at once during the back-off that follows.
func TestUnreachablePeerErrors(t *testing.T) {
	leakcheck.Check(t)
	client := newOurs(t, Config{ReconnectBackoff: time.Hour})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := hraft.ServerAddress(ln.Addr().String())
	ln.Close() // nothing listens there now: the dial is refused
	for i := range 3 {
		if err := vote(client, addr); !errors.Is(err, ErrPeerUnavailable) || errors.Is(err, ErrConnectionClosed) {
			t.Fatalf("call %d to an unreachable peer: %v, want ErrPeerUnavailable (and not ErrConnectionClosed)", i, err)
		}
	}
}

// A connection whose first request is a heartbeat is read by its
// dispatcher (server.go, rfile): it answers heartbeats and other requests
// one at a time, and bad input, a snapshot or a stall in the middle of a
// frame still close it, and only it.
func TestHeartbeatConnectionReadByItsDispatcher(t *testing.T) {
	leakcheck.Check(t)
	reg := prometheus.NewRegistry()
	server := newOurs(t, Config{MaxFrameSize: 1024, Registerer: reg, Timeout: 300 * time.Millisecond})
	answerVotes(t, server)
	server.SetHeartbeatHandler(func(rpc hraft.RPC) {
		rpc.Respond(&hraft.AppendEntriesResponse{Term: rpc.Command.(*hraft.AppendEntriesRequest).Term, Success: true}, nil)
	})
	hb := appendAppendEntriesRequest(nil, &hraft.AppendEntriesRequest{RPCHeader: hraft.RPCHeader{ID: []byte("l"), Addr: []byte("127.0.0.1:1")}, Term: 4})
	vr := appendRequestVoteRequest(nil, &hraft.RequestVoteRequest{Term: 7})
	answer := func(t *testing.T, c net.Conn, id uint64, resp any) {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		hdr := make([]byte, frameHeaderLen)
		if _, err := io.ReadFull(c, hdr); err != nil {
			t.Fatal(err)
		}
		f := make([]byte, binary.BigEndian.Uint32(hdr))
		if _, err := io.ReadFull(c, f); err != nil {
			t.Fatal(err)
		}
		got, k := binary.Uvarint(f[1:])
		if rpcKind(f[0]) != kindResponse || k <= 0 || got != id {
			t.Fatalf("answer %x, want a response to %d", f, id)
		}
		if err := decodeAnswer(f[1+k:], resp); err != nil {
			t.Fatal(err)
		}
	}
	open := func(t *testing.T) net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", string(server.LocalAddr()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.Write(append(preamble[:], frameBytes(kindAppendEntries, 1, hb)...))
		var resp hraft.AppendEntriesResponse
		answer(t, c, 1, &resp)
		if !resp.Success || resp.Term != 4 {
			t.Fatalf("heartbeat answer %+v", resp)
		}
		return c
	}
	client := newOurs(t, Config{})
	c := open(t)
	// The hand-over is asynchronous: wait for it, so that what follows
	// is read by the dispatcher.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		handed := false
		server.mu.Lock()
		for sc := range server.servers {
			sc.qmu.Lock()
			handed = handed || sc.rfile != nil
			sc.qmu.Unlock()
		}
		server.mu.Unlock()
		if handed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the heartbeat connection was not handed over to its dispatcher")
		}
	}
	for id := uint64(2); id < 100; id++ {
		if id%10 == 0 {
			c.Write(frameBytes(kindRequestVote, id, vr))
			var resp hraft.RequestVoteResponse
			answer(t, c, id, &resp)
			if !resp.Granted {
				t.Fatalf("vote answer %+v", resp)
			}
			continue
		}
		f := frameBytes(kindAppendEntries, id, hb)
		c.Write(f[:5]) // in two reads
		c.Write(f[5:])
		var resp hraft.AppendEntriesResponse
		answer(t, c, id, &resp)
	}
	cases := map[string][]byte{
		"garbage append": frameBytes(kindAppendEntries, 100, []byte{0xff, 0xff, 0xff}),
		"snapshot":       frameBytes(kindInstallSnapshot, 100, appendInstallSnapshotRequest(nil, &hraft.InstallSnapshotRequest{Size: 10})),
		"stall":          frameBytes(kindAppendEntries, 100, hb)[:7],
	}
	for name, input := range cases {
		t.Run(name, func(t *testing.T) {
			c := open(t)
			c.Write(input)
			expectClosed(t, c)
			if err := vote(client, server.LocalAddr()); err != nil {
				t.Fatalf("a good client failed after a bad one: %v", err)
			}
		})
	}
	if got := counter(t, reg, "ioactor_raft_transport_rejected_connections_total"); got != float64(len(cases)) {
		t.Errorf("rejected connections = %v, want %d", got, len(cases))
	}
}
