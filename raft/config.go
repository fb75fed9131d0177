package raft

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/netio"
)

// Config configures a [Transport]. The zero value is ready to use: it
// listens on 127.0.0.1 on a free port with every default below. A Config
// must not be modified after it is passed to [New].
type Config struct {
	// System runs the transport's socket actors: its loops, logger and
	// metrics Registerer are the caller's choice, and the caller shuts it
	// down after Close. Nil means a private System that the transport
	// starts (Loops loops, Logger, no metrics of its own) and Close shuts
	// down; nothing is shared between transports.
	System *netio.System
	// Loops is the number of event loops of the private System (System
	// nil); zero means 1.
	Loops int

	// BindAddr is the numeric "ip:port" to listen on; empty means
	// "127.0.0.1:0" (a free port on loopback). When its IP is a specific
	// one (not 0.0.0.0 or ::), outgoing connections are made from that IP
	// too (port chosen by the kernel), so that on a multi-homed host peers
	// see the address this node listens on, and whatever filters that
	// address (a firewall, a partition) applies to both directions. The IP
	// is not used for a peer of the other address family, nor, when it is
	// a loopback IP, for a peer outside loopback; an unspecified IP leaves
	// the source to the kernel's routing.
	BindAddr string
	// Advertise is the address peers dial, returned by LocalAddr; empty
	// means the bound address. It must not be an unspecified address.
	Advertise string

	// Timeout bounds every RPC: dial, send and answer. For InstallSnapshot
	// it bounds each chunk's progress, and the final answer is given
	// Timeout × max(1, Size/256 KiB), as raft.NetworkTransport does. Zero
	// means 10 s.
	Timeout time.Duration
	// MaxPool is the number of connections per peer carrying RPCs other
	// than heartbeats, pipelines and snapshots (those have their own).
	// Zero means 2.
	MaxPool int
	// MaxInFlight bounds the AppendEntries requests a pipeline has in
	// flight (sent, answer not yet consumed); a full pipeline blocks the
	// sender up to Timeout. Zero means 16; negative turns pipelining off
	// (AppendEntriesPipeline returns raft.ErrPipelineReplicationNotSupported).
	MaxInFlight int
	// MaxFrameSize bounds one frame (an RPC or an answer, not snapshot
	// data). Zero means 64 MiB.
	MaxFrameSize int
	// MaxConnections caps the accepted connections open at a time; more
	// are reset at once. Zero means 256. (A peer opens about 4.)
	MaxConnections int
	// MaxBuffered bounds the bytes of incoming frames, in reassembly and
	// queued for raft, of all accepted connections together; the
	// connection whose frame would exceed it is closed. Zero means twice
	// MaxFrameSize.
	MaxBuffered int
	// SnapshotChunkSize is the size of each write of snapshot data; two
	// chunks are in flight at a time. Zero means 256 KiB (larger chunks fall
	// out of the CPU cache between the reader and write(2): 1 MiB cost
	// 15–33 % more CPU per MB on the development VM).
	SnapshotChunkSize int
	// SnapshotReadAhead bounds the snapshot data the receiver buffers
	// ahead of raft's reads; beyond it reading stops at the socket, the
	// TCP window closes and the sender waits. Zero means 4 MiB.
	SnapshotReadAhead int
	// ReconnectBackoff is the first wait after a failed dial before the
	// next one; it doubles per failure up to MaxReconnectBackoff. Calls
	// to a peer fail at once (ErrPeerUnavailable) while it waits. Zero
	// means 10 ms; negative turns back-off off.
	ReconnectBackoff time.Duration
	// MaxReconnectBackoff caps the back-off; zero means 1 s.
	MaxReconnectBackoff time.Duration

	// TLS, when set, secures every connection with mutual TLS (see
	// tls.go): it must hold this node's certificate, the cluster CA as
	// RootCAs and ClientCAs, and ClientAuth RequireAndVerifyClientCert.
	// Nil means plain TCP.
	TLS *tls.Config
	// PeerID reads a node id out of a verified peer certificate; with TLS
	// a request whose RPC header names another node is refused
	// (ErrIdentity), and a peer whose certificate gives an error is
	// refused at the handshake. An empty id without an error means the
	// certificate proves membership but names no node: its headers are
	// not checked. Nil means the "urn:ioactor:node:" URI SAN of the
	// certificates tftpd cert makes.
	PeerID func(*x509.Certificate) (string, error)

	// Logger receives the transport's logs; nil means slog.Default().
	Logger *slog.Logger
	// Registerer, when not nil, receives the transport's metrics.
	Registerer prometheus.Registerer
}

const (
	defaultTimeout      = 10 * time.Second
	defaultMaxPool      = 2
	defaultMaxInFlight  = 16
	defaultMaxFrame     = 64 << 20
	defaultChunk        = 256 << 10
	defaultReadAhead    = 4 << 20
	defaultBackoff      = 10 * time.Millisecond
	defaultMaxBackoff   = time.Second
	snapshotTimeoutUnit = 256 << 10 // raft.DefaultTimeoutScale
	// serverQueueFrames bounds the requests a connection queues for raft
	// before it stops reading the socket.
	serverQueueFrames = 256
	// serverInFlight bounds the requests of one connection handed to raft
	// and not yet answered.
	serverInFlight = 128
)

// withDefaults returns a copy of c with zero fields set to their defaults.
func (c Config) withDefaults() Config {
	if c.Loops <= 0 {
		c.Loops = 1
	}
	if c.BindAddr == "" {
		c.BindAddr = "127.0.0.1:0"
	}
	if c.Timeout <= 0 {
		c.Timeout = defaultTimeout
	}
	if c.MaxPool <= 0 {
		c.MaxPool = defaultMaxPool
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = defaultMaxInFlight
	}
	if c.MaxFrameSize <= 0 {
		c.MaxFrameSize = defaultMaxFrame
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = defaultMaxConns
	}
	if c.MaxBuffered <= 0 {
		c.MaxBuffered = 2 * c.MaxFrameSize
	}
	if c.SnapshotChunkSize <= 0 {
		c.SnapshotChunkSize = defaultChunk
	}
	if c.SnapshotReadAhead <= 0 {
		c.SnapshotReadAhead = defaultReadAhead
	}
	if c.ReconnectBackoff == 0 {
		c.ReconnectBackoff = defaultBackoff
	}
	if c.MaxReconnectBackoff <= 0 {
		c.MaxReconnectBackoff = defaultMaxBackoff
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}
