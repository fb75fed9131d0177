//lint:file-ignore SA1019 the tests set the deprecated Leader and Candidate fields, which the wire carries

package raft

import (
	"errors"
	"fmt"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

// An RPC that raft never answers (its FSM or disk stalled once) must cost
// its own timeout and nothing more: the next call of the same kind to the
// same peer succeeds within a round trip, and every call after it too. The
// server answers a connection's requests in order, so ours drops the
// connection of a timed-out call, as raft.NetworkTransport does.

// wedgeTimeout is the transports' timeout in these tests: 2 s, because
// every one of the wedgeCalls must answer within it on a loaded 2-core
// machine under -race (at 1 s, a run at load ~3.4 failed three of these
// tests, one of them on raft's NetworkTransport).
const wedgeTimeout = 2 * time.Second

// wedgeCalls is how many calls must succeed after the recovery.
const wedgeCalls = 10_000

// wedgeRequest returns an append of the given kind whose Term is term:
// the server leaves term 1 unanswered.
func wedgeRequest(kind string, term uint64) *hraft.AppendEntriesRequest {
	req := &hraft.AppendEntriesRequest{RPCHeader: header("l"), Term: term, Leader: []byte("l")}
	if kind != "heartbeat" {
		req.PrevLogEntry, req.PrevLogTerm, req.LeaderCommitIndex = term, 1, term
		req.Entries = []*hraft.Log{{Index: term + 1, Term: term, Data: []byte("entry")}}
	}
	return req
}

// answerAllButTerm1 answers every append with its term, except term 1.
func answerAllButTerm1(rpc hraft.RPC) {
	req, ok := rpc.Command.(*hraft.AppendEntriesRequest)
	if !ok {
		rpc.Respond(nil, errors.New("unexpected RPC"))
		return
	}
	if req.Term == 1 {
		return // never answered
	}
	rpc.Respond(&hraft.AppendEntriesResponse{Term: req.Term, Success: true}, nil)
}

// syncAppend sends one synchronous append and checks its answer.
func syncAppend(tr loopback, target hraft.ServerAddress, req *hraft.AppendEntriesRequest) error {
	var resp hraft.AppendEntriesResponse
	if err := tr.AppendEntries("id", target, req, &resp); err != nil {
		return err
	}
	if resp.Term != req.Term || !resp.Success {
		return fmt.Errorf("answer %+v to term %d", resp, req.Term)
	}
	return nil
}

// pipelinedAppend sends one append on p and waits for its future.
func pipelinedAppend(p hraft.AppendPipeline, req *hraft.AppendEntriesRequest) error {
	if _, err := p.AppendEntries(req, new(hraft.AppendEntriesResponse)); err != nil {
		return err
	}
	select {
	case f := <-p.Consumer():
		if err := f.Error(); err != nil {
			return err
		}
		if r := f.Response(); r.Term != req.Term || !r.Success {
			return fmt.Errorf("answer %+v to term %d", r, req.Term)
		}
		return nil
	case <-time.After(10 * wedgeTimeout):
		return errors.New("no future")
	}
}

// checkFailsInTime runs one call that nobody answers.
func checkFailsInTime(t *testing.T, what string, call func() error) {
	t.Helper()
	start := time.Now()
	err := call()
	took := time.Since(start)
	if err == nil {
		t.Fatalf("unanswered %s succeeded", what)
	}
	// The timeout plus the sweep's granularity (Timeout/10), and slack for
	// a loaded machine under -race.
	if took > wedgeTimeout+2*time.Second {
		t.Fatalf("unanswered %s failed after %v, timeout %v", what, took, wedgeTimeout)
	}
	t.Logf("unanswered %s failed after %v: %v", what, took.Round(time.Millisecond), err)
}

// checkRecovers runs the next call: within a round trip (a dial included),
// never behind the unanswered one.
func checkRecovers(t *testing.T, what string, call func() error) {
	t.Helper()
	start := time.Now()
	if err := call(); err != nil {
		t.Fatalf("%s after the unanswered one: %v", what, err)
	}
	if took := time.Since(start); took > wedgeTimeout/2 {
		t.Fatalf("%s after the unanswered one took %v: it waited behind it", what, took)
	} else {
		t.Logf("next %s took %v", what, took.Round(time.Microsecond))
	}
}

func TestConformanceUnansweredHeartbeatDoesNotWedge(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		client, server := pair(t, im, wedgeTimeout)
		server.SetHeartbeatHandler(answerAllButTerm1)
		serve(t, server, answerAllButTerm1) // InmemTransport's heartbeats
		target := server.LocalAddr()
		if err := syncAppend(client, target, wedgeRequest("heartbeat", 2)); err != nil {
			t.Fatal(err) // connected, answered
		}
		checkFailsInTime(t, "heartbeat", func() error {
			return syncAppend(client, target, wedgeRequest("heartbeat", 1))
		})
		checkRecovers(t, "heartbeat", func() error {
			return syncAppend(client, target, wedgeRequest("heartbeat", 3))
		})
		for i := range wedgeCalls {
			if err := syncAppend(client, target, wedgeRequest("heartbeat", uint64(10+i))); err != nil {
				t.Fatalf("heartbeat %d after the recovery: %v", i, err)
			}
		}
	})
}

