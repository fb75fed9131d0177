package tftp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// Client fetches files from TFTP servers and sends files to them. The zero
// value is ready to use: octet mode, 512-byte blocks in lock-step, no
// options, a 1 s retransmission timeout and 5 retries.
//
// A Client must not be modified once in use; it may be used by several
// goroutines at once, each Get or Put being one transfer on a UDP socket of
// its own.
type Client struct {
	// BlockSize, when not zero, requests the blksize option (RFC 2348):
	// 8 to 65464 bytes per DATA packet. The server may answer with less.
	BlockSize int
	// WindowSize, when not zero, requests the windowsize option (RFC 7440):
	// blocks sent per ACK. The server may answer with less.
	WindowSize int
	// TSize sends the tsize option (RFC 2349): a download learns the size
	// of the file before it starts; an upload announces its size, when Put
	// is given one, so that the server can refuse a file too big.
	TSize bool
	// Timeout is how long to wait for an answer before sending again; zero
	// means 1 s. Each timeout in a row doubles the wait, up to 8 times.
	Timeout time.Duration
	// RequestTimeout sends Timeout, rounded up to whole seconds within
	// 1..255, as the timeout option (RFC 2349), asking the server to wait
	// as long.
	RequestTimeout bool
	// Retries is how many times one packet is sent again before the
	// transfer fails with [ErrTimeout]; zero means 5, negative means none.
	Retries int
	// Netascii transfers in netascii mode, converting line ends (LF locally,
	// CR LF on the wire); the default is octet, byte for byte.
	Netascii bool
	// Rollover is the block number the server uses after 65535. Uploads
	// use it too.
	Rollover Rollover
	// Progress, when not nil, is called after each block with the payload
	// bytes transferred so far and the transfer size (-1 when unknown), on
	// the goroutine running Get or Put.
	Progress func(done, total int64)
}

// Stats describes a transfer.
type Stats struct {
	// Bytes counts the file's bytes: written to the Writer of Get, read
	// from the Reader of Put.
	Bytes int64
	// Negotiated holds the transfer's parameters: the defaults, or what
	// the server acknowledged in an OACK.
	Negotiated Negotiated
	// Server is the server's transfer ID: the address and port it
	// answered from.
	Server netip.AddrPort
	// Retransmits counts the packets the client sent more than once.
	Retransmits uint64
	// Duration runs from the request to the last packet.
	Duration time.Duration
}

// Get downloads the file named file from server (host:port, or host for
// port 69) and writes it to w. It returns when the last block is stored,
// or with an error: an [*Error] when the server refused or ended the
// transfer, [ErrTimeout], the context's error, or w's error (the server is
// then sent an ERROR). Bytes written before an error stay written.
func (c *Client) Get(ctx context.Context, server, file string, w io.Writer) (Stats, error) {
	addr, err := resolveServer(ctx, server)
	if err != nil {
		return Stats{}, err
	}
	conn, err := listenUDP(ctx, addr)
	if err != nil {
		return Stats{}, fmt.Errorf("tftp: %w", err)
	}
	defer conn.close()
	return c.get(ctx, conn, addr, file, w)
}

// Put uploads the content of r as file to server. size, when not negative,
// is announced in the tsize option (with TSize set). Put returns once the
// server acknowledged the last block, or with an error as Get does.
func (c *Client) Put(ctx context.Context, server, file string, r io.Reader, size int64) (Stats, error) {
	addr, err := resolveServer(ctx, server)
	if err != nil {
		return Stats{}, err
	}
	conn, err := listenUDP(ctx, addr)
	if err != nil {
		return Stats{}, fmt.Errorf("tftp: %w", err)
	}
	defer conn.close()
	return c.put(ctx, conn, addr, file, r, size)
}

// resolveServer turns host[:port] into an address, port 69 by default.
func resolveServer(ctx context.Context, server string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(server); err == nil {
		return unmapAddrPort(ap), nil
	}
	host, port, err := net.SplitHostPort(server)
	if err != nil {
		host, port = server, "69"
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("tftp: bad port in %q", server)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a.Unmap(), uint16(p)), nil
	}
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("tftp: %w", err)
	}
	if len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("tftp: no address for %q", host)
	}
	// Prefer IPv4, as the port numbers of TFTP services usually are.
	best := addrs[0]
	for _, a := range addrs {
		if a.Unmap().Is4() {
			best = a
			break
		}
	}
	return netip.AddrPortFrom(best.Unmap(), uint16(p)), nil
}

func unmapAddrPort(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return time.Second
}

func (c *Client) retries() int {
	switch {
	case c.Retries < 0:
		return 0
	case c.Retries == 0:
		return 5
	}
	return c.Retries
}

