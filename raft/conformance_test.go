//lint:file-ignore SA1019 the tests set the deprecated Leader and Candidate fields, which the wire carries

package raft

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

// The conformance suite runs every behaviour raft expects of a transport
// against three implementations: ours, raft.NetworkTransport (over TCP) and
// raft.InmemTransport. A check that one of raft's transports genuinely
// fails is run against ours only, with the reason next to it.

type loopback interface {
	hraft.Transport
	hraft.WithClose
	hraft.WithPreVote
}

type impl struct {
	name    string
	ours    bool
	network bool
	// make returns a transport listening on addr ("" for any).
	make func(tb testing.TB, addr string, timeout time.Duration) loopback
	// link lets from reach to (InmemTransport needs it; sockets do not).
	link func(from, to loopback)
}

var quietLog = slog.New(slog.DiscardHandler)

// testMaxInFlight is our pipeline bound in the suite.
const testMaxInFlight = 4

var impls = []impl{
	{
		name: "ours", ours: true, network: true,
		make: func(tb testing.TB, addr string, timeout time.Duration) loopback {
			tb.Helper()
			if addr == "" {
				addr = "127.0.0.1:0"
			}
			tr, err := New(Config{BindAddr: addr, Timeout: timeout, Logger: quietLog, MaxInFlight: testMaxInFlight})
			if err != nil {
				tb.Fatal(err)
			}
			return tr
		},
		link: func(from, to loopback) {},
	},
	{
		// Ours with mutual TLS; the suite's headers name made-up
		// nodes, so the certificates name none (see Config.PeerID).
		name: "ours+TLS", ours: true, network: true,
		make: func(tb testing.TB, addr string, timeout time.Duration) loopback {
			tb.Helper()
			if addr == "" {
				addr = "127.0.0.1:0"
			}
			tr, err := New(Config{BindAddr: addr, Timeout: timeout, Logger: quietLog, MaxInFlight: testMaxInFlight,
				TLS: testTLS(tb, "suite"), PeerID: func(*x509.Certificate) (string, error) { return "", nil }})
			if err != nil {
				tb.Fatal(err)
			}
			return tr
		},
		link: func(from, to loopback) {},
	},
	{
		name: "NetworkTransport", network: true,
		make: func(tb testing.TB, addr string, timeout time.Duration) loopback {
			tb.Helper()
			if addr == "" {
				addr = "127.0.0.1:0"
			}
			tr, err := hraft.NewTCPTransportWithConfig(addr, nil, &hraft.NetworkTransportConfig{
				MaxPool: 3, Timeout: timeout, Logger: hclog.NewNullLogger(),
			})
			if err != nil {
				tb.Fatal(err)
			}
			return tr
		},
		link: func(from, to loopback) {},
	},
	{
		name: "InmemTransport",
		make: func(tb testing.TB, addr string, timeout time.Duration) loopback {
			_, tr := hraft.NewInmemTransportWithTimeout(hraft.ServerAddress(addr), timeout)
			return tr
		},
		link: func(from, to loopback) {
			from.(*hraft.InmemTransport).Connect(to.LocalAddr(), to)
		},
	},
}

// forEach runs f as a subtest per implementation; ours is leak-checked.
func forEach(t *testing.T, f func(t *testing.T, im impl)) {
	for _, im := range impls {
		t.Run(im.name, func(t *testing.T) {
			if im.ours {
				leakcheck.Check(t)
			}
			f(t, im)
		})
	}
}

// oursOnly runs f against our transport alone.
func oursOnly(t *testing.T, f func(t *testing.T, im impl)) {
	t.Helper()
	leakcheck.Check(t)
	f(t, impls[0])
}

// pair returns a client and a server transport that can reach each other,
// closed at the end of the test.
func pair(t *testing.T, im impl, timeout time.Duration) (client, server loopback) {
	t.Helper()
	server = im.make(t, "", timeout)
	t.Cleanup(func() { server.Close() })
	client = im.make(t, "", timeout)
	t.Cleanup(func() { client.Close() })
	im.link(client, server)
	im.link(server, client)
	return client, server
}

// serve answers the server's Consumer channel with h until the end of the
// test.
func serve(t *testing.T, tr loopback, h func(rpc hraft.RPC)) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case rpc := <-tr.Consumer():
				h(rpc)
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		wg.Wait()
	})
}

func header(id string) hraft.RPCHeader {
	return hraft.RPCHeader{ProtocolVersion: hraft.ProtocolVersionMax, ID: []byte(id), Addr: []byte("127.0.0.1:7000")}
}

