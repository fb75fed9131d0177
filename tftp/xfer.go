package tftp

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"golang.org/x/time/rate"
)

// xferState is where a server transfer stands. Each event of a transfer is
// one method of xfer (start, resume, begun, packet, timer, sent,
// sendFailed, writable, committed, requestAgain, cancel) that acts by the
// state, and the replication hooks run at the transitions (xfer.to) and
// at the checkpoints of running (xfer.checkpoint), not in the sending
// code. The diagram is also at the top of the package doc.
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
type xferState uint8

const (
	stateNew        xferState = iota // not started: its driver gets ready (binds its socket)
	stateBeginning                   // the Replicator records it; nothing is sent yet
	stateRunning                     // the sender or the receiver runs
	stateCommitting                  // an upload's data is complete; the file is being published
	stateDallying                    // an upload is complete; its last ACK is repeated if asked
	stateFinished                    // ended: the file is released, no event follows
)

var stateNames = [...]string{"new", "beginning", "running", "committing", "dallying", "finished"}

func (s xferState) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return fmt.Sprintf("xferState(%d)", s)
}

// effects is what the events of an xfer ask of its driver, the transfer
// actor (transfer.apply), which carries them out after each event and
// clears them. The answers come back as events: sent or sendFailed for a
// send, writable for resume, timer, begun, committed.
type effects struct {
	// send is the datagrams to the client. At most one send is in flight:
	// the xfer asks for the next once it got sent (or sendFailed).
	send [][]byte
	// errs are ERROR packets, each in a buffer of its own.
	errs []errorPacket
	// resume asks for writable once the socket takes datagrams again,
	// after a sendFailed with errWouldBlock.
	resume bool
	// wake asks for a call of timer at or after it (zero: no change). A
	// call earlier than needed is harmless; the transfer asks again.
	wake time.Time
	// begin asks to run Replicator.Begin(x.transferState()) away from the
	// event loop, then begun (Server.begin).
	begin *beginCall
	// commit asks to publish the upload away from the event loop (it
	// syncs to disk, or replicates), then committed.
	commit WriteFile
	// dallying tells that the transfer is complete and only lingers.
	dallying bool
	// aborted tells that the client ended the transfer with an ERROR
	// before it answered anything: the UEFI firmware probe (OACK, ERROR 8,
	// the same request again), whose repeated request then starts.
	aborted bool
	// done tells that the transfer finished: no event follows.
	done bool
}

// errorPacket is an ERROR packet and its destination.
type errorPacket struct {
	to  netip.AddrPort
	pkt []byte
}

// errWouldBlock is what a driver passes to sendFailed when the socket's
// send buffer was full.
var errWouldBlock = errors.New("tftp: send buffer full")

// Results of transfers, the closed set of the result label.
const (
	resultOK        = "ok"
	resultRefused   = "refused"    // the server refused the request
	resultPeerError = "peer_error" // the client sent an ERROR
	resultTimeout   = "timeout"    // retries exhausted
	resultDeadline  = "deadline"   // TransferDeadline passed
	resultError     = "error"      // a local failure or a protocol violation
	resultCancelled = "cancelled"  // shutdown, or superseded by a new request
)

var results = [...]string{resultOK, resultRefused, resultPeerError, resultTimeout, resultDeadline, resultError, resultCancelled}

func resultIndex(r string) int {
	for i, s := range results {
		if s == r {
			return i
		}
	}
	return len(results) - 1
}