func (c *Client) mode() string {
	if c.Netascii {
		return ModeNetascii
	}
	return ModeOctet
}

// options returns the options of a request; tsize is the value to send,
// or -1 for none.
func (c *Client) options(tsize int64) []Option {
	var opts []Option
	if c.BlockSize != 0 {
		opts = append(opts, Option{Name: OptBlockSize, Value: strconv.Itoa(c.BlockSize)})
	}
	if c.TSize && tsize >= 0 {
		opts = append(opts, Option{Name: OptTSize, Value: strconv.FormatInt(tsize, 10)})
	}
	if c.RequestTimeout {
		secs := min(max((c.timeout()+time.Second-1)/time.Second, 1), 255)
		opts = append(opts, Option{Name: OptTimeout, Value: strconv.Itoa(int(secs))})
	}
	if c.WindowSize != 0 {
		opts = append(opts, Option{Name: OptWindowSize, Value: strconv.Itoa(c.WindowSize)})
	}
	return opts
}

// clientWriteBuffer is the size of a download's write buffer.
const clientWriteBuffer = 256 << 10

// clientXfer is the state of one client transfer.
type clientXfer struct {
	c      *Client
	conn   packetConn
	ctx    context.Context
	server netip.AddrPort // where requests go
	tid    netip.AddrPort // the server's transfer ID, once it answered
	buf    []byte
	start  time.Time
	stats  Stats
	errBuf []byte
	snd    *sender      // the upload's, once started
	rcv    *receiver    // the download's, once started
	bytes  func() int64 // the file's bytes so far
}

func (c *Client) newXfer(ctx context.Context, conn packetConn, server netip.AddrPort) *clientXfer {
	return &clientXfer{
		c: c, conn: conn, ctx: ctx, server: server,
		buf: make([]byte, 4+MaxBlockSize+1), start: time.Now(),
	}
}

// request sends req until the server answers with a packet accept takes
// (firstAnswer), // and pins the server's transfer ID. It returns the answer, in x.buf.
func (x *clientXfer) request(req []byte, accept func(op Opcode, pkt []byte) bool) ([]byte, error) {
	r := fixedRTO(x.c.timeout())
	tries := 0
	if err := x.conn.writeTo(req, x.server); err != nil {
		return nil, fmt.Errorf("tftp: send request: %w", err)
	}
	deadline := time.Now().Add(r.wait())
	for {
		n, from, err := x.conn.readFrom(x.ctx, x.buf, deadline)
		switch {
		case errors.Is(err, errReadTimeout):
			tries++
			if tries > x.c.retries() {
				return nil, fmt.Errorf("%w: no answer from %v after %d requests", ErrTimeout, x.server, tries)
			}
			x.stats.Retransmits++
			r.expired()
			if err := x.conn.writeTo(req, x.server); err != nil {
				return nil, fmt.Errorf("tftp: send request: %w", err)
			}
			deadline = time.Now().Add(r.wait())
			continue
		case err != nil:
			return nil, err
		}
		if from.Addr() != x.server.Addr() {
			continue // not from the server's host
		}
		pkt := x.buf[:n]
		op, err := PacketOpcode(pkt)
		if err != nil || !accept(op, pkt) {
			continue
		}
		x.tid = from
		x.stats.Server = from
		return pkt, nil
	}
}

// firstAnswer accepts the answers to a request: an OACK, an ERROR, or the
// transfer's first packet without options (op with wire block number
// block: DATA 1 to an RRQ, ACK 0 to a WRQ). Any other DATA or ACK is
// stray: a single-port server answers every transfer from one port, and a
// packet of an earlier transfer to the same client port (the kernel gives
// a closed socket's port to a new one, which a client with hundreds of
// sockets hits) would otherwise be taken for the answer, and the transfer
// would go on without its options.
func firstAnswer(op Opcode, block uint16) func(Opcode, []byte) bool {
	return func(got Opcode, pkt []byte) bool {
		switch got {
		case OpOACK, OpERROR:
			return true
		case op:
			return len(pkt) >= 4 && uint16(pkt[2])<<8|uint16(pkt[3]) == block
		}
		return false
	}
}

// sendError sends an ERROR packet to the server's transfer ID (best
// effort) and returns err.
// reply interprets the server's first answer to a request: an ERROR ends
// the transfer, an OACK is checked against the options asked for (a bad
// one is answered with ERROR 8); anything else keeps the defaults.
func (x *clientXfer) reply(reqOpts []Option, pkt []byte) (Negotiated, error) {
	neg := defaultNegotiated()
	switch op, _ := PacketOpcode(pkt); op {
	case OpERROR:
		return neg, peerError(pkt)
	case OpOACK:
		opts, err := ParseOACK(pkt)
		if err == nil {
			neg, err = ParseOACKReply(reqOpts, opts)
		}
		if err != nil {
			return neg, x.sendError(fmt.Errorf("%w: %w", ErrBadOACK, err))
		}
	}
	return neg, nil
}