func fullAppend() *hraft.AppendEntriesRequest {
	now := time.Now()
	return &hraft.AppendEntriesRequest{
		RPCHeader: header("leader-1"), Term: 10, Leader: []byte("leader"),
		PrevLogEntry: 100, PrevLogTerm: 9, LeaderCommitIndex: 90,
		Entries: []*hraft.Log{
			{Index: 101, Term: 10, Type: hraft.LogCommand, Data: []byte("first"), Extensions: []byte("ext"), AppendedAt: now},
			{Index: 102, Term: 10, Type: hraft.LogConfiguration, Data: []byte("second"), Extensions: []byte("x"), AppendedAt: now.Add(time.Millisecond)},
			{Index: 103, Term: 10, Type: hraft.LogBarrier, Data: bytes.Repeat([]byte{7}, 300), Extensions: []byte{1}, AppendedAt: time.Unix(1700000000, 123456789)},
		},
	}
}

// normAppend strips what no wire keeps of a time (monotonic reading,
// location) so requests compare with reflect.DeepEqual.
func normAppend(r *hraft.AppendEntriesRequest) *hraft.AppendEntriesRequest {
	c := *r
	c.Entries = nil
	for _, e := range r.Entries {
		x := *e
		x.AppendedAt = x.AppendedAt.Round(0).UTC()
		c.Entries = append(c.Entries, &x)
	}
	return &c
}

func snapshotRequest(size int64) *hraft.InstallSnapshotRequest {
	return &hraft.InstallSnapshotRequest{
		RPCHeader: header("leader-1"), SnapshotVersion: hraft.SnapshotVersionMax, Term: 12,
		Leader: []byte("leader"), LastLogIndex: 5000, LastLogTerm: 11, Peers: []byte("peers"),
		Configuration: []byte("configuration"), ConfigurationIndex: 4000, Size: size,
	}
}