// xfer is one server transfer: the request, the negotiated parameters, the
// file, and the sender (RRQ) or receiver (WRQ) state machine, as a pure
// state machine: events go in, with the time, and what they ask for comes
// out in out. It runs on one event loop; no method may be called
// concurrently.
type xfer struct {
	srv   *Server
	id    uint64
	log   *slog.Logger
	shard *shard
	state xferState
	out   effects

	req    Request
	client netip.AddrPort
	local  netip.AddrPort // the TID replies come from

	neg  Negotiated
	oack []byte
	snd  *sender
	rcv  *receiver

	file io.Reader // the download's content
	size int64
	up   WriteFile
	dec  NetasciiDecoder
	dbuf []byte // netascii decoding scratch
	// bytes is the payload reported to the metrics so far.
	bytes int64
	dally time.Duration

	// sending: a send is in flight (out.send was taken, sent not yet
	// called). Not a state of the transfer: of its socket's flow control.
	sending bool
	result  string    // the result, once recorded (complete)
	started time.Time // when start or resume ran: zero while new
	one     [1][]byte

	heard       time.Time     // when the client was last heard from
	strangerLim *rate.Limiter // ERROR 5 to strangers; made on first use
	extraSends  int           // first packets resent for a repeated request

	// begin is the transfer's Replicator.Begin call (stateBeginning and
	// after): an End waits for it (beginCall).
	begin *beginCall

	ckpt      uint64    // the block of the last checkpoint given to the replicator
	ckptAt    time.Time // and when
	heldSince time.Time // when the current hold began (held)
}

func (s *Server) newXfer(req Request, client netip.AddrPort, sh *shard) *xfer {
	id := s.ids.Add(1)
	return &xfer{
		srv: s, id: id, req: req, client: client, shard: sh,
		log: s.log.With("xfer", id, "client", client.String(), "op", req.Op.String(), "file", logName(req.Filename), "mode", req.Mode),
	}
}

// opIndex is 0 for reads, 1 for writes, for the op label.
func (x *xfer) opIndex() int {
	if x.req.Op == OpWRQ {
		return 1
	}
	return 0
}

// to moves the transfer to state s. The replication hooks run here: Begin
// and the upload's commit by the driver, away from the loop; End when the
// transfer finishes, unless the server cancelled it (another server may
// resume it), and then, for a running download, a last Progress with its
// exact position.
func (x *xfer) to(s xferState) {
	prev := x.state
	x.state = s
	switch s {
	case stateBeginning:
		x.begin = &beginCall{}
		x.out.begin = x.begin
	case stateCommitting:
		x.out.commit, x.up = x.up, nil
	case stateDallying:
		x.out.dallying = true
	case stateFinished:
		rep := x.srv.cfg.Replicator
		switch {
		case rep == nil || x.started.IsZero():
		case x.result != resultCancelled:
			if st := x.transferState(); !x.begin.deferEnd(st) {
				rep.End(st)
			}
		case prev == stateRunning && x.snd != nil:
			// The server that takes over finds its client at most one
			// block further.
			if b, _ := x.snd.checkpoint(); b > x.ckpt {
				x.ckpt = b
				rep.Progress(x.transferState())
			}
		}
	}
}

// start checks the request, opens the file and sends the first packet
// (OACK, DATA 1, or ACK 0), or refuses with an ERROR. local is the TID.
func (x *xfer) start(now time.Time, local netip.AddrPort) {
	if x.state != stateNew {
		return
	}
	x.started, x.heard = now, now
	x.local = local
	x.shard.active.Add(1)
	x.log.Debug("tftp: request", "options", logOptions(x.req.Options))
	if x.req.Mode == ModeMail {
		x.refuse(&Error{Code: ErrIllegalOperation, Message: "mail mode is not supported"})
		return
	}
	var err error
	if x.req.Op == OpRRQ {
		err = x.startRead(now)
	} else {
		err = x.startWrite(now)
	}
	if err != nil {
		x.refuse(err)
		return
	}
	if x.srv.cfg.Replicator != nil {
		// Nothing leaves before the transfer's identity is recorded.
		x.to(stateBeginning)
		return
	}
	x.to(stateRunning)
	x.flush(now)
}

// begun handles the replicator's answer to Begin.
func (x *xfer) begun(now time.Time, err error) {
	if x.state != stateBeginning {
		return
	}
	switch {
	case errors.Is(err, ErrStandby):
		// Nothing was sent: the client asks again, of the next server.
		x.end(resultCancelled, fmt.Errorf("tftp: the transfer could not be recorded: %w", err))
		return
	case err != nil:
		x.refuse(fmt.Errorf("tftp: the transfer could not be recorded: %w", err))
		return
	}
	x.to(stateRunning)
	x.flush(now)
}