func (x *clientXfer) sendError(err error) error {
	if x.tid.IsValid() {
		code := ErrorCodeOf(err)
		msg := err.Error()
		var te *Error
		if errors.As(err, &te) {
			msg = te.Message
		}
		if len(msg) > 200 {
			msg = msg[:200]
		}
		x.conn.writeTo(AppendError(x.errBuf[:0], code, msg), x.tid)
	}
	return err
}

// foreign answers a datagram from another address than the server's
// transfer ID with ERROR 5 (RFC 1350), without disturbing the transfer.
func (x *clientXfer) foreign(from netip.AddrPort) {
	x.errBuf = AppendError(x.errBuf[:0], ErrUnknownTID, "unknown transfer ID")
	x.conn.writeTo(x.errBuf, from)
}

// peerError turns an ERROR packet from the server into an *Error.
func peerError(pkt []byte) error {
	code, msg, err := ParseError(pkt)
	if err != nil {
		return err
	}
	return &Error{Code: code, Message: msg}
}

// cancelled sends the server an ERROR for a transfer this side gives up,
// so that it can clean up at once, and returns err.
func (x *clientXfer) cancelled(err error) error {
	if x.tid.IsValid() {
		x.errBuf = AppendError(x.errBuf[:0], ErrUndefined, "transfer cancelled")
		x.conn.writeTo(x.errBuf, x.tid)
	}
	return err
}