func TestConformanceEveryFieldRoundTrips(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		client, server := pair(t, im, 5*time.Second)
		ae := fullAppend()
		aeResp := &hraft.AppendEntriesResponse{RPCHeader: header("f1"), Term: 11, LastLog: 103, Success: true, NoRetryBackoff: true}
		rv := &hraft.RequestVoteRequest{RPCHeader: header("c1"), Term: 20, Candidate: []byte("cand"), LastLogIndex: 100, LastLogTerm: 19, LeadershipTransfer: true}
		rvResp := &hraft.RequestVoteResponse{RPCHeader: header("f1"), Term: 21, Peers: []byte("old-peers"), Granted: true}
		pv := &hraft.RequestPreVoteRequest{RPCHeader: header("c1"), Term: 30, LastLogIndex: 200, LastLogTerm: 29}
		pvResp := &hraft.RequestPreVoteResponse{RPCHeader: header("f1"), Term: 31, Granted: true}
		tn := &hraft.TimeoutNowRequest{RPCHeader: header("leader-2")}
		tnResp := &hraft.TimeoutNowResponse{RPCHeader: header("f2")}
		is := snapshotRequest(10)
		isResp := &hraft.InstallSnapshotResponse{RPCHeader: header("f1"), Term: 12, Success: true}
		serve(t, server, func(rpc hraft.RPC) {
			if cap(rpc.RespChan) < 1 {
				t.Errorf("%T: RespChan unbuffered: a late Respond would block raft", rpc.Command)
			}
			switch req := rpc.Command.(type) {
			case *hraft.AppendEntriesRequest:
				if isHeartbeat(req) { // InmemTransport has no heartbeat fast path
					rpc.Respond(&hraft.AppendEntriesResponse{RPCHeader: header("f1"), Term: 40, LastLog: 7, Success: true}, nil)
					return
				}
				if !reflect.DeepEqual(normAppend(req), normAppend(ae)) {
					t.Errorf("AppendEntries request:\n got %#v\nwant %#v", normAppend(req), normAppend(ae))
				}
				rpc.Respond(aeResp, nil)
			case *hraft.RequestVoteRequest:
				if !reflect.DeepEqual(req, rv) {
					t.Errorf("RequestVote request:\n got %#v\nwant %#v", req, rv)
				}
				rpc.Respond(rvResp, nil)
			case *hraft.RequestPreVoteRequest:
				if !reflect.DeepEqual(req, pv) {
					t.Errorf("RequestPreVote request:\n got %#v\nwant %#v", req, pv)
				}
				rpc.Respond(pvResp, nil)
			case *hraft.TimeoutNowRequest:
				if !reflect.DeepEqual(req, tn) {
					t.Errorf("TimeoutNow request:\n got %#v\nwant %#v", req, tn)
				}
				rpc.Respond(tnResp, nil)
			case *hraft.InstallSnapshotRequest:
				if !reflect.DeepEqual(req, is) {
					t.Errorf("InstallSnapshot request:\n got %#v\nwant %#v", req, is)
				}
				body, err := io.ReadAll(rpc.Reader)
				if err != nil || string(body) != "0123456789" {
					t.Errorf("snapshot body %q, %v", body, err)
				}
				rpc.Respond(isResp, nil)
			default:
				t.Errorf("unexpected %T", rpc.Command)
			}
		})
		target := server.LocalAddr()
		var gotAE hraft.AppendEntriesResponse
		if err := client.AppendEntries("id", target, ae, &gotAE); err != nil || !reflect.DeepEqual(&gotAE, aeResp) {
			t.Errorf("AppendEntries: %v\n got %#v\nwant %#v", err, &gotAE, aeResp)
		}
		var gotRV hraft.RequestVoteResponse
		if err := client.RequestVote("id", target, rv, &gotRV); err != nil || !reflect.DeepEqual(&gotRV, rvResp) {
			t.Errorf("RequestVote: %v\n got %#v\nwant %#v", err, &gotRV, rvResp)
		}
		var gotPV hraft.RequestPreVoteResponse
		if err := client.RequestPreVote("id", target, pv, &gotPV); err != nil || !reflect.DeepEqual(&gotPV, pvResp) {
			t.Errorf("RequestPreVote: %v\n got %#v\nwant %#v", err, &gotPV, pvResp)
		}
		var gotTN hraft.TimeoutNowResponse
		if err := client.TimeoutNow("id", target, tn, &gotTN); err != nil || !reflect.DeepEqual(&gotTN, tnResp) {
			t.Errorf("TimeoutNow: %v\n got %#v\nwant %#v", err, &gotTN, tnResp)
		}
		var gotIS hraft.InstallSnapshotResponse
		if err := client.InstallSnapshot("id", target, is, &gotIS, strings.NewReader("0123456789")); err != nil || !reflect.DeepEqual(&gotIS, isResp) {
			t.Errorf("InstallSnapshot: %v\n got %#v\nwant %#v", err, &gotIS, isResp)
		}
		// Heartbeats through the handler, fields intact.
		hb := &hraft.AppendEntriesRequest{RPCHeader: header("leader-1"), Term: 40, Leader: []byte("leader")}
		hbResp := &hraft.AppendEntriesResponse{RPCHeader: header("f1"), Term: 40, LastLog: 7, Success: true}
		server.SetHeartbeatHandler(func(rpc hraft.RPC) {
			if req := rpc.Command.(*hraft.AppendEntriesRequest); !reflect.DeepEqual(req, hb) {
				t.Errorf("heartbeat:\n got %#v\nwant %#v", req, hb)
			}
			rpc.Respond(hbResp, nil)
		})
		defer server.SetHeartbeatHandler(nil)
		var gotHB hraft.AppendEntriesResponse
		if err := client.AppendEntries("id", target, hb, &gotHB); err != nil || !reflect.DeepEqual(&gotHB, hbResp) {
			t.Errorf("heartbeat: %v\n got %#v\nwant %#v", err, &gotHB, hbResp)
		}
		if got := client.DecodePeer(client.EncodePeer("x", target)); got != target {
			t.Errorf("DecodePeer(EncodePeer(%q)) = %q", target, got)
		}
	})
}

func TestConformanceErrorResponses(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		client, server := pair(t, im, 5*time.Second)
		serve(t, server, func(rpc hraft.RPC) {
			switch rpc.Command.(type) {
			case *hraft.RequestVoteRequest:
				rpc.Respond(&hraft.RequestVoteResponse{Term: 3}, errors.New("vote refused: boom"))
			default:
				rpc.Respond(nil, errors.New("unexpected command: bang"))
			}
		})
		var resp hraft.RequestVoteResponse
		err := client.RequestVote("id", server.LocalAddr(), &hraft.RequestVoteRequest{Term: 1}, &resp)
		if err == nil || !strings.Contains(err.Error(), "vote refused: boom") {
			t.Errorf("RequestVote error = %v, want the remote error", err)
		}
		var tn hraft.TimeoutNowResponse
		err = client.TimeoutNow("id", server.LocalAddr(), &hraft.TimeoutNowRequest{}, &tn)
		if err == nil || !strings.Contains(err.Error(), "bang") {
			t.Errorf("TimeoutNow error = %v, want the remote error", err)
		}
		if im.ours {
			var re *RemoteError
			if !errors.As(err, &re) || re.Msg != "unexpected command: bang" {
				t.Errorf("error %v is not a RemoteError", err)
			}
		}
	})
}