// resume continues a download another server started, from st.
func (x *xfer) resume(now time.Time, local netip.AddrPort, st TransferState) {
	if x.state != stateNew {
		return
	}
	x.id = st.ID // the same transfer: its checkpoints update its record
	x.log = x.srv.log.With("xfer", x.id, "client", x.client.String(), "op", x.req.Op.String(), "file", logName(x.req.Filename), "mode", x.req.Mode)
	x.started, x.heard = now, now
	x.local = local
	x.shard.active.Add(1)
	f, size, err := x.reopen(st)
	if err == nil && size != st.Size {
		closeContent(f)
		err = &Error{Code: ErrUndefined, Message: "the file changed during the transfer"}
	}
	if err != nil {
		x.fail(err)
		return
	}
	x.file, x.size, x.neg = f, size, st.Negotiated
	x.ckpt = st.Block
	octet := st.Mode != ModeNetascii
	src, err := contentSource(f, !octet, sourcePos{Offset: st.Offset, Enc: NetasciiEncoder{owed: owedByte(st.Netascii)}})
	if err != nil {
		x.fail(err)
		return
	}
	var oack []byte
	if st.Block == 0 {
		// The client may not have the OACK yet, or be past it: the
		// transfer waits for it to say which (sender.quiet).
		oack = st.Options
		x.oack = oack
	}
	r, _ := x.timing()
	// The checkpoint may be behind the client. A lock-step download
	// probes for the client's block one block at a time (see probe);
	// otherwise the first window is wider: the blocks after the checkpoint
	// at once (a client ignores those it has and acknowledges the one it
	// waits for), then back to the negotiated window.
	lockStep := oack == nil && x.neg.WindowSize == 1
	window := x.neg.WindowSize
	if !lockStep {
		window = max(window, min(128, max(1, (96<<10)/x.neg.BlockSize)))
	}
	x.snd = newSender(senderConfig{
		blockSize: x.neg.BlockSize, window: window, roll: st.Rollover, src: src,
		oack: oack, first: st.Block + 1, rto: r, maxRetries: x.srv.cfg.Retries, expires: x.expires(now),
		prefetch: true,
	})
	x.snd.resumed = true
	x.snd.quiet = oack != nil
	x.snd.heard = true // the client answered the server it started with
	x.snd.restoreWindow = x.neg.WindowSize
	if octet {
		// Known in advance: no ACK beyond it moves the transfer. Netascii
		// finds its last block by converting.
		x.snd.lastBlock = uint64(size/int64(x.neg.BlockSize)) + 1
	}
	if lockStep {
		x.snd.startProbe(probeSpan)
	}
	x.log.Info("tftp: resuming transfer", "block", st.Block, "offset", st.Offset, "window", window, "probe", lockStep)
	x.to(stateRunning)
	x.flush(now)
}

// probeFound reports what a resumed download's probe found.
func (x *xfer) probeFound() {
	at := x.snd.base - 1
	if x.snd.phase == phaseDone {
		at = x.snd.lastBlock
	}
	x.srv.m.resumeLag.Observe(float64(at - x.ckpt))
	x.log.Info("tftp: resumed transfer found its client", "block", at, "ahead_of_checkpoint", at-x.ckpt, "probes", x.snd.probes)
}

// held reports that the download must not send now: its replication
// stalled (Replicator.Stalled). It holds where another server would resume
// it, with its timers (retransmission, probe) frozen, and looks again
// shortly. A hold ends at the transfer's deadline, and after holdMax: a
// node whose replication is wedged while it stays the leader serves on
// without it rather than hold its clients forever.
func (x *xfer) held(now time.Time) bool {
	if x.snd == nil || x.srv.cfg.Replicator == nil || x.snd.expired(now) || !x.srv.cfg.Replicator.Stalled(now) {
		x.heldSince = time.Time{}
		return false
	}
	if x.heldSince.IsZero() {
		x.heldSince = now
	} else if now.Sub(x.heldSince) > holdMax {
		return false
	}
	x.wakeAt(now.Add(holdRecheck))
	return true
}

// holdRecheck is how often a download held by a stalled Replicator looks
// whether it may go on; holdMax how long one hold lasts at most.
const (
	holdRecheck = 2 * time.Millisecond
	holdMax     = time.Second
)

