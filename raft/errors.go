package raft

import (
	"errors"
	"fmt"

	hraft "github.com/hashicorp/raft"
)

// Lifecycle and protocol errors. Test them with errors.Is: the transport
// wraps them with the operation and the peer (see [OpError]).
var (
	// ErrTransportShutdown: the transport was closed. It is raft's own
	// sentinel, so code written for raft.NetworkTransport keeps working.
	ErrTransportShutdown = hraft.ErrTransportShutdown
	// ErrPipelineShutdown: the append pipeline was closed (raft's sentinel).
	ErrPipelineShutdown = hraft.ErrPipelineShutdown
	// ErrTimeout: the peer did not answer within Config.Timeout.
	ErrTimeout = errors.New("raft transport: rpc timed out")
	// ErrConnectionClosed: the connection carrying the RPC closed before
	// the answer came; the cause is joined to it.
	ErrConnectionClosed = errors.New("raft transport: connection closed")
	// ErrPeerUnavailable: the peer could not be reached: the dial failed,
	// or the last dials failed and the transport is backing off before
	// dialing again. The dial's cause is joined to it.
	ErrPeerUnavailable = errors.New("raft transport: peer unavailable (backing off)")
	// ErrFrameTooLarge: a frame exceeds Config.MaxFrameSize. On receipt the
	// connection carrying it is closed; on send the RPC fails unsent.
	ErrFrameTooLarge = errors.New("raft transport: frame too large")
	// ErrMalformed: bytes that are not this transport's protocol; the
	// connection carrying them is closed.
	ErrMalformed = errors.New("raft transport: malformed frame")
	// ErrSnapshotSize: the snapshot data did not hold Size bytes.
	ErrSnapshotSize = errors.New("raft transport: snapshot data shorter than its Size")
	// ErrPipelineFull: a pipelined AppendEntries waited Config.Timeout for
	// a free slot (nobody consumed the finished futures).
	ErrPipelineFull = errors.New("raft transport: append pipeline full")
)

// OpError describes a failed RPC: which, to whom, and why.
type OpError struct {
	Op   string // the RPC: "append_entries", "request_vote", …
	Peer hraft.ServerAddress
	Err  error
}

func (e *OpError) Error() string {
	return fmt.Sprintf("raft transport: %s to %s: %v", e.Op, e.Peer, e.Err)
}

func (e *OpError) Unwrap() error { return e.Err }

// RemoteError is an error the peer's raft answered an RPC with.
type RemoteError struct {
	Msg string
}

func (e *RemoteError) Error() string { return e.Msg }