func TestConformancePipelineOrderAndBound(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		client, server := pair(t, im, 5*time.Second)
		release := make(chan struct{})
		var received atomic.Int64
		serve(t, server, func(rpc hraft.RPC) {
			received.Add(1)
			<-release
			req := rpc.Command.(*hraft.AppendEntriesRequest)
			rpc.Respond(&hraft.AppendEntriesResponse{Term: req.Term, LastLog: req.PrevLogEntry, Success: true}, nil)
		})
		p, err := client.AppendEntriesPipeline("id", server.LocalAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		const n = 100
		var sent atomic.Int64
		sendErr := make(chan error, 1)
		go func() {
			for i := range n {
				req := &hraft.AppendEntriesRequest{Term: 5, Leader: []byte("l"), PrevLogEntry: uint64(i), PrevLogTerm: 5,
					Entries: []*hraft.Log{{Index: uint64(i) + 1, Term: 5, Data: []byte("x")}}}
				if _, err := p.AppendEntries(req, new(hraft.AppendEntriesResponse)); err != nil {
					sendErr <- err
					return
				}
				sent.Add(1)
			}
			sendErr <- nil
		}()
		time.Sleep(300 * time.Millisecond)
		if s := sent.Load(); s >= n {
			t.Errorf("all %d appends were sent while none was answered: the pipeline is unbounded", s)
		}
		if im.ours {
			if s, r := sent.Load(), received.Load(); s > testMaxInFlight || r > testMaxInFlight {
				t.Errorf("%d sent, %d received with MaxInFlight %d", s, r, testMaxInFlight)
			}
		}
		close(release)
		for i := range n {
			select {
			case f := <-p.Consumer():
				if err := f.Error(); err != nil {
					t.Fatalf("future %d: %v", i, err)
				}
				if got := f.Request().PrevLogEntry; got != uint64(i) {
					t.Fatalf("future %d is the answer to request %d: out of order", i, got)
				}
				if got := f.Response().LastLog; got != uint64(i) {
					t.Fatalf("future %d carries the response for %d", i, got)
				}
				if f.Start().IsZero() {
					t.Fatalf("future %d: zero Start", i)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("future %d never came", i)
			}
		}
		if err := <-sendErr; err != nil {
			t.Fatal(err)
		}
	})
}