// probeSpan bounds how far past its checkpoint a resumed download looks
// for its client: far below the 32768 blocks that keep the rollover epoch
// unambiguous.
const probeSpan = 8192

// checkpointPerTransfer is how much a loop's checkpoint interval grows
// per live transfer on it: however many transfers run, they checkpoint
// about 1,000 times a second together (200 transfers every 200 ms, not
// 10,000 times a second every 20 ms). A resumed lock-step download finds
// its client by probing from the checkpoint (up to probeSpan blocks), so
// a longer interval costs a longer probe after a failover, not safety;
// checkpointMaxBlocks still bounds the blocks between two checkpoints.
const (
	checkpointPerTransfer = time.Millisecond
	checkpointMaxInterval = time.Second
)

// checkpointEvery is the checkpoint interval of a transfer on a loop with
// active live transfers: CheckpointInterval, or longer with many
// transfers (checkpointPerTransfer each, at most checkpointMaxInterval).
func checkpointEvery(interval time.Duration, active int64) time.Duration {
	if active <= 0 {
		return interval
	}
	return max(interval, min(time.Duration(active)*checkpointPerTransfer, checkpointMaxInterval))
}

// checkpoint tells the replicator how far the transfer got, every
// checkpointEvery (and every checkpointMaxBlocks blocks).
func (x *xfer) checkpoint(now time.Time) {
	rep := x.srv.cfg.Replicator
	if rep == nil || x.state != stateRunning {
		return
	}
	var b uint64
	switch {
	case x.snd != nil:
		b, _ = x.snd.checkpoint()
	case x.rcv != nil:
		b = x.rcv.checkpoint()
	}
	every := checkpointEvery(x.srv.cfg.CheckpointInterval, x.shard.active.Load())
	if b > x.ckpt && (now.Sub(x.ckptAt) >= every || b >= x.ckpt+checkpointMaxBlocks) {
		x.ckpt, x.ckptAt = b, now
		rep.Progress(x.transferState())
	}
}

func (x *xfer) limits() Limits {
	lim := x.srv.limits
	if x.srv.cfg.ClampBlockSize {
		if m := pathBlockSize(x.local, x.client); m > 0 {
			cur := lim.maxBlockSize()
			if cur < 0 || m < cur {
				lim.MaxBlockSize = max(m, MinBlockSize)
			}
		}
	}
	return lim
}

func (x *xfer) timing() (r rto, dally time.Duration) {
	cfg := &x.srv.cfg
	if x.neg.Timeout > 0 {
		r = fixedRTO(x.neg.Timeout)
	} else if cfg.MinTimeout < 0 {
		r = fixedRTO(cfg.Timeout)
	} else {
		r = adaptiveRTO(cfg.Timeout, cfg.MinTimeout, cfg.Timeout)
	}
	return r, max(6*time.Second, 2*x.neg.Timeout, 2*cfg.Timeout)
}

func (x *xfer) expires(now time.Time) time.Time {
	if d := x.srv.cfg.TransferDeadline; d > 0 {
		return now.Add(d)
	}
	return time.Time{}
}

func (x *xfer) startRead(now time.Time) error {
	f, size, err := x.openRead()
	if err != nil {
		return err
	}
	x.file, x.size = f, size
	tsize := size
	if x.req.Mode == ModeNetascii {
		tsize = -1 // the size on the wire is not the file's
	}
	x.neg, x.oack = x.negotiate(OpRRQ, tsize)
	if x.srv.cfg.Rollover == RolloverRefuse && size/int64(x.neg.BlockSize) >= maxBlocksNoRollover {
		return errTooManyBlocks
	}
	src, err := contentSource(f, x.req.Mode == ModeNetascii, sourcePos{})
	if err != nil {
		return err
	}
	r, _ := x.timing()
	x.snd = newSender(senderConfig{
		blockSize: x.neg.BlockSize, window: x.neg.WindowSize, roll: x.srv.cfg.Rollover, src: src,
		oack: x.oack, first: 1, rto: r, maxRetries: x.srv.cfg.Retries, expires: x.expires(now),
		firstRetries: x.srv.cfg.FirstRetries, limitFirst: true,
		prefetch: x.neg.WindowSize*(4+x.neg.BlockSize) <= 2*prefetchMax,
	})
	return nil
}

