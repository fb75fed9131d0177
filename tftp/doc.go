// Package tftp implements the Trivial File Transfer Protocol: a server on
// ioactor's event loops, a client, a packet codec, option negotiation,
// netascii conversion and a sandboxed file tree.
//
// A server transfer goes through these states (each event is one method of
// the transfer; the [Replicator], when set, is called at the transitions):
//
//	            request                        Resume: another server's download
//	               │                                           │
//	               ▼                                           │
//	  ┌─ refused ─ new: check, open the file, negotiate        │
//	  │            │ with a Replicator      │ without          │
//	  │            ▼                        │                  │
//	  ├─ fails ─── beginning                │                  │
//	  │            │ Replicator.Begin done  │                  │
//	  │            ▼                        ▼                  ▼
//	  ├─────────── running ◄────────────────┴──────────────────┘
//	  │ last ACK,    DATA and ACKs; Replicator.Progress every CheckpointInterval;
//	  │ an ERROR,    sending holds while Replicator.Stalled
//	  │ timeout,   │ the last DATA of an upload
//	  │ cancel     ▼
//	  ├─ fails ─── committing: sync and rename, or Replicator.CommitUpload
//	  │            │ published
//	  │            ▼
//	  ├─────────── dallying: the last ACK again when the client asks
//	  │ over, an ERROR, cancel
//	  ▼
//	finished: the file released; Replicator.End (a download the server
//	          cancelled: a last Progress instead)
//
// It covers RFC 1350 (the protocol, octet and netascii), RFC 1123 (the
// Sorcerer's Apprentice fix), RFC 2347 (option extension), RFC 2348
// (blksize), RFC 2349 (timeout and tsize, for uploads too) and RFC 7440
// (windowsize), with block numbers that roll over past 65535.
//
// # Usage
//
// A server serves a directory (or any [Files]: see Files below); it
// needs a [netio.System]:
//
//	sys, err := netio.NewSystem(netio.Config{})
//	...
//	srv, err := tftp.NewServer(sys, tftp.ServerConfig{
//		Root:   "/srv/tftp",
//		Listen: netip.MustParseAddrPort("0.0.0.0:69"),
//	})
//	...
//	defer srv.Shutdown(ctx) // drains: running transfers finish
//
// A client needs nothing but the standard library's sockets:
//
//	c := &tftp.Client{BlockSize: 1428, WindowSize: 16, TSize: true}
//	stats, err := c.Get(ctx, "192.0.2.10:69", "boot/pxelinux.0", file)
//	stats, err = c.Put(ctx, "192.0.2.10:69", "logs/today.txt", r, size)
//
// cmd/tftpd and cmd/tftp are the server and the client as commands.
//
// # Server
//
// The server is a listener actor on the server port, which parses requests
// and starts one transfer actor per transfer, with a UDP socket of its own
// bound to a fresh port: the server's transfer ID (TID) of RFC 1350. A
// datagram from another address to that port gets ERROR 5 (within limits:
// see Security) and leaves the transfer alone. Transfers are spread over
// the system's loops. In single-port mode ([ServerConfig.SinglePort])
// every reply comes from the server port instead: the transfer actors run
// on the listener's loop, the listener hands each one its client's
// datagrams (a direct call, no copy) and they send through the server
// port's socket. This suits NAT and containers, and a replicated server
// whose next leader takes every transfer over by binding one port.
//
// Each transfer runs a small state machine (a sender for a download, a
// receiver for an upload) fed by packets and timers. A download keeps its
// window of DATA packets ready (read with one preadv(2) per window, the
// next window read ahead while the client answers) and sends it with one
// batched system call (UDP GSO where the kernel has it). Steady state
// allocates nothing per packet. Retransmission follows the round-trip time
// (RFC 6298, within [ServerConfig.MinTimeout] and [ServerConfig.Timeout])
// unless the client negotiated a timeout, backs off exponentially, and
// gives up after [ServerConfig.Retries]; a duplicate ACK never triggers a
// retransmission in lock-step (RFC 1123), and only once per window with a
// window (the receiver saw a gap, RFC 7440).
//
// What PXE firmware and real clients need: the file is opened and checked
// before an OACK, so no ERROR follows an OACK but for a failure mid-way;
// only requested options are acknowledged, bogus values ignored; a client's
// ERROR after an OACK (the UEFI tsize probe) ends the transfer at once and
// silently, and the firmware's new request works even if it comes before
// the ERROR is seen; [ServerConfig.MaxBlockSize] caps blksize for clients
// that ask for more than they can reassemble, and
// [ServerConfig.ClampBlockSize] caps it to the route's MTU.
//
// Uploads are off unless allowed. They are written to a temporary file,
// synced and renamed into place before the last ACK, so a client that
// sees its upload acknowledged finds it complete, and an interrupted
// upload leaves nothing under the target name.
//
// # Security
//
// TFTP has no authentication, so the server bounds what any stranger can
// make it hold, send or log (every bound is a [ServerConfig] field and a
// tftpd flag):
//
//   - Time: a timeout option above [ServerConfig.MaxTimeoutOption] (10 s)
//     is refused, as RFC 2349 allows, and [ServerConfig.SilenceLimit]
//     (30 s) abandons a transfer that has not heard from its client, so
//     a slot is held for seconds, not the hour of the transfer deadline.
//   - Fair shares: one client (an address, or a network of
//     [ServerConfig.ClientPrefix4]/[ServerConfig.ClientPrefix6] bits)
//     holds at most [ServerConfig.MaxClientTransfers] transfers (32) and
//     makes new requests at [ServerConfig.ClientRate] (20/s, a token
//     bucket). A refusal is an ERROR 0 that says why, and is counted in
//     ioactor_tftp_requests_refused_total{reason}, never a silence that
//     looks like loss.
//   - Reflection: a transfer that never heard from its client sends its
//     first packet [ServerConfig.FirstRetries]+1 times (2) and ends
//     without an ERROR: an unanswered 15-byte RRQ draws 1,032 bytes
//     (69×, tftpd-hpa 207×). An ERROR is never answered, and ERROR 5 to
//     strangers is rate-limited per transfer port and server-wide
//     ([ServerConfig.ErrorRate]); refusals are rate-limited per client,
//     so that one flood does not silence the refusals of others.
//   - Logs: file names and errors are cut short in log lines, and a
//     refusal is logged once per client per sweep (10 s); a wrapper such
//     as tftpd's summarises repeated records of one kind.
//
// Transfer sockets are not connected (connect(2) to the client), unlike
// tftpd-hpa's. A connected socket has the kernel drop strangers' packets,
// which is what stops tftpd-hpa's transfer ports from answering each
// other's forged ERRORs; here the rules above stop that exchange instead
// (an ERROR is never answered, an ERROR 5 is rate-limited), and they must
// exist anyway, for single-port mode, where every transfer shares the
// server port and no connect is possible. Unconnected sockets keep RFC
// 1350's ERROR 5 to a stranger (a client that lost track of its TID
// learns why), keep the transfer actor's socket the same in both modes
// (one code path, one set of tests), and spare an ICMP error from a
// spoofed victim's host from surfacing as ECONNREFUSED in the middle of a
// transfer. The cost is a wake-up per stranger's datagram, which is
// bounded by the rates above.
//
// # Client
//
// [Client] runs one transfer per call on a UDP socket of its own: it sends
// the request, pins the server's TID from the first answer, answers
// strangers with ERROR 5, checks the OACK against what it asked, and
// retransmits with back-off. With a window it reads a window of datagrams
// per system call (recvmmsg). Downloads are buffered and flushed before
// the last ACK.
//
// # Packets, options, netascii, files
//
// [PacketOpcode] tells the kind of a received packet; ParseX parses one
// kind and AppendX appends one to a buffer; DATA and ACK do not allocate.
// [Negotiate] is the server side of option negotiation, [ParseOACKReply]
// the client side. [NetasciiEncoder] and [NetasciiDecoder] convert one
// buffer at a time, so a sender fills every block exactly. [ErrorCodeOf]
// maps errors to ERROR codes.
//
// # Files
//
// A server asks its [Files] ([ServerConfig].FS) to open each request's
// file: OpenRead returns the content and its size (or an error, whose
// [ErrorCodeOf] is the ERROR the client gets; an [*Error] chooses code and
// message), OpenWrite an upload that commits atomically or aborts. The
// request ([FileRequest]) carries the name, the client's address, the mode
// and the options.
//
//   - [FS], the default (ServerConfig.Root), serves one directory tree
//     through [os.Root]: names that leave it, through ".." or symbolic
//     links, are refused; uploads go to a temporary file renamed into
//     place. Its files are read with preadv(2), a window per system call.
//   - [FromFS] serves any [fs.FS] read-only: an [embed.FS], an
//     [testing/fstest.MapFS], an [os.DirFS].
//   - [ReadFunc] serves content generated per request, from memory.
//   - ServerConfig.Rewrite maps names first: [Remap] reads tftpd-hpa's
//     remap rules (a Windows client's "boot\pxelinux.0" becomes
//     "boot/pxelinux.0"), [FS.ClientDir] gives each client a directory
//     of its own (dnsmasq's --tftp-unique-root), [ChainRewrite] combines
//     them.
//
// Content with ReadAt (an [*os.File], a [bytes.Reader]) can be read at
// any offset; other content is read once, in order. Netascii works with
// both. A replicated server (package tftp/cluster) serves an [FS] only
// (see [ErrNotReplicable]).
//
// # Replication
//
// [TransferState] is a transfer's identity and progress (client, TID,
// file, mode, negotiated options, last block acknowledged counting past
// 65535, file offset, netascii state) in a few dozen bytes, with
// MarshalBinary; [Server.Transfers] lists the live ones.
//
// # Cancellation
//
// [Client.Get] and [Client.Put] stop when their context ends, telling the
// server with an ERROR. [Server.Shutdown] stops taking requests and waits
// for the running transfers until its context ends, then cancels the rest;
// [Server.Close] cancels at once. Both release every socket and file.
//
// # Metrics and logs
//
// With [ServerConfig.Registerer] the server exports
// ioactor_tftp_transfers_total{op,result}, ioactor_tftp_bytes_total{op},
// ioactor_tftp_retransmits_total, ioactor_tftp_active_transfers,
// ioactor_tftp_transfer_duration_seconds{op},
// ioactor_tftp_stray_packets_total{kind},
// ioactor_tftp_requests_refused_total{reason} and
// ioactor_tftp_errors_suppressed_total, read from per-loop counters at
// scrape time. Logs carry the transfer's id as "xfer", and the file name
// quoted and cut to 64 bytes.
//
// # Concurrency
//
// The codec and negotiation functions are pure and may be called from any
// goroutine. A Server's and a Client's methods are safe from any
// goroutine; an [FS], the [Files] of this package and a [Remap] may be
// shared; encoders, decoders and uploads belong
// to one transfer.
//
// # Limitations
//
//   - Linux only, like netio.
//   - A server bound to a wildcard address answers from the address the
//     kernel's route picks, which on a multi-homed host may not be the one
//     the request went to (the udp package does not report a datagram's
//     destination address yet).
//   - The client does not linger after the last ACK of a download: if that
//     ACK is lost, the server retransmits into the void and records a
//     timeout, though the file arrived.
//   - tsize is not offered for netascii downloads (the size on the wire is
//     not the file's).
//   - The obsolete mail mode is refused with ERROR 4.
//   - [FS] inherits the limits of [os.Root]: it does not stop bind mounts,
//     hard links or device files placed inside the root.
package tftp