// TestPipelineNeverBlocksForever: with nobody reading the futures, a full
// pipeline fails the sender within Timeout instead of blocking it forever.
// NetworkTransport blocks forever here (hashicorp/raft#612: its decoder
// goroutine blocks on the futures channel, then the sender on the
// in-progress channel, with no timeout), and so does InmemTransport (same
// structure): ours only.
func TestPipelineNeverBlocksForever(t *testing.T) {
	oursOnly(t, func(t *testing.T, im impl) {
		client, server := pair(t, im, 300*time.Millisecond)
		serve(t, server, func(rpc hraft.RPC) {
			rpc.Respond(&hraft.AppendEntriesResponse{Success: true}, nil)
		})
		p, err := client.AppendEntriesPipeline("id", server.LocalAddr())
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		done := make(chan error, 1)
		go func() {
			for i := range 1000 {
				req := &hraft.AppendEntriesRequest{Term: 1, PrevLogEntry: uint64(i), Entries: []*hraft.Log{{Index: uint64(i) + 1}}}
				if _, err := p.AppendEntries(req, new(hraft.AppendEntriesResponse)); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		select {
		case err := <-done:
			if !errors.Is(err, ErrPipelineFull) {
				t.Fatalf("sender ended with %v, want ErrPipelineFull", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the sender blocked forever on a pipeline nobody consumes")
		}
	})
}

// patternReader yields n bytes of a fixed pseudo-random pattern and counts
// what it gave; failAt > 0 makes it fail with errBroken there.
type patternReader struct {
	n, off, failAt int64
	read           atomic.Int64
}

var pattern = func() []byte {
	b := make([]byte, 1_000_003) // a prime: chunk boundaries never line up with it
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}()

var errBroken = errors.New("disk on fire")

func (r *patternReader) Read(p []byte) (int, error) {
	if r.failAt > 0 && r.off >= r.failAt {
		return 0, errBroken
	}
	if r.off >= r.n {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.n-r.off)]
	if r.failAt > 0 {
		p = p[:min(int64(len(p)), r.failAt-r.off)]
	}
	n := 0
	for n < len(p) {
		k := copy(p[n:], pattern[(r.off+int64(n))%int64(len(pattern)):])
		n += k
	}
	r.off += int64(n)
	r.read.Add(int64(n))
	return n, nil
}

// checkPattern reads r to its end and reports how many bytes matched the
// pattern, and the error that ended it (nil for a clean EOF).
func checkPattern(r io.Reader) (int64, error) {
	buf := make([]byte, 128<<10)
	var off int64
	for {
		n, err := r.Read(buf)
		for i := 0; i < n; {
			p := (off + int64(i)) % int64(len(pattern))
			k := min(n-i, len(pattern)-int(p))
			if !bytes.Equal(buf[i:i+k], pattern[p:int(p)+k]) {
				return off, fmt.Errorf("snapshot data differs near byte %d", off+int64(i))
			}
			i += k
		}
		off += int64(n)
		if err == io.EOF {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

func snapshotSize() int64 {
	if raceEnabled {
		return 16 << 20 // the race detector makes copying slow: 16 MiB
	}
	return 64 << 20
}

func TestConformanceInstallSnapshotStreams(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		client, server := pair(t, im, 5*time.Second)
		size := snapshotSize()
		stall := make(chan struct{})
		got := make(chan int64, 1)
		serve(t, server, func(rpc hraft.RPC) {
			<-stall // raft busy: nobody reads the data yet
			n, err := checkPattern(rpc.Reader)
			if err != nil {
				t.Errorf("snapshot data: %v", err)
			}
			got <- n
			rpc.Respond(&hraft.InstallSnapshotResponse{Term: 12, Success: true}, nil)
		})
		data := &patternReader{n: size}
		done := make(chan error, 1)
		go func() {
			var resp hraft.InstallSnapshotResponse
			done <- client.InstallSnapshot("id", server.LocalAddr(), snapshotRequest(size), &resp, data)
		}()
		time.Sleep(500 * time.Millisecond)
		// Back-pressure: a receiver that does not read holds the sender.
		held := data.read.Load()
		t.Logf("sender read %d MiB of %d MiB while the receiver stalled", held>>20, size>>20)
		if held >= size {
			t.Errorf("the whole snapshot was read while the receiver stalled")
		}
		close(stall)
		start := time.Now()
		if err := <-done; err != nil {
			t.Fatalf("InstallSnapshot: %v", err)
		}
		if n := <-got; n != size {
			t.Fatalf("receiver got %d bytes, want exactly %d", n, size)
		}
		t.Logf("%d MiB in %v after the stall", size>>20, time.Since(start).Round(time.Millisecond))
	})
}

// TestSnapshotReadAheadIsBounded: our receiver buffers at most
// SnapshotReadAhead plus the kernel's socket buffers.
func TestSnapshotReadAheadIsBounded(t *testing.T) {
	oursOnly(t, func(t *testing.T, im impl) {
		client, server := pair(t, im, 5*time.Second)
		size := snapshotSize()
		stall := make(chan struct{})
		serve(t, server, func(rpc hraft.RPC) {
			<-stall
			io.Copy(io.Discard, rpc.Reader)
			rpc.Respond(&hraft.InstallSnapshotResponse{Success: true}, nil)
		})
		data := &patternReader{n: size}
		done := make(chan error, 1)
		go func() {
			var resp hraft.InstallSnapshotResponse
			done <- client.InstallSnapshot("id", server.LocalAddr(), snapshotRequest(size), &resp, data)
		}()
		// The sender stalls once the read-ahead and the socket buffers are
		// full: wait for two looks 300 ms apart that agree (how soon that
		// is depends on the machine), then check the bound.
		var a, b int64
		for deadline := time.Now().Add(10 * time.Second); ; {
			a = data.read.Load()
			time.Sleep(300 * time.Millisecond)
			if b = data.read.Load(); a == b || time.Now().After(deadline) {
				break
			}
		}
		close(stall)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if a != b {
			t.Errorf("the sender kept sending (%d, then %d bytes) while the receiver stalled", a, b)
		}
		t.Logf("the sender stalled %d bytes ahead", b)
		// The read-ahead (4 MiB through the loop, 256 KiB once the socket
		// is handed over), two 256 KiB chunks, the socket buffers.
		if limit := int64(16 << 20); b > limit {
			t.Errorf("sender got %d bytes ahead of a stalled receiver, want ≤ %d", b, limit)
		}
	})
}

func TestConformanceFailedSnapshotFailsCleanly(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		client, server := pair(t, im, 2*time.Second)
		readErr := make(chan error, 1)
		serve(t, server, func(rpc hraft.RPC) {
			switch req := rpc.Command.(type) {
			case *hraft.InstallSnapshotRequest:
				n, err := checkPattern(rpc.Reader)
				if err == nil && n == req.Size {
					readErr <- errors.New("a failed snapshot arrived whole")
				} else {
					readErr <- nil
				}
				rpc.Respond(&hraft.InstallSnapshotResponse{Success: false}, fmt.Errorf("short snapshot"))
			case *hraft.RequestVoteRequest:
				rpc.Respond(&hraft.RequestVoteResponse{Term: req.Term, Granted: true}, nil)
			}
		})
		size := int64(8 << 20)
		data := &patternReader{n: size, failAt: 1 << 20}
		start := time.Now()
		var resp hraft.InstallSnapshotResponse
		err := client.InstallSnapshot("id", server.LocalAddr(), snapshotRequest(size), &resp, data)
		if err == nil {
			t.Fatal("InstallSnapshot succeeded with broken data")
		}
		if d := time.Since(start); d > 4*time.Second {
			t.Errorf("failing took %v", d)
		}
		select {
		case err := <-readErr:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(3 * time.Second):
			// The request can die with its connection before raft takes it:
			// then the receiver never sees it, which is just as clean.
			t.Log("the receiver never saw the request")
		}
		// The transports still work.
		var vr hraft.RequestVoteResponse
		if err := client.RequestVote("id", server.LocalAddr(), &hraft.RequestVoteRequest{Term: 9}, &vr); err != nil || !vr.Granted {
			t.Errorf("RequestVote after a failed snapshot: %v, %+v", err, vr)
		}
	})
}

func TestConformanceHeartbeatNotBehindStalledAppend(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		if !im.network {
			// InmemTransport ignores SetHeartbeatHandler by design (its doc
			// says so): heartbeats queue on the consumer like any RPC.
			t.Skip("InmemTransport has no heartbeat fast path")
		}
		client, server := pair(t, im, 5*time.Second)
		var hbs atomic.Int64
		server.SetHeartbeatHandler(func(rpc hraft.RPC) {
			hbs.Add(1)
			req := rpc.Command.(*hraft.AppendEntriesRequest)
			rpc.Respond(&hraft.AppendEntriesResponse{Term: req.Term, Success: true}, nil)
		})
		release := make(chan struct{})
		inside := make(chan struct{}, 1)
		serve(t, server, func(rpc hraft.RPC) {
			if _, ok := rpc.Command.(*hraft.AppendEntriesRequest); ok {
				inside <- struct{}{}
				<-release // raft stuck on a slow disk
			}
			rpc.Respond(&hraft.AppendEntriesResponse{Success: true}, nil)
		})
		appendDone := make(chan error, 1)
		go func() {
			big := &hraft.AppendEntriesRequest{Term: 3, Leader: []byte("l"), PrevLogEntry: 1, PrevLogTerm: 1,
				Entries: []*hraft.Log{{Index: 2, Term: 3, Data: make([]byte, 1<<20)}}}
			appendDone <- client.AppendEntries("id", server.LocalAddr(), big, new(hraft.AppendEntriesResponse))
		}()
		<-inside
		var worst time.Duration
		for i := range 20 {
			start := time.Now()
			hb := &hraft.AppendEntriesRequest{RPCHeader: header("l"), Term: uint64(100 + i), Leader: []byte("l")}
			var resp hraft.AppendEntriesResponse
			if err := client.AppendEntries("id", server.LocalAddr(), hb, &resp); err != nil || resp.Term != hb.Term {
				t.Fatalf("heartbeat %d: %v (term %d)", i, err, resp.Term)
			}
			worst = max(worst, time.Since(start))
		}
		close(release)
		if err := <-appendDone; err != nil {
			t.Fatal(err)
		}
		if hbs.Load() != 20 {
			t.Errorf("heartbeat handler saw %d heartbeats, want 20", hbs.Load())
		}
		if worst > 250*time.Millisecond {
			t.Errorf("slowest heartbeat took %v behind a stalled append", worst)
		}
	})
}