func (x *xfer) negotiate(op Opcode, tsize int64) (Negotiated, []byte) {
	n, opts := Negotiate(op, x.req.Options, x.limits(), tsize)
	if opts == nil {
		return n, nil
	}
	return n, AppendOACK(nil, opts)
}

func (x *xfer) startWrite(now time.Time) error {
	x.neg, x.oack = x.negotiate(OpWRQ, -1)
	if max := x.srv.cfg.MaxUploadSize; max > 0 && x.neg.TSize > max {
		return &Error{Code: ErrDiskFull, Message: fmt.Sprintf("file too large: the limit is %d bytes", max)}
	}
	up, err := x.openWrite()
	if err != nil {
		return err
	}
	x.up = up
	if x.req.Mode == ModeNetascii {
		x.dbuf = make([]byte, x.neg.BlockSize)
	}
	r, dally := x.timing()
	x.dally = dally
	x.rcv = newReceiver(receiverConfig{
		blockSize: x.neg.BlockSize, window: x.neg.WindowSize, roll: x.srv.cfg.Rollover,
		first: x.oack, next: 1, rto: r, maxRetries: x.srv.cfg.Retries, expires: x.expires(now), dally: dally,
		firstRetries: x.srv.cfg.FirstRetries, limitFirst: true,
	})
	x.rcv.ackFirst()
	return nil
}

// wakeAt asks for a call of timer at or before at (the earliest of the
// event's asks).
func (x *xfer) wakeAt(at time.Time) {
	if !at.IsZero() && (x.out.wake.IsZero() || at.Before(x.out.wake)) {
		x.out.wake = at
	}
}

// flush asks to send what the state machine has ready, unless a send is in
// flight, and for the timer.
func (x *xfer) flush(now time.Time) {
	if x.state != stateRunning && x.state != stateDallying {
		return
	}
	if x.held(now) {
		return
	}
	if !x.sending {
		var dgs [][]byte
		switch {
		case x.snd != nil:
			dgs = x.snd.emit(now)
			if x.snd.phase == phaseFailed {
				x.fail(x.snd.err)
				return
			}
		case x.rcv != nil:
			if pkt := x.rcv.emit(now); pkt != nil {
				x.one[0] = pkt
				dgs = x.one[:]
			}
		}
		if dgs != nil {
			x.sending = true
			x.out.send = dgs
		}
	}
	x.wakeAt(x.deadline())
}

func (x *xfer) deadline() time.Time {
	var d time.Time
	if x.snd != nil {
		d = x.snd.nextDeadline()
	} else {
		d = x.rcv.nextDeadline()
	}
	if s := x.silentAt(); !s.IsZero() && (d.IsZero() || s.Before(d)) {
		d = s
	}
	return d
}

// silentAt returns when the transfer is abandoned if the client stays
// silent (ServerConfig.SilenceLimit), or zero.
func (x *xfer) silentAt() time.Time {
	lim := x.srv.cfg.SilenceLimit
	if lim <= 0 || x.state != stateRunning || x.heard.IsZero() {
		return time.Time{}
	}
	return x.heard.Add(lim)
}

// errSilent ends a transfer whose client fell silent for SilenceLimit.
var errSilent = fmt.Errorf("%w: no packet from the client within the silence limit", ErrTimeout)

// requestAgain handles the client's request again while it has not
// answered the first packet: the first packet was lost, so it goes again
// at once, and the FirstRetries start over, at most Retries times. Each
// costs the sender a request: a forged one still draws at most
// FirstRetries+1 packets.
func (x *xfer) requestAgain(now time.Time) {
	if x.state != stateRunning || x.extraSends >= x.srv.cfg.Retries {
		return
	}
	switch {
	case x.snd != nil && !x.snd.heard && x.snd.phase == phaseRunning:
		x.snd.pending, x.snd.retries = true, 0
	case x.rcv != nil && !x.rcv.heard && x.rcv.phase == phaseRunning:
		x.rcv.pending, x.rcv.retries = true, 0
	default:
		return
	}
	x.extraSends++
	x.flush(now)
}

// heardClient reports whether the client answered: it uses our TID.
func (x *xfer) heardClient() bool {
	return x.snd != nil && x.snd.heard || x.rcv != nil && x.rcv.heard
}