func TestConformanceUnansweredAppendDoesNotWedge(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		client, server := pair(t, im, wedgeTimeout)
		serve(t, server, answerAllButTerm1)
		target := server.LocalAddr()
		if err := syncAppend(client, target, wedgeRequest("append", 2)); err != nil {
			t.Fatal(err)
		}
		checkFailsInTime(t, "append", func() error {
			return syncAppend(client, target, wedgeRequest("append", 1))
		})
		checkRecovers(t, "append", func() error {
			return syncAppend(client, target, wedgeRequest("append", 3))
		})
		for i := range wedgeCalls {
			if err := syncAppend(client, target, wedgeRequest("append", uint64(10+i))); err != nil {
				t.Fatalf("append %d after the recovery: %v", i, err)
			}
		}
	})
}

// The pipeline of the unanswered append fails (raft then closes it and, as
// its replication loop does, opens a new one after a synchronous append);
// the next pipelined append, on a new pipeline to the same peer, succeeds
// within a round trip.
func TestConformanceUnansweredPipelinedAppendDoesNotWedge(t *testing.T) {
	forEach(t, func(t *testing.T, im impl) {
		client, server := pair(t, im, wedgeTimeout)
		serve(t, server, answerAllButTerm1)
		target := server.LocalAddr()
		p, err := client.AppendEntriesPipeline("id", target)
		if err != nil {
			t.Fatal(err)
		}
		if err := pipelinedAppend(p, wedgeRequest("append", 2)); err != nil {
			t.Fatal(err)
		}
		checkFailsInTime(t, "pipelined append", func() error {
			return pipelinedAppend(p, wedgeRequest("append", 1))
		})
		p.Close()
		var next hraft.AppendPipeline
		checkRecovers(t, "pipelined append", func() error {
			var err error
			if next, err = client.AppendEntriesPipeline("id", target); err != nil {
				return err
			}
			return pipelinedAppend(next, wedgeRequest("append", 3))
		})
		defer next.Close()
		sendErr := make(chan error, 1)
		go func() {
			for i := range wedgeCalls {
				if _, err := next.AppendEntries(wedgeRequest("append", uint64(10+i)), new(hraft.AppendEntriesResponse)); err != nil {
					sendErr <- fmt.Errorf("pipelined append %d: %w", i, err)
					return
				}
			}
			sendErr <- nil
		}()
		for i := range wedgeCalls {
			select {
			case f := <-next.Consumer():
				if err := f.Error(); err != nil {
					t.Fatalf("pipelined append %d after the recovery: %v", i, err)
				}
				if got, want := f.Response().Term, uint64(10+i); got != want {
					t.Fatalf("future %d answers term %d, want %d", i, got, want)
				}
			case <-time.After(10 * wedgeTimeout):
				select {
				case err := <-sendErr:
					t.Fatalf("future %d never came; the sender ended with %v", i, err)
				default:
					t.Fatalf("future %d never came", i)
				}
			}
		}
		if err := <-sendErr; err != nil {
			t.Fatal(err)
		}
	})
}