func (x *clientXfer) finish(err error) (Stats, error) {
	x.stats.Duration = time.Since(x.start)
	if x.bytes != nil {
		x.stats.Bytes = x.bytes()
	}
	if x.snd != nil {
		x.stats.Retransmits += x.snd.retransmits
	}
	if x.rcv != nil {
		x.stats.Retransmits += x.rcv.resends
	}
	return x.stats, err
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (cw *countWriter) Write(p []byte) (int, error) {
	n, err := cw.w.Write(p)
	cw.n += int64(n)
	return n, err
}

func (c *Client) get(ctx context.Context, conn packetConn, server netip.AddrPort, file string, w io.Writer) (Stats, error) {
	x := c.newXfer(ctx, conn, server)
	reqOpts := c.options(0)
	req := AppendRequest(nil, Request{Op: OpRRQ, Filename: file, Mode: c.mode(), Options: reqOpts})
	pkt, err := x.request(req, firstAnswer(OpDATA, 1))
	if err != nil {
		return x.finish(err)
	}
	neg, err := x.reply(reqOpts, pkt)
	if err != nil {
		return x.finish(err)
	}
	x.stats.Negotiated = neg
	total := int64(-1)
	if neg.TSize >= 0 {
		total = neg.TSize
	}
	cw := &countWriter{w: w}
	// Buffer the writes: a window of small blocks would cost a system
	// call each. Everything is flushed before the last ACK, and on error.
	bw := bufio.NewWriterSize(cw, clientWriteBuffer)
	defer bw.Flush()
	var out io.Writer = bw
	var nw io.WriteCloser
	if c.Netascii {
		nw = NewNetasciiWriter(bw)
		out = nw
	}
	r := newReceiver(receiverConfig{
		blockSize: neg.BlockSize, window: neg.WindowSize, roll: c.Rollover,
		rto: fixedRTO(c.timeout()), maxRetries: c.retries(),
	})
	x.rcv = r
	x.bytes = func() int64 { bw.Flush(); return cw.n }
	// One byte more than a block: a longer DATA shows as too long.
	x.conn.batch(neg.WindowSize, 4+neg.BlockSize+1)
	if op, _ := PacketOpcode(pkt); op == OpOACK {
		r.ackFirst()
		pkt = nil
	}
	for {
		if pkt != nil {
			done, err := x.getPacket(r, pkt, out, total)
			if err != nil {
				return x.finish(err)
			}
			if done {
				if nw != nil {
					if err := nw.Close(); err != nil {
						return x.finish(x.sendError(err))
					}
				}
				if err := bw.Flush(); err != nil {
					return x.finish(x.sendError(fmt.Errorf("tftp: write: %w", err)))
				}
				if ack := r.emit(time.Now()); ack != nil {
					x.conn.writeTo(ack, x.tid)
				}
				return x.finish(nil)
			}
		}
		if ack := r.emit(time.Now()); ack != nil {
			if err := x.conn.writeTo(ack, x.tid); err != nil {
				return x.finish(fmt.Errorf("tftp: %w", err))
			}
		}
		pkt = nil
		n, from, err := x.conn.readFrom(ctx, x.buf, r.nextDeadline())
		switch {
		case errors.Is(err, errReadTimeout):
			if r.timeout(time.Now()) == evFailed {
				return x.finish(x.cancelled(r.err))
			}
			continue
		case err != nil:
			return x.finish(x.cancelled(err))
		}
		if from != x.tid {
			x.foreign(from)
			continue
		}
		pkt = x.buf[:n]
	}
}

// getPacket handles one packet from the server during a download.
func (x *clientXfer) getPacket(r *receiver, pkt []byte, out io.Writer, total int64) (done bool, err error) {
	op, err := PacketOpcode(pkt)
	if err != nil {
		return false, nil
	}
	switch op {
	case OpERROR:
		return false, peerError(pkt)
	case OpOACK:
		if r.next == 1 {
			r.ackFirst() // our ACK 0 was lost
		}
		return false, nil
	case OpDATA:
	default:
		return false, nil
	}
	block, payload, err := ParseData(pkt)
	if err != nil {
		return false, nil
	}
	switch r.data(time.Now(), block, len(payload)) {
	case recvFailed:
		return false, x.sendError(r.err)
	case recvIgnore:
		return false, nil
	case recvLast:
		done = true
	}
	if _, err := out.Write(payload); err != nil {
		return false, x.sendError(fmt.Errorf("tftp: write: %w", err))
	}
	if p := x.c.Progress; p != nil {
		p(r.received, total)
	}
	return done, nil
}

func (c *Client) put(ctx context.Context, conn packetConn, server netip.AddrPort, file string, rd io.Reader, size int64) (Stats, error) {
	x := c.newXfer(ctx, conn, server)
	reqOpts := c.options(size)
	req := AppendRequest(nil, Request{Op: OpWRQ, Filename: file, Mode: c.mode(), Options: reqOpts})
	pkt, err := x.request(req, firstAnswer(OpACK, 0))
	if err != nil {
		return x.finish(err)
	}
	neg, err := x.reply(reqOpts, pkt)
	if err != nil {
		return x.finish(err)
	}
	if op, _ := PacketOpcode(pkt); op == OpACK {
		if b, err := ParseAck(pkt); err != nil || b != 0 {
			return x.finish(x.sendError(&Error{Code: ErrIllegalOperation, Message: "expected ACK 0"}))
		}
	}
	x.stats.Negotiated = neg
	// counted counts the Reader's bytes; for netascii, src reads the
	// converted ones.
	counted := &countReader{r: rd}
	src := &readerSource{r: counted}
	total := size
	if c.Netascii {
		src.r = NewNetasciiReader(counted)
		total = -1
	}
	s := newSender(senderConfig{
		blockSize: neg.BlockSize, window: neg.WindowSize, roll: c.Rollover, src: src,
		first: 1, rto: fixedRTO(c.timeout()), maxRetries: c.retries(),
	})
	x.snd = s
	x.bytes = func() int64 { return counted.n }
	for {
		for _, p := range s.emit(time.Now()) {
			if err := x.conn.writeTo(p, x.tid); err != nil {
				return x.finish(x.cancelled(fmt.Errorf("tftp: %w", err)))
			}
		}
		if s.phase == phaseFailed {
			if errors.Is(s.err, ErrTimeout) {
				return x.finish(x.cancelled(s.err))
			}
			return x.finish(x.sendError(s.err))
		}
		n, from, err := x.conn.readFrom(ctx, x.buf, s.nextDeadline())
		switch {
		case errors.Is(err, errReadTimeout):
			s.timeout(time.Now())
			continue
		case err != nil:
			return x.finish(x.cancelled(err))
		}
		if from != x.tid {
			x.foreign(from)
			continue
		}
		pkt := x.buf[:n]
		op, err := PacketOpcode(pkt)
		if err != nil {
			continue
		}
		switch op {
		case OpERROR:
			return x.finish(peerError(pkt))
		case OpACK:
			block, err := ParseAck(pkt)
			if err != nil {
				continue
			}
			ev := s.ack(time.Now(), block)
			if ev == evProgress || ev == evDone {
				if p := c.Progress; p != nil {
					p(s.acked, total)
				}
			}
			if ev == evDone {
				return x.finish(nil)
			}
		}
	}
}

// countReader counts the bytes read through it.
type countReader struct {
	r io.Reader
	n int64
}

func (cr *countReader) Read(p []byte) (int, error) {
	n, err := cr.r.Read(p)
	cr.n += int64(n)
	return n, err
}