// stranger answers a datagram from another address than the client's
// (RFC 1350: an ERROR 5, and the transfer goes on), within the limits:
// never an ERROR for an ERROR (two transfer ports, or a port and a forged
// source, would answer each other without end), and few per second.
func (x *xfer) stranger(now time.Time, from netip.AddrPort, b []byte) {
	x.shard.foreign.Add(1)
	if op, err := PacketOpcode(b); err == nil && op == OpERROR {
		return
	}
	if x.strangerLim == nil {
		x.strangerLim = rate.NewLimiter(strangerRate, strangerErrors)
	}
	if !x.srv.allowError(now, x.strangerLim) {
		x.shard.errorsSuppressed.Add(1)
		return
	}
	x.out.errs = append(x.out.errs, errorPacket{to: from, pkt: AppendError(nil, ErrUnknownTID, "unknown transfer ID")})
}

// packet handles a datagram sent to the transfer's TID.
func (x *xfer) packet(now time.Time, from netip.AddrPort, b []byte) {
	if x.state == stateNew || x.state == stateFinished {
		return
	}
	if from != x.client {
		x.stranger(now, from, b)
		return
	}
	op, err := PacketOpcode(b)
	if err != nil {
		x.shard.ignored.Add(1)
		return
	}
	switch op {
	case OpERROR:
		x.peerError(b)
	case OpACK:
		x.ack(now, b)
	case OpDATA:
		x.data(now, b)
	case OpRRQ, OpWRQ:
		// The client's request again, sent to our TID: it missed our
		// first packet (a NAT, or a proxy, that learnt our port).
		x.requestAgain(now)
	default:
		x.shard.ignored.Add(1)
	}
}

// peerError handles the client's ERROR: the transfer ends.
func (x *xfer) peerError(b []byte) {
	code, msg, _ := ParseError(b)
	x.log.Debug("tftp: the client ended the transfer", "code", code, "message", msg)
	x.out.aborted = !x.heardClient()
	if x.state == stateDallying {
		x.finish()
		return
	}
	x.end(resultPeerError, &Error{Code: code, Message: msg})
}

// ack handles the client's ACK of a download.
func (x *xfer) ack(now time.Time, b []byte) {
	block, err := ParseAck(b)
	if err != nil || x.snd == nil {
		x.shard.ignored.Add(1)
		return
	}
	x.heard = now
	if x.state != stateRunning {
		return // nothing was sent yet
	}
	probing := x.snd.probe != nil
	ev := x.snd.ack(now, block)
	if probing && x.snd.probe == nil {
		x.probeFound()
	}
	switch ev {
	case evDone:
		x.reportBytes(x.snd.acked)
		x.end(resultOK, nil)
		return
	case evFailed:
		x.fail(x.snd.err)
		return
	case evProgress:
		x.reportBytes(x.snd.acked)
		x.checkpoint(now)
	}
	x.flush(now)
}

// data handles the client's DATA of an upload.
func (x *xfer) data(now time.Time, b []byte) {
	block, payload, err := ParseData(b)
	if err != nil || x.rcv == nil {
		x.shard.ignored.Add(1)
		return
	}
	x.heard = now
	if x.state != stateRunning && x.state != stateDallying {
		return // the last ACK goes out once the file is in place
	}
	switch x.rcv.data(now, block, len(payload)) {
	case recvFailed:
		x.fail(x.rcv.err)
		return
	case recvDeliver:
		if err := x.write(payload); err != nil {
			x.fail(err)
			return
		}
		x.checkpoint(now)
	case recvLast:
		if err := x.write(payload); err != nil {
			x.fail(err)
			return
		}
		if err := x.lastWrite(); err != nil {
			x.fail(err)
			return
		}
		x.to(stateCommitting)
		return
	}
	x.flush(now)
}