func TestConformanceConcurrentMixedRPCs(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		client, server := pair(t, im, 10*time.Second)
		server.SetHeartbeatHandler(func(rpc hraft.RPC) {
			req := rpc.Command.(*hraft.AppendEntriesRequest)
			rpc.Respond(&hraft.AppendEntriesResponse{Term: req.Term + 1}, nil)
		})
		serve(t, server, func(rpc hraft.RPC) {
			switch req := rpc.Command.(type) {
			case *hraft.AppendEntriesRequest:
				if len(req.Entries) == 0 { // a heartbeat, on InmemTransport
					rpc.Respond(&hraft.AppendEntriesResponse{Term: req.Term + 1}, nil)
					return
				}
				rpc.Respond(&hraft.AppendEntriesResponse{Term: req.Term + 1, LastLog: req.Entries[0].Index}, nil)
			case *hraft.RequestVoteRequest:
				rpc.Respond(&hraft.RequestVoteResponse{Term: req.Term + 1}, nil)
			case *hraft.RequestPreVoteRequest:
				rpc.Respond(&hraft.RequestPreVoteResponse{Term: req.Term + 1}, nil)
			case *hraft.TimeoutNowRequest:
				rpc.Respond(&hraft.TimeoutNowResponse{RPCHeader: req.RPCHeader}, nil)
			}
		})
		iters := 40
		if raceEnabled {
			iters = 15
		}
		target := server.LocalAddr()
		var wg sync.WaitGroup
		for g := range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range iters {
					term := uint64(g*10000 + j + 1)
					var err error
					ok := true
					switch (g + j) % 5 {
					case 0:
						var r hraft.AppendEntriesResponse
						err = client.AppendEntries("id", target, &hraft.AppendEntriesRequest{Term: term, PrevLogEntry: 1,
							Entries: []*hraft.Log{{Index: term, Data: make([]byte, 100+j)}}}, &r)
						ok = r.Term == term+1 && r.LastLog == term
					case 1:
						var r hraft.AppendEntriesResponse
						err = client.AppendEntries("id", target, &hraft.AppendEntriesRequest{Term: term, Leader: []byte("l")}, &r)
						ok = r.Term == term+1
					case 2:
						var r hraft.RequestVoteResponse
						err = client.RequestVote("id", target, &hraft.RequestVoteRequest{Term: term}, &r)
						ok = r.Term == term+1
					case 3:
						var r hraft.RequestPreVoteResponse
						err = client.RequestPreVote("id", target, &hraft.RequestPreVoteRequest{Term: term}, &r)
						ok = r.Term == term+1
					case 4:
						id := fmt.Appendf(nil, "g%d-%d", g, j)
						var r hraft.TimeoutNowResponse
						err = client.TimeoutNow("id", target, &hraft.TimeoutNowRequest{RPCHeader: hraft.RPCHeader{ID: id}}, &r)
						ok = bytes.Equal(r.ID, id)
					}
					if err != nil || !ok {
						t.Errorf("goroutine %d call %d: err %v, answer matches its request: %v", g, j, err, ok)
						return
					}
				}
			}()
		}
		wg.Wait()
	})
}

