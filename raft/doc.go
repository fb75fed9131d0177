// Package raft is a network transport for github.com/hashicorp/raft built on
// this module's tcp package: a [Transport] implements raft.Transport and its
// optional extensions raft.WithClose, raft.WithPreVote and raft.WithPeers,
// with pipelined AppendEntries.
//
// # Usage
//
//	trans, err := raft.New(raft.Config{
//		BindAddr:   "127.0.0.1:7000",
//		Logger:     logger,   // *slog.Logger; nil means slog.Default()
//		Registerer: registry, // prometheus.Registerer; nil means no metrics
//	})
//	if err != nil { … }
//	r, err := hraft.NewRaft(conf, fsm, logs, stable, snaps, trans)
//	…
//	r.Shutdown().Error()
//	trans.Close()
//
// (hraft is github.com/hashicorp/raft.) The zero Config listens on a free
// loopback port; peers are addressed by "ip:port" strings, names are
// resolved at dial time. Every method is safe from any goroutine.
//
// A transport runs on the netio.System given in Config.System, whose loops,
// logger and metrics are the caller's; several transports (and other
// socket users) may share one. Without one, the transport starts a private
// System (Config.Loops loops, one by default) and Close shuts it down: there
// is no process-wide state, and a closed transport leaves no goroutine
// behind.
//
// # Design
//
// Sockets belong to netio actors: one actor per connection, pinned to an
// event loop, talking to its tcp connection with messages; raft's API is
// blocking calls on raft's goroutines. The bridge between the two is a small
// lock-guarded writer per connection: callers encode their request frame
// straight into the connection's output buffer; while the actor is idle
// the caller writes it to the socket itself (tcp.DirectWriter), and wakes
// the actor only for what the socket did not take, or when the actor is
// busy writing; the actor hands the whole batch to the socket as one
// ack-paced write, while the next batch accumulates in a second buffer.
// Answers are matched to calls by id, on the loop, and a caller waits on
// its call's channel. On the receiving side each connection has one
// dispatcher goroutine that hands requests to raft in order and, while raft
// works on one, already offers the next on the Consumer channel; it writes
// answers the way callers write requests.
//
// Every connection stops being read by the loop once it is set up
// (with TLS all but a client's pipelines and snapshots, see TLS): the tcp
// connection hands its socket over
// (tcp.HandOverReading: a duplicate of it on the Go runtime's poller, the
// loop no longer woken by what arrives). On the heartbeat and RPC
// connections the callers read: a caller waiting for its answer takes the
// connection's read token and reads until its own answer came, completing
// the others' on the way, so an answer wakes its caller directly. A
// pipeline's answers are read by a goroutine of the pipeline, which
// completes the futures and hands them to raft's Consumer channel. A
// server connection whose first request is not an InstallSnapshot is read
// by its dispatcher whenever it has nothing queued or in flight, as
// raft.NetworkTransport serves one request at a time (one read of a busy
// pipeline brings many); a frame body is read straight into the frame's
// buffer, and a whole frame of 2 KiB or more in a read is handed to raft in
// place (the read buffer is not reused after it: a follower's log entries
// are the bytes it read, never copied). A snapshot's data is read by raft's
// own Reads. One wake-up of a goroutine per hop is left, as with net.Conn.
//
// A call that fails because a connection that had carried answers before
// was closed or reset by the peer is sent once more on a fresh
// connection: the peer restarted and the old incarnation's FIN had not
// been seen yet when the call picked the connection (raft's RPCs are safe
// to repeat; the old incarnation never answered).
//
// Timeouts: a connection's sweep fires at its oldest pending call's
// deadline (no timer while nothing is pending). A call that times out
// closes its connection, as raft.NetworkTransport does: the server answers
// a connection's requests in order, so a request raft never answers would
// otherwise hold back every later answer on it. The next call dials anew.
//
// Per peer there is one connection for heartbeats (so they never queue
// behind an append or a slow disk on either side: the receiver hands them to
// the heartbeat handler on its own goroutine), up to Config.MaxPool
// connections for the other RPCs (which are multiplexed by id), one per
// append pipeline, and one per InstallSnapshot.
//
// The wire format is a hand-written binary encoding (see codec.go and
// frame.go): varints, nil-aware byte slices, delta-encoded log indexes,
// terms and timestamps, and no reflection. Decoded log entries alias the
// frame they arrived in, so a request costs a few allocations whatever its
// size.
//
// Flow control: a pipeline has at most Config.MaxInFlight appends
// outstanding and blocks the sender beyond that, but never longer than
// Config.Timeout (ErrPipelineFull), so a pipeline whose futures nobody
// reads cannot hang raft (hashicorp/raft#612). Snapshot data is written in
// chunks, each only after the kernel took the one before the previous.
// The receiving connection hands its socket over to raft's reading
// goroutine once the InstallSnapshot header arrived (without TLS through
// tcp.HandOverReading, with TLS its dispatcher gives raft its tls.Conn,
// there only if it is the connection's first request: a later one is
// malformed, as on a plain connection its dispatcher reads; the client
// sends each snapshot on a connection of its own):
// raft's Reads read the socket themselves (through the runtime's poller),
// into raft's buffer or a 256 KiB one, and nothing more is buffered. A
// receiver that does not read holds the sender through the TCP window. A connection stops reading, the same way, when
// raft falls behind on its requests, and when its peer does not read the
// answers: past min(Config.MaxBuffered, 4 MiB) of answers pending it takes
// no more requests, and it is closed (ErrSlowPeer) once none was taken for
// Config.Timeout.
//
// # TLS
//
// With Config.TLS every connection is mutual TLS: both sides present a
// certificate of the cluster CA (ClientAuth must be
// tls.RequireAndVerifyClientCert), and a server connection learns its
// peer's node id from the certificate (Config.PeerID; by default the
// "urn:ioactor:node:ID" URI SAN that tftpd cert writes). A request whose
// RPC header names another node is refused, the connection closed, and
// ioactor_raft_transport_identity_refused_total counts it: a member cannot
// vote or lead in another's name. The client checks the server's
// certificate against the address it dials (an IP SAN).
//
// Design: crypto/tls needs a net.Conn and blocking calls; the loops have
// actors and messages. Where a goroutine waits for every read anyway — a
// client's heartbeat and RPC connections (the caller holding the read
// token) and every server connection (its dispatcher) — the socket is
// handed over at once and a tls.Conn runs over the duplicate (tlsdirect.go):
// that goroutine reads and decrypts itself, and the ciphertext of its writes
// goes through the connection's writer like plaintext frames without TLS (a
// lone write straight to the socket, more batched by the loop). A round trip
// then has NetworkTransport's goroutine hops, with a cheaper codec. A server
// connection that brings many requests per read (a pipeline) gets a reader
// goroutine that decrypts ahead, up to the queue bound. For a client's
// pipelines and snapshot senders a shim actor sits between the tcp connection and the
// transport's own connection actor and speaks the tcp package's protocol
// to both (Write with an ack, SuspendReading, ResumeReading, Close, Abort,
// Received, ConnectionClosed), so the framing, the writers and the flow
// control are the same code with and without TLS. Under the shim a net.Conn
// view of the tcp connection feeds a tls.Conn: Read takes the bytes read
// from the socket, and the socket stops being read while more than 256 KiB
// wait; Write queues the bytes for the tcp connection and waits while more
// than 256 KiB of them are not yet acknowledged, so a peer that does not
// read holds the writer, as without TLS (a wait per record, not per
// 256 KiB, cost 3× on a 4 KiB append: TLS cuts a write into 1.4 KB records
// at first). One goroutine reads the tls.Conn (handshake first, bounded by
// Config.Timeout) and hands decrypted chunks to the shim, at most 8 ahead;
// another encrypts the writes. The transport's actor gets its write's ack
// once the bytes are encrypted and queued under that bound.
// The shim costs two goroutine hand-offs and a copy per direction: nothing
// for a pipeline, whose answers it batches, but it made a synchronous round
// trip three times NetworkTransport+TLS's before the hand-over above. A
// client Config with a ClientSessionCache resumes sessions on reconnect.
//
// # Errors and timeouts
//
// Every RPC fails within Config.Timeout (plus a sweep interval of at most a
// tenth of it) when the peer is gone, refuses, or does not answer. Failed
// calls return an [*OpError] naming the RPC and the peer; test its cause
// with errors.Is against [ErrTimeout], [ErrConnectionClosed],
// [ErrPeerUnavailable], [ErrTransportShutdown], [ErrFrameTooLarge],
// [ErrMalformed]; an error raft answered with is a [*RemoteError]. After a
// failed dial the peer is not dialed again for Config.ReconnectBackoff,
// doubling up to Config.MaxReconnectBackoff; calls fail at once meanwhile.
// A connection that receives an oversized or malformed frame is logged and
// closed; the others are untouched. Close fails the RPCs in flight, and
// every later call, with ErrTransportShutdown.
//
// # Metrics
//
// With Config.Registerer set the transport registers
// ioactor_raft_transport_rpc_duration_seconds{rpc},
// ioactor_raft_transport_rpc_errors_total{rpc},
// ioactor_raft_transport_requests_served_total{rpc},
// ioactor_raft_transport_bytes_total{direction},
// ioactor_raft_transport_snapshot_sent_bytes_total,
// ioactor_raft_transport_pipeline_inflight,
// ioactor_raft_transport_reconnects_total,
// ioactor_raft_transport_dial_failures_total and
// ioactor_raft_transport_rejected_connections_total. The hot path only
// increments atomics; the collector reads them at scrape time. Two
// transports need two registries (or wrap one with prometheus.WrapRegistererWith).
//
// # Limitations
//
// Linux only, like package tcp. The wire format is this package's
// own: it does not interoperate with raft.NetworkTransport. A Connect in
// progress cannot be cancelled (package tcp has no way to), so Close may
// wait up to Config.Timeout for a dial to a black-holed address to end.
// Frames are limited to Config.MaxFrameSize (64 MiB by default): a raft log
// entry larger than that cannot be replicated. raft's own go-metrics are not
// bridged to Prometheus. A System passed in Config must be shut down only
// after Close.
package raft