// write stores an upload's payload.
func (x *xfer) write(p []byte) error {
	if max := x.srv.cfg.MaxUploadSize; max > 0 && x.rcv.received > max {
		return &Error{Code: ErrDiskFull, Message: fmt.Sprintf("file too large: the limit is %d bytes", max)}
	}
	x.reportBytes(x.rcv.received)
	if x.dbuf == nil {
		_, err := x.up.Write(p)
		return err
	}
	for len(p) > 0 {
		n, m := x.dec.Decode(x.dbuf, p)
		if _, err := x.up.Write(x.dbuf[:n]); err != nil {
			return err
		}
		p = p[m:]
	}
	return nil
}

// lastWrite writes the CR a netascii upload may end with.
func (x *xfer) lastWrite() error {
	if x.dbuf == nil {
		return nil
	}
	n := x.dec.Flush(x.dbuf)
	_, err := x.up.Write(x.dbuf[:n])
	return err
}

func (x *xfer) reportBytes(total int64) {
	if d := total - x.bytes; d > 0 {
		x.shard.bytes[x.opIndex()].Add(uint64(d))
		x.bytes = total
	}
}

// committed handles the end of an upload's commit.
func (x *xfer) committed(now time.Time, err error) {
	if x.state != stateCommitting {
		return
	}
	if err != nil {
		x.fail(err)
		return
	}
	x.complete(resultOK, nil)
	x.to(stateDallying)
	x.rcv.deadline = now.Add(x.dally)
	x.flush(now)
}

// timer handles the timer asked for with out.wake.
func (x *xfer) timer(now time.Time) {
	if x.state != stateRunning && x.state != stateDallying {
		return
	}
	if x.held(now) {
		return
	}
	if s := x.silentAt(); !s.IsZero() && !now.Before(s) {
		x.fail(errSilent)
		return
	}
	if x.snd != nil {
		probing := x.snd.probe != nil
		if x.snd.timeout(now) == evFailed {
			x.fail(x.snd.err)
			return
		}
		if probing && x.snd.probe == nil {
			x.log.Warn("tftp: no answer to the resume probe; waiting for the client at the checkpoint", "probes", x.snd.probes)
		}
	} else {
		switch x.rcv.timeout(now) {
		case evFailed:
			x.fail(x.rcv.err)
			return
		case evDone:
			x.finish() // the dally is over
			return
		}
	}
	x.flush(now)
}

// sent reports that the datagrams of the last send are in the kernel.
// While the client answers, the sender reads the next window ahead.
func (x *xfer) sent(now time.Time) {
	x.sending = false
	x.flush(now)
	if x.snd != nil && !x.sending && x.state == stateRunning {
		x.snd.prefetch()
		if x.snd.phase == phaseFailed {
			x.fail(x.snd.err)
		}
	}
}

// sendFailed reports that the last send did not (entirely) reach the
// kernel.
func (x *xfer) sendFailed(now time.Time, err error) {
	if x.state == stateFinished {
		return
	}
	if errors.Is(err, errWouldBlock) {
		x.out.resume = true
		return
	}
	x.log.Warn("tftp: send failed", "err", logErr(err))
	x.end(resultError, err)
}

// writable reports that the socket takes datagrams again: resend what it
// may have dropped.
func (x *xfer) writable(now time.Time) {
	x.sending = false
	if x.state == stateFinished {
		return
	}
	if x.snd != nil {
		x.snd.resend()
	} else if x.rcv != nil && x.rcv.phase != phaseFailed {
		x.rcv.pending = true
	}
	x.flush(now)
}

// cancel ends the transfer from outside: shutdown, or a new request from
// the same client.
func (x *xfer) cancel(why string) {
	switch x.state {
	case stateFinished:
		return
	case stateDallying:
		x.finish()
		return
	}
	x.end(resultCancelled, errors.New(why))
}

// refuse answers the request with an ERROR.
func (x *xfer) refuse(err error) {
	x.sendErr(err)
	x.end(resultRefused, err)
}

// fail ends the transfer with an ERROR to the client, unless it never
// heard from the client and times out: then the request may have been
// forged, and the ERROR would only add to the reflection.
func (x *xfer) fail(err error) {
	if !errors.Is(err, ErrTimeout) || x.heardClient() {
		x.sendErr(err)
	}
	switch {
	case errors.Is(err, ErrTimeout):
		x.end(resultTimeout, err)
	case errors.Is(err, errTransferDeadline):
		x.end(resultDeadline, err)
	default:
		x.end(resultError, err)
	}
}

