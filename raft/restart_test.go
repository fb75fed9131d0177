package raft

import (
	"fmt"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

// TestFirstCallAfterPeerRestartSucceeds: a peer restarts (its transport
// closes, a new one binds the same address) and the first vote, heartbeat
// and append sent to it afterwards each succeed, although the client still
// held connections to the old incarnation. The call must not fail on such a
// stale connection: raft would count that as a failed vote or a missed
// heartbeat (internal/raftnode's TestRestartAdvertisesNewHTTPAddr saw the
// restarted node lose its election over it). Ours only:
// raft.NetworkTransport fails the first call on a pooled connection whose
// peer is gone.
func TestFirstCallAfterPeerRestartSucceeds(t *testing.T) {
	oursOnly(t, func(t *testing.T, im impl) {
		client := im.make(t, "", 2*time.Second)
		defer client.Close()
		addr := ""
		answer := func(rpc hraft.RPC) {
			switch rpc.Command.(type) {
			case *hraft.RequestVoteRequest:
				rpc.Respond(&hraft.RequestVoteResponse{Granted: true}, nil)
			case *hraft.AppendEntriesRequest:
				rpc.Respond(&hraft.AppendEntriesResponse{Success: true}, nil)
			default:
				rpc.Respond(nil, nil)
			}
		}
		calls := []struct {
			name string
			call func(target hraft.ServerAddress) error
		}{
			{"vote", func(target hraft.ServerAddress) error {
				var resp hraft.RequestVoteResponse
				return client.RequestVote("id", target, &hraft.RequestVoteRequest{RPCHeader: header("c"), Term: 1}, &resp)
			}},
			{"heartbeat", func(target hraft.ServerAddress) error {
				var resp hraft.AppendEntriesResponse
				return client.AppendEntries("id", target, &hraft.AppendEntriesRequest{RPCHeader: header("c"), Term: 1}, &resp)
			}},
			{"append", func(target hraft.ServerAddress) error {
				var resp hraft.AppendEntriesResponse
				return client.AppendEntries("id", target, &hraft.AppendEntriesRequest{RPCHeader: header("c"), Term: 1,
					Entries: []*hraft.Log{{Index: 1, Term: 1, Data: []byte("x")}}}, &resp)
			}},
		}
		for round := range 10 {
			t.Run(fmt.Sprint("restart ", round), func(t *testing.T) {
				server := im.make(t, addr, 2*time.Second)
				t.Cleanup(func() {
					if err := server.Close(); err != nil {
						t.Error(err)
					}
				})
				addr = string(server.LocalAddr())
				server.(*Transport).SetHeartbeatHandler(answer)
				serve(t, server, answer)
				for _, c := range calls {
					if err := c.call(server.LocalAddr()); err != nil {
						t.Errorf("the first %s after the peer's restart: %v", c.name, err)
					}
				}
			})
		}
	})
}