func TestConformanceDeadPeerFailsWithinBound(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		const timeout = 300 * time.Millisecond
		const bound = timeout + 700*time.Millisecond
		client := im.make(t, "", timeout)
		defer client.Close()
		timed := func(what string, target hraft.ServerAddress) {
			t.Helper()
			start := time.Now()
			var resp hraft.RequestVoteResponse
			err := client.RequestVote("id", target, &hraft.RequestVoteRequest{Term: 1}, &resp)
			if err == nil {
				t.Errorf("%s: RequestVote succeeded", what)
			}
			if d := time.Since(start); d > bound {
				t.Errorf("%s: failing took %v, want ≤ %v", what, d, bound)
			}
		}
		// Nobody there.
		if im.network {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := hraft.ServerAddress(ln.Addr().String())
			ln.Close()
			timed("closed port", addr)
		} else {
			timed("unknown peer", "nowhere")
		}
		// Someone there who never answers.
		if im.network {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var conns []net.Conn
			var mu sync.Mutex
			accepted := make(chan struct{})
			go func() {
				defer close(accepted)
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					mu.Lock()
					conns = append(conns, c)
					mu.Unlock()
				}
			}()
			timed("silent peer", hraft.ServerAddress(ln.Addr().String()))
			ln.Close()
			<-accepted
			mu.Lock()
			for _, c := range conns {
				c.Close()
			}
			mu.Unlock()
		} else {
			silent := im.make(t, "", timeout) // nobody reads its consumer
			defer silent.Close()
			im.link(client, silent)
			timed("silent peer", silent.LocalAddr())
		}
		// A peer that dies during the call.
		server := im.make(t, "", timeout)
		im.link(client, server)
		got := make(chan struct{})
		serve(t, server, func(rpc hraft.RPC) { close(got) })
		errc := make(chan error, 1)
		start := time.Now()
		go func() {
			var resp hraft.RequestVoteResponse
			errc <- client.RequestVote("id", server.LocalAddr(), &hraft.RequestVoteRequest{Term: 1}, &resp)
		}()
		<-got
		server.Close()
		if err := <-errc; err == nil {
			t.Error("RequestVote to a peer that died succeeded")
		}
		if d := time.Since(start); d > bound {
			t.Errorf("dying peer: failing took %v, want ≤ %v", d, bound)
		}
	})
}

