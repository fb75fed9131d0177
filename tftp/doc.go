// Package tftp implements the Trivial File Transfer Protocol: a packet
// codec, option negotiation, netascii conversion and a sandboxed file
// tree, the parts of a TFTP server and client that need no socket.
//
// It covers RFC 1350 (the protocol), RFC 2347 (option extension),
// RFC 2348 (blksize), RFC 2349 (timeout and tsize) and RFC 7440
// (windowsize).
//
// # Packets
//
// [PacketOpcode] tells the kind of a received packet; ParseX parses one
// kind and AppendX appends one to a buffer. The DATA and ACK functions,
// which carry every block of a transfer, do not allocate: [ParseData]
// returns a payload that aliases the packet, and [AppendData] and
// [AppendAck] write into the caller's buffer.
//
//	buf := make([]byte, 0, 4+tftp.MaxBlockSize)
//	pkt := tftp.AppendData(buf, 1, payload)
//	block, data, err := tftp.ParseData(pkt)
//
// Parse errors wrap [ErrMalformed] or [ErrUnknownOpcode]. A received ERROR
// packet becomes an [*Error], which [errors.As] finds.
//
// # Options
//
// [Negotiate] is the server side of option negotiation: it turns the
// options of a request into transfer parameters and the options to echo in
// an OACK, within [Limits]. [ParseOACKReply] is the client side: it checks
// a server's OACK against the request.
//
// # Netascii
//
// [NetasciiEncoder] and [NetasciiDecoder] convert between local text and
// netascii one buffer at a time, so that a sender can fill every DATA
// block exactly. Their state is a small plain value that can be
// checkpointed between blocks. [NewNetasciiReader] and [NewNetasciiWriter]
// wrap them as streams.
//
// # File system
//
// [FS] serves one directory tree through [os.Root]: names that leave it,
// through ".." or symbolic links, are refused, and uploads are written to
// a temporary file that [Upload.Commit] moves into place. [ErrorCodeOf]
// maps the errors of this package and of the file system to the codes of
// ERROR packets.
//
// # Concurrency
//
// The codec and negotiation functions are pure and may be called from any
// goroutine. An [FS] may be shared; encoders, decoders and uploads belong
// to one transfer and must not be used concurrently.
//
// # Limitations
//
// The obsolete mail mode is parsed, so that a server can refuse it with a
// proper error, but nothing else supports it. [FS] inherits the limits of
// [os.Root]: it does not stop bind mounts, hard links or device files
// placed inside the root.
package tftp