// sendErr sends an ERROR for err: its code, and a message that names no
// host path.
func (x *xfer) sendErr(err error) {
	code := ErrorCodeOf(err)
	x.out.errs = append(x.out.errs, errorPacket{to: x.client, pkt: AppendError(nil, code, errorMessage(code, err))})
}

func errorMessage(code ErrorCode, err error) string {
	var te *Error
	if errors.As(err, &te) && te.Message != "" {
		return te.Message
	}
	switch {
	case errors.Is(err, ErrTimeout):
		return "timed out"
	case errors.Is(err, errTransferDeadline):
		return "transfer deadline exceeded"
	case errors.Is(err, ErrMalformed):
		return "malformed packet"
	case errors.Is(err, ErrOutsideRoot):
		return "access violation: outside the root"
	case errors.Is(err, ErrWriteDisabled):
		return "access violation: uploads are disabled"
	case errors.Is(err, ErrInvalidName):
		return "access violation: invalid file name"
	case errors.Is(err, ErrNotRegular):
		return "access violation: not a regular file"
	}
	if code == ErrUndefined {
		return "server error"
	}
	return code.String()
}

// end records the result and releases the transfer.
func (x *xfer) end(result string, err error) {
	x.complete(result, err)
	x.finish()
}

// complete records the transfer's result once: metrics and the log line.
func (x *xfer) complete(result string, err error) {
	if x.result != "" {
		return
	}
	x.result = result
	sh := x.shard
	sh.results[x.opIndex()][resultIndex(result)].Add(1)
	var re uint64
	if x.snd != nil {
		re = x.snd.retransmits
	}
	if x.rcv != nil {
		re = x.rcv.resends
	}
	sh.retransmits.Add(re)
	var d time.Duration
	if !x.started.IsZero() {
		d = time.Since(x.started)
	}
	if result != resultRefused && !x.started.IsZero() {
		x.srv.m.observe(x.opIndex(), d)
	}
	attrs := []any{"result", result, "bytes", x.bytes, "duration", d, "retransmits", re}
	if x.oack != nil {
		attrs = append(attrs, "blksize", x.neg.BlockSize, "windowsize", x.neg.WindowSize)
	}
	switch result {
	case resultOK:
		x.log.Info("tftp: transfer complete", attrs...)
	case resultRefused, resultPeerError, resultCancelled:
		x.log.Info("tftp: transfer ended", append(attrs, "err", logErr(err))...)
	default:
		x.log.Warn("tftp: transfer failed", append(attrs, "err", logErr(err))...)
	}
}

// finish releases the file and the upload, and ends the transfer.
func (x *xfer) finish() {
	if x.state == stateFinished {
		return
	}
	x.to(stateFinished)
	if x.file != nil {
		closeContent(x.file)
		x.file = nil
	}
	if x.up != nil {
		if err := x.up.Abort(); err != nil {
			x.log.Warn("tftp: discard the partial upload", "err", logErr(err))
		}
		x.up = nil
	}
	if !x.started.IsZero() {
		x.shard.active.Add(-1)
	}
	x.out.done = true
}

// liveState returns the state of a transfer that started and is not
// complete.
func (x *xfer) liveState() (TransferState, bool) {
	switch x.state {
	case stateBeginning, stateRunning, stateCommitting:
		return x.transferState(), true
	}
	return TransferState{}, false
}

// transferState returns the transfer's replicable state.
func (x *xfer) transferState() TransferState {
	st := TransferState{
		ID: x.id, Op: x.req.Op, Client: x.client, Server: x.local,
		Filename: x.req.Filename, Mode: x.req.Mode, Negotiated: x.neg,
		Options: x.oack, Rollover: x.srv.cfg.Rollover, Size: x.size, Started: x.started,
	}
	switch {
	case x.snd != nil:
		b, pos := x.snd.checkpoint()
		st.Block, st.Offset, st.Netascii = b, pos.Offset, uint8(pos.Enc.owed)
	case x.rcv != nil:
		st.Block, st.Offset = x.rcv.checkpoint(), x.rcv.received
		if x.dec.cr {
			st.Netascii = 1
		}
	}
	return st
}