func TestConformanceCloseIsIdempotent(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		tr := im.make(t, "", time.Second)
		if err := tr.Close(); err != nil {
			t.Fatal(err)
		}
		if err := tr.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
}

// TestCloseFailsInFlightAndLaterCalls: Close fails the RPCs in flight at
// once and every later call. Ours only: NetworkTransport's Close only stops
// its listener, so an RPC in flight waits for its I/O deadline and a later
// RPC dials and succeeds; InmemTransport's in-flight calls also wait for
// their timeout.
func TestCloseFailsInFlightAndLaterCalls(t *testing.T) {
	oursOnly(t, func(t *testing.T, im impl) {
		client, server := pair(t, im, 10*time.Second)
		got := make(chan struct{}, 8)
		serve(t, server, func(rpc hraft.RPC) {
			got <- struct{}{} // and never answer
		})
		p, err := client.AppendEntriesPipeline("id", server.LocalAddr())
		if err != nil {
			t.Fatal(err)
		}
		f, err := p.AppendEntries(&hraft.AppendEntriesRequest{Term: 1, PrevLogEntry: 1, Entries: []*hraft.Log{{Index: 2}}}, new(hraft.AppendEntriesResponse))
		if err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() {
			var resp hraft.RequestVoteResponse
			errc <- client.RequestVote("id", server.LocalAddr(), &hraft.RequestVoteRequest{Term: 1}, &resp)
		}()
		<-got
		<-got
		start := time.Now()
		if err := client.Close(); err != nil {
			t.Fatal(err)
		}
		if err := <-errc; !errors.Is(err, ErrTransportShutdown) {
			t.Errorf("in-flight RequestVote: %v, want ErrTransportShutdown", err)
		}
		if err := f.Error(); err == nil {
			t.Error("in-flight pipelined append succeeded after Close")
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("failing in-flight calls took %v", d)
		}
		var resp hraft.RequestVoteResponse
		if err := client.RequestVote("id", server.LocalAddr(), &hraft.RequestVoteRequest{}, &resp); !errors.Is(err, ErrTransportShutdown) {
			t.Errorf("RequestVote after Close: %v, want ErrTransportShutdown", err)
		}
		if _, err := client.AppendEntriesPipeline("id", server.LocalAddr()); !errors.Is(err, ErrTransportShutdown) {
			t.Errorf("AppendEntriesPipeline after Close: %v, want ErrTransportShutdown", err)
		}
		if _, err := p.AppendEntries(&hraft.AppendEntriesRequest{}, new(hraft.AppendEntriesResponse)); err == nil {
			t.Error("pipelined append after Close succeeded")
		}
	})
}

func TestConformanceRecreateOnSameAddress(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		client := im.make(t, "", 2*time.Second)
		defer client.Close()
		addr := ""
		for round := range 3 {
			server := im.make(t, addr, 2*time.Second)
			addr = string(server.LocalAddr())
			im.link(client, server)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case rpc := <-server.Consumer():
						rpc.Respond(&hraft.RequestVoteResponse{Term: uint64(round)}, nil)
					case <-stop:
						return
					}
				}
			}()
			// The client's connections to the previous incarnation are
			// dead; raft retries, and so do we, for a bounded time.
			deadline := time.Now().Add(3 * time.Second)
			for {
				var resp hraft.RequestVoteResponse
				err := client.RequestVote("id", server.LocalAddr(), &hraft.RequestVoteRequest{Term: 1}, &resp)
				if err == nil && resp.Term == uint64(round) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("round %d: no answer from the re-created transport: %v", round, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			close(stop)
			wg.Wait()
			if err := server.Close(); err != nil {
				t.Fatal(err)
			}
		}
	})
}
