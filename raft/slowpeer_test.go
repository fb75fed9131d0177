package raft

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

// TestSlowPeerBounded: a peer that sends requests without end and reads
// none of the answers (4 KiB each) makes its server connection hold at most
// outCap of answers, plus those raft is working on, and the connection is
// closed (ErrSlowPeer) once none of them was taken for Timeout; meanwhile
// the transport serves another member. Plain and TLS.
func TestSlowPeerBounded(t *testing.T) {
	for _, withTLS := range []bool{false, true} {
		name := "plain"
		if withTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) { testSlowPeerBounded(t, withTLS) })
	}
}

func testSlowPeerBounded(t *testing.T, withTLS bool) {
	leakcheck.Check(t)
	const timeout = time.Second
	cfg := Config{Timeout: timeout, Logger: quietLog, MaxBuffered: 256 << 10}
	if withTLS {
		cfg.TLS = testTLS(t, "n1")
	}
	server, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	const slowTerm = 7
	bigErr := errors.New(strings.Repeat("x", 4<<10))
	serve(t, server, func(rpc hraft.RPC) {
		req, ok := rpc.Command.(*hraft.AppendEntriesRequest)
		if ok && req.Term == slowTerm {
			rpc.Respond(nil, bigErr)
			return
		}
		rpc.Respond(&hraft.AppendEntriesResponse{Term: 1, Success: true}, nil)
	})
	addr := string(server.LocalAddr())

	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	slowAddr := raw.LocalAddr().(*net.TCPAddr).AddrPort()
	var peer net.Conn = raw
	if withTLS {
		c := testTLS(t, "n2").Clone()
		c.ServerName = "127.0.0.1"
		tc := tls.Client(raw, c)
		if err := tc.Handshake(); err != nil {
			t.Fatal(err)
		}
		peer = tc
	}
	// 200 000 requests (about 10 MB) would bring 800 MB of answers.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		b := append([]byte(nil), preamble[:]...)
		body := appendRequest(nil, &hraft.AppendEntriesRequest{RPCHeader: header("n2"), Term: slowTerm})
		id := uint64(0)
		for range 2000 {
			for range 100 {
				id++
				b = append(b, frameBytes(kindAppendEntries, id, body)...)
			}
			if _, err := peer.Write(b); err != nil {
				return // reset by the server, or closed by the test
			}
			b = b[:0]
		}
	}()
	defer wg.Wait()
	defer raw.Close() // before wg.Wait: a blocked Write returns

	limit := server.outCap() + (serverInFlight+2)*(len(bigErr.Error())+64)
	var other loopback
	if withTLS {
		other = newTLSTransport(t, testTLS(t, "n3"))
	} else {
		o, err := New(Config{Timeout: timeout, Logger: quietLog})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { o.Close() })
		other = o
	}
	otherID := "n3"
	maxPending, served, full := 0, 0, false
	deadline := time.Now().Add(20 * timeout)
	for {
		server.mu.Lock()
		n, pend := 0, 0
		for s := range server.servers {
			if s.remote == slowAddr {
				n++
				pend = s.w.pending()
			}
		}
		server.mu.Unlock()
		maxPending = max(maxPending, pend)
		full = full || pend > server.outCap()
		if full && n == 0 {
			break // throttled, then closed
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: the slow peer's connection open: %d, answers pending up to %d bytes (throttled: %v)", 20*timeout, n, maxPending, full)
		}
		var resp hraft.AppendEntriesResponse
		req := &hraft.AppendEntriesRequest{RPCHeader: header(otherID), Term: 1}
		if err := other.AppendEntries(hraft.ServerID("n1"), server.LocalAddr(), req, &resp); err != nil || !resp.Success {
			t.Fatalf("another member's append failed while the slow peer was open: %v %+v", err, resp)
		}
		served++
		time.Sleep(10 * time.Millisecond)
	}
	if maxPending > limit {
		t.Errorf("answers pending up to %d bytes, limit %d", maxPending, limit)
	}
	if served == 0 {
		t.Error("no append of another member was served while the slow peer was open")
	}
	if got := server.m.rejected.Load(); got != 1 {
		t.Errorf("rejected %d, want 1 (the slow peer)", got)
	}
	t.Logf("answers pending up to %d bytes (limit %d); %d appends of another member served", maxPending, limit, served)
}
