package tftp

import (
	"errors"
	"fmt"
	"time"
)

// sourcePos is where a block source stands in its file: the offset of the
// next byte to read and the netascii encoder's state. With the block index
// it is all a download needs to resume.
type sourcePos struct {
	Offset int64
	Enc    NetasciiEncoder
}

// blockSource produces the payloads of a transfer's DATA blocks in order.
type blockSource interface {
	// readBlock fills p, or fills fewer bytes at the end of the input; err
	// reports a failure to read.
	readBlock(p []byte) (int, error)
	// pos returns the position after the bytes read so far.
	pos() sourcePos
}

// event is what a state machine reports after an input.
type event uint8

const (
	evNone     event = iota // nothing changed (an ignored packet, a stale timer)
	evProgress              // the state moved; something may be ready to emit
	evDone                  // the transfer completed
	evFailed                // the transfer failed; see err
)

// phase is the life of a transfer's state machine.
//
//	running ──► done (the sender got the last ACK; the receiver got the
//	   │              last block and dallies, re-acknowledging it)
//	   └──────► failed (retries exhausted, deadline, bad packet, I/O error)
type phase uint8

const (
	phaseRunning phase = iota
	phaseDone
	phaseFailed
)

// sender is the sending side of a transfer, the server of an RRQ or the
// client of a WRQ, as a pure state machine: packets and timeouts go in,
// with the time; datagrams to send come out of emit. It keeps the current
// window's DATA packets, so retransmitting costs no read, and it reads each
// block from its source exactly once.
//
// Windows follow RFC 7440: after an ACK of block k the sender sends blocks
// k+1 to k+windowsize, resending any of them already sent (an ACK short of
// the window's end means the receiver lost the block after it), then waits.
// A duplicate ACK never triggers a retransmission in lock-step (RFC 1123's
// cure for the Sorcerer's Apprentice); with a window, the first duplicate
// ACK for a window resends it once (the receiver saw a gap), later ones are
// ignored. Timeouts resend the window with exponential back-off, until the
// retries run out.
//
// Block indexes count from 1 and do not wrap; block 0 is the OACK when
// the transfer starts with one.
type sender struct {
	bs, window int
	roll       Rollover
	src        blockSource

	oack        []byte    // block 0, while base == 0
	oackSentAt  time.Time //
	oackResent  bool      //
	slots       []sendSlot
	base        uint64 // first block not acknowledged
	next        uint64 // first block never sent
	produced    uint64 // first block not yet read from the source
	final       uint64 // the last block, once haveFinal
	haveFinal   bool
	basePos     sourcePos // source position after block base-1
	acked       int64     // payload bytes acknowledged
	retransmits uint64    // DATA (and OACK) packets sent more than once
	// spurious is what the lock-step block last acknowledged after a
	// retransmission took, from its first send to the ACK (0: none): a
	// second ACK for it proves the retransmission spurious (see ack).
	spurious time.Duration

	rto        rto
	retries    int
	maxRetries int
	// firstRetries bounds the retries while heard is false: a transfer
	// whose client never answered (a spoofed request) reflects little.
	firstRetries int
	heard        bool // an ACK came from the client
	fast         bool // a duplicate ACK has resent the window of this base
	pending      bool // the window must be (re)sent: call emit
	deadline     time.Time
	expires      time.Time // the transfer's deadline; zero: none

	phase phase
	err   error
	out   [][]byte
	bufs  [][]byte // scratch for batch reads
	// resumed marks a transfer taken over from another server, until its
	// first acknowledgement: an ACK beyond the blocks sent moves an octet
	// transfer there (jump).
	resumed bool
	// quiet marks a download resumed from its Begin record (block 0) with
	// an OACK: the client may wait for the OACK, for DATA 1 or for any
	// later block (the first server's checkpoints may not have committed),
	// and the OACK sent again to a client past it makes curl start over
	// (appending the file again to what it has) and atftp abort. So it
	// sends nothing until the client says where it is: ACK 0 (DATA 1
	// goes), the ACK of a later block (the transfer jumps there), or its
	// request again (the listener starts the transfer anew). Its timer
	// only counts the client's silence.
	quiet bool
	// restoreWindow, when set, is the window to go back to after the
	// first acknowledgement of a resumed transfer's wider first window.
	restoreWindow int
	// probe, while not nil, searches for the block a resumed lock-step
	// client waits for.
	probe *probe
	// lastBlock is the last block when known before it is read (a resumed
	// octet download of a file of known size, or a probe that reached the
	// end of a netascii one); 0 otherwise.
	lastBlock uint64
	probes    uint64 // probe blocks sent
	ns        []int
}

// probe is how a resumed lock-step download finds the block its client
// waits for, when the checkpoint may be any number of blocks behind the
// client. It sends one block at a time, probeGap apart, from the
// checkpoint on, two blocks apart: a client takes the block it waits for
// and acknowledges it, and it acknowledges again the block before that (a
// duplicate of its last one, RFC 1350), so block k finds a client at k-1
// and at k. One block at a time, because a client may discard what is
// queued on its socket when a block surprises it (tftp-hpa does): in a
// burst, the block it waits for would be lost among the others. Any ACK
// ends the probe; without one, the transfer falls back to its checkpoint
// and the client's own retransmitted ACK (jump).
type probe struct {
	next, last uint64        // the next block to send, and the last one
	at         uint64        // the block the source reads next
	gap        time.Duration // between two probes
	buf        []byte        // DATA header and payload
}

// probeGap spaces probes: enough for a client to take one before the next
// arrives (a pass that finds nothing is tried again four times slower).
const probeGap = 250 * time.Microsecond

// seekSource is a block source over a file, octet or netascii: it can go
// back to a position it reported and skip blocks forward, which is what a
// resumed download needs to reach its client's block.
type seekSource interface {
	blockSource
	// seek moves the source to a position pos returned.
	seek(at sourcePos)
	// skip moves past the next n blocks of bs bytes. It returns how many
	// it passed and whether the last of them was the input's last (shorter
	// than bs); fewer than n means the input ended before.
	skip(n uint64, bs int) (passed uint64, last bool, err error)
}

type sendSlot struct {
	buf    []byte // DATA header and payload; allocated on first use
	n      int    // payload bytes
	sentAt time.Time
	resent bool
	pos    sourcePos // source position after this block
}

type senderConfig struct {
	blockSize, window int
	roll              Rollover
	src               blockSource
	// oack, when not nil, is sent first as block 0 and must be
	// acknowledged with ACK 0. Otherwise the transfer starts at block
	// first (1, or a checkpoint's block + 1 on resume).
	oack       []byte
	first      uint64
	rto        rto
	maxRetries int
	// firstRetries, when limitFirst, bounds the retransmissions of
	// the first packet until the client answers.
	firstRetries int
	limitFirst   bool
	expires      time.Time
	// prefetch keeps room for a second window, read ahead by prefetch
	// while the first is in flight.
	prefetch bool
}

// prefetchMax bounds the memory of the read-ahead window, beyond the first
// window; prefetchBlocks the blocks read ahead at most;
// lockStepReadAhead bounds the read-ahead of a lock-step download: 11
// blocks of 1468 bytes, 31 of 512, about 16 KiB a transfer (64 blocks
// were 33–94 KiB: at 1,000 lock-step transfers, 60 of the server's 74 MiB
// of heap).
const (
	prefetchMax       = 256 << 10
	prefetchBlocks    = 64
	lockStepReadAhead = 16 << 10
)

// firstRetries returns the retries allowed before the peer answers.
func firstRetries(limit bool, first, retries int) int {
	if !limit {
		return retries
	}
	return min(max(first, 0), retries)
}

func newSender(c senderConfig) *sender {
	s := &sender{
		bs: c.blockSize, window: max(c.window, 1), roll: c.roll, src: c.src,
		oack: c.oack, rto: c.rto, maxRetries: c.maxRetries, expires: c.expires,
		firstRetries: firstRetries(c.limitFirst, c.firstRetries, c.maxRetries),
		basePos:      c.src.pos(),
	}
	n := s.window
	switch {
	case c.prefetch && s.window == 1:
		// Lock-step: read ahead lockStepReadAhead bytes, so that the file
		// is read with one preadv per several blocks. A boot storm has
		// a thousand of these at once: the ring is most of a
		// transfer's memory.
		n = 1 + min(prefetchBlocks, max(1, lockStepReadAhead/(4+s.bs)))
	case c.prefetch:
		// Room for the window in flight and at least one more; small
		// blocks read further ahead.
		n = max(2*s.window, min(prefetchBlocks, prefetchMax/(4+s.bs)))
	}
	s.slots = make([]sendSlot, n)
	s.out = make([][]byte, 0, s.window)
	first := c.first
	if c.oack == nil {
		first = max(first, 1)
	} else {
		first = 0
	}
	s.base, s.next, s.produced = first, first, max(first, 1)
	s.pending = true
	return s
}

// Errors that end a transfer.
var (
	// ErrTimeout reports a transfer abandoned after its retransmissions
	// went unanswered.
	ErrTimeout = errors.New("tftp: timed out")
	// errTransferDeadline reports a transfer that ran past its deadline.
	errTransferDeadline = errors.New("tftp: transfer deadline exceeded")
	// errTooManyBlocks reports a transfer that needs more blocks than the
	// rollover policy allows.
	errTooManyBlocks = &Error{Code: ErrDiskFull, Message: "file too large for 65535 blocks"}
)

func (s *sender) slot(i uint64) *sendSlot { return &s.slots[(i-1)%uint64(len(s.slots))] }

func (s *sender) fail(err error) event {
	s.phase, s.err, s.pending = phaseFailed, err, false
	return evFailed
}

func (s *sender) expired(now time.Time) bool {
	return !s.expires.IsZero() && !now.Before(s.expires)
}

// ack handles an ACK with wire block number w.
func (s *sender) ack(now time.Time, w uint16) event {
	if s.phase != phaseRunning {
		return evNone
	}
	s.heard = true
	if s.expired(now) {
		return s.fail(errTransferDeadline)
	}
	if s.base == 0 {
		if w != 0 && s.quiet {
			// The client acknowledged the first server's OACK and blocks
			// after it.
			s.base, s.next = 1, 1
			if ev, jumped := s.jump(w); jumped {
				s.quiet = false
				return ev
			}
			s.base, s.next = 0, 1
			return evNone
		}
		if w != 0 || s.next == 0 {
			return evNone
		}
		s.quiet = false
		if !s.oackResent {
			s.rto.sample(now.Sub(s.oackSentAt))
		}
		s.base, s.next = 1, 1
		s.advanced()
		return evProgress
	}
	if s.probe != nil {
		return s.probed(w)
	}
	k, ok := s.roll.index(w, s.base-1, s.next-s.base+1)
	if !ok && s.resumed {
		if ev, jumped := s.jump(w); jumped {
			return ev
		}
	}
	if !ok {
		return evNone // not for a block in flight: stray, or very late
	}
	if k == s.base-1 {
		if s.window > 1 && !s.fast && s.next > s.base {
			s.fast, s.pending = true, true
			return evProgress
		}
		if s.spurious > 0 {
			// Lock-step: the client acknowledged the retransmitted block
			// twice, so it got both copies: the first was not lost, it
			// was late (a busy server or client), and its round trip is
			// known after all.
			s.rto.lateNotLost(s.spurious)
			s.spurious = 0
		}
		return evNone
	}
	sl := s.slot(k)
	s.spurious = 0
	if !sl.resent {
		s.rto.sample(now.Sub(sl.sentAt))
	} else if s.window == 1 {
		s.spurious = now.Sub(sl.sentAt)
	}
	for i := s.base; i <= k; i++ {
		s.acked += int64(s.slot(i).n)
	}
	s.basePos = sl.pos
	s.base = k + 1
	if s.haveFinal && k == s.final {
		s.phase, s.pending = phaseDone, false
		return evDone
	}
	s.advanced()
	return evProgress
}

// jump handles, on a resumed transfer before its first acknowledgement, an
// ACK beyond the blocks sent: the client got further than the checkpoint
// plus the resume window (or the probe found it there). The source skips
// forward, and the transfer moves to the block after the acknowledged one.
func (s *sender) jump(w uint16) (event, bool) {
	src, ok := s.src.(seekSource)
	if !ok {
		return evNone, false
	}
	j, ok := s.roll.index(w, s.base-1, 1<<15)
	last := s.lastBlock
	if s.haveFinal {
		last = s.final
	}
	if !ok || j < s.next || (last > 0 && j > last) {
		return evNone, false
	}
	var pos sourcePos
	if j+1 >= s.produced {
		// Blocks after j were not read yet: skip to j and read on there.
		n := j + 1 - s.produced
		passed, end, err := src.skip(n, s.bs)
		if err != nil {
			return s.fail(err), true
		}
		if passed < n {
			// Not a block of this file: go back to where the source was,
			// and remember where the file ends, so that the next such ACK
			// costs no conversion.
			s.lastBlock = s.produced - 1 + passed
			src.seek(s.producedPos())
			return evNone, false
		}
		if end {
			last, s.lastBlock = j, j
		}
		s.produced, pos = j+1, src.pos()
	} else {
		pos = s.slot(j).pos
	}
	s.acked = int64(j) * int64(s.bs)
	if j == last {
		s.phase, s.pending = phaseDone, false
		return evDone, true
	}
	s.basePos = pos
	s.base, s.next = j+1, j+1
	s.advanced()
	return evProgress, true
}

// producedPos returns the source position at the start of block produced.
func (s *sender) producedPos() sourcePos {
	if s.produced > s.base && s.base > 0 {
		return s.slot(s.produced - 1).pos
	}
	return s.basePos
}

// probed handles an ACK while probing: it names the client's block, the
// checkpoint's or a later one.
func (s *sender) probed(w uint16) event {
	j, ok := s.roll.index(w, s.base-1, 1<<15)
	if !ok {
		return evNone
	}
	s.stopProbe()
	if j == s.base-1 {
		s.advanced() // the client is at the checkpoint
		return evProgress
	}
	if ev, jumped := s.jump(w); jumped {
		return ev
	}
	s.pending = true // not a block of this file: go on from the checkpoint
	return evProgress
}

// startProbe makes a resumed lock-step download search for its client's
// block, from the block after the checkpoint to at most span blocks
// further and not past lastBlock when it is known (netascii's is found by
// the probe).
func (s *sender) startProbe(span uint64) {
	if _, ok := s.src.(seekSource); !ok || s.base == 0 || s.window != 1 {
		return
	}
	end := s.base + span
	if s.lastBlock > 0 {
		end = min(end, s.lastBlock)
	}
	s.probe = &probe{next: s.base, last: end, at: s.base, gap: probeGap, buf: make([]byte, 4+s.bs)}
}

// stopProbe ends the probe and puts the source back where the transfer
// goes on (or jumps from): the checkpoint.
func (s *sender) stopProbe() {
	s.probe = nil
	s.src.(seekSource).seek(s.producedPos())
}

// emitProbe sends the next probe block. The probe reads its blocks with
// the transfer's source, in order: a pass skips the block between two
// probes, and a new pass starts again from the checkpoint.
func (s *sender) emitProbe(now time.Time) [][]byte {
	p := s.probe
	src := s.src.(seekSource)
	if p.next < p.at {
		src.seek(s.basePos)
		p.at = s.base
	}
	if p.next > p.at {
		passed, end, err := src.skip(p.next-p.at, s.bs)
		p.at += passed
		if err == nil && end {
			// The file ended before this probe's block: probe its last
			// block instead, the one just passed.
			p.next, p.last, s.lastBlock = p.at-1, p.at-1, p.at-1
			src.seek(s.basePos)
			p.at = s.base
			passed, _, err = src.skip(p.next-p.at, s.bs)
			p.at += passed
		}
		if err != nil {
			s.fail(err)
			return nil
		}
	}
	n, err := src.readBlock(p.buf[4:])
	if err != nil {
		s.fail(err)
		return nil
	}
	p.at++
	if n < s.bs {
		p.last, s.lastBlock = p.next, p.next // netascii finds its end here
	}
	w := s.roll.wire(p.next)
	p.buf[0], p.buf[1], p.buf[2], p.buf[3] = 0, byte(OpDATA), byte(w>>8), byte(w)
	s.probes++
	s.out = append(s.out[:0], p.buf[:4+n])
	s.deadline = now.Add(p.gap)
	return s.out
}

func (s *sender) advanced() {
	s.resumed = false
	if s.restoreWindow > 0 {
		s.window, s.restoreWindow = s.restoreWindow, 0
	}
	s.retries = 0
	s.rto.progress()
	s.fast = false
	s.pending = true
}

// timeout handles the retransmission timer; a call before the deadline is
// ignored, so a stale timer is harmless.
func (s *sender) timeout(now time.Time) event {
	if s.phase != phaseRunning {
		return evNone
	}
	if s.expired(now) {
		return s.fail(errTransferDeadline)
	}
	if now.Before(s.deadline) || s.pending {
		return evNone
	}
	if p := s.probe; p != nil {
		switch {
		case p.next < p.last && p.next+2 > p.last:
			p.next = p.last // a pass ends on the last block
		default:
			p.next += 2
		}
		if p.next > p.last {
			if p.gap < probeGap*4 {
				// No answer: the client may have been too busy to take
				// each probe alone. Once more, four times slower.
				p.next, p.gap = s.base, p.gap*4
			} else {
				// Go back to the checkpoint and wait for the client's
				// own retransmission.
				s.stopProbe()
			}
		}
		s.pending = true
		return evProgress
	}
	s.retries++
	limit := s.maxRetries
	if !s.heard {
		limit = s.firstRetries
	}
	if s.retries > limit {
		return s.fail(fmt.Errorf("%w after %d retransmissions", ErrTimeout, limit))
	}
	s.rto.expired()
	s.pending = true
	return evProgress
}

// resend asks for the window to be sent again without counting a retry,
// after the socket dropped it (a full send buffer).
func (s *sender) resend() {
	if s.phase == phaseRunning {
		s.pending = true
	}
}

// emit returns the datagrams to send now, or nil. They stay valid until the
// next call of emit, whatever ack and timeout do meanwhile (only emit
// writes the window's buffers), so a driver may hand them to a socket that
// sends them later. emit reads new blocks from the source; a read error
// fails the transfer (emit then returns nil).
func (s *sender) emit(now time.Time) [][]byte {
	if !s.pending || s.phase != phaseRunning {
		return nil
	}
	s.pending = false
	s.out = s.out[:0]
	if s.base == 0 {
		switch {
		case s.quiet:
			s.next, s.oackResent = 1, true // no round trip to sample
			s.deadline = now.Add(s.rto.wait())
			return nil
		case s.next == 0:
			s.next, s.oackSentAt = 1, now
		default:
			s.oackResent = true
			s.retransmits++
		}
		s.out = append(s.out, s.oack)
		s.deadline = now.Add(s.rto.wait())
		return s.out
	}
	if s.probe != nil {
		return s.emitProbe(now)
	}
	end := s.base + uint64(s.window)
	if !s.haveFinal && s.produced < end {
		if err := s.produce(end); err != nil {
			s.fail(err)
			return nil
		}
	}
	for i := s.base; i < end && i < s.produced; i++ {
		sl := s.slot(i)
		if i >= s.next {
			sl.sentAt, sl.resent = now, false
			s.next = i + 1
		} else {
			sl.resent = true
			s.retransmits++
		}
		s.out = append(s.out, sl.buf[:4+sl.n])
	}
	s.deadline = now.Add(s.rto.wait())
	return s.out
}

// produce reads the blocks from s.produced up to end (exclusive), or to
// the last block, into their slots: with one call for a batch source.
func (s *sender) produce(end uint64) error {
	if s.roll == RolloverRefuse && end > maxBlocksNoRollover+1 {
		if s.produced > maxBlocksNoRollover {
			return errTooManyBlocks
		}
		end = maxBlocksNoRollover + 1
	}
	if bs, ok := s.src.(batchSource); ok && end-s.produced > 1 {
		s.bufs, s.ns = s.bufs[:0], s.ns[:0]
		for i := s.produced; i < end; i++ {
			s.bufs = append(s.bufs, s.payload(i))
			s.ns = append(s.ns, 0)
		}
		pos := s.src.pos()
		err := bs.readBlocks(s.bufs, s.ns)
		clear(s.bufs)
		if err != nil {
			return err
		}
		for _, n := range s.ns {
			pos.Offset += int64(n)
			s.setBlock(s.produced, n, pos)
			if s.haveFinal {
				break
			}
		}
		return nil
	}
	for i := s.produced; i < end && !s.haveFinal; i++ {
		n, err := s.src.readBlock(s.payload(i))
		if err != nil {
			return err
		}
		s.setBlock(i, n, s.src.pos())
	}
	return nil
}

// payload returns block i's payload buffer in its slot.
func (s *sender) payload(i uint64) []byte {
	sl := s.slot(i)
	if sl.buf == nil {
		sl.buf = make([]byte, 4+s.bs)
	}
	return sl.buf[4 : 4+s.bs]
}

// setBlock records that block i's slot holds n payload bytes.
func (s *sender) setBlock(i uint64, n int, pos sourcePos) {
	sl := s.slot(i)
	w := s.roll.wire(i)
	sl.buf[0], sl.buf[1], sl.buf[2], sl.buf[3] = 0, byte(OpDATA), byte(w>>8), byte(w)
	sl.n, sl.pos = n, pos
	s.produced = i + 1
	if n < s.bs {
		s.final, s.haveFinal = i, true
	}
}

// prefetch reads ahead the window after the one in flight, when the
// sender has room for it, so that the next ACK finds its blocks ready: the
// read leaves the round trip's critical path. A read error is kept for
// emit to report.
func (s *sender) prefetch() {
	if s.phase != phaseRunning || s.haveFinal || len(s.slots) == s.window || s.pending || s.probe != nil {
		return
	}
	// Read when at most half of the ring is ahead, so that each read
	// fills half of it: one preadv per many blocks, not one per block.
	start := max(s.base, 1)
	end := start + uint64(len(s.slots))
	if s.produced > start+uint64(len(s.slots)/2) {
		return
	}
	if err := s.produce(end); err != nil {
		s.fail(err)
	}
}

// nextDeadline returns when timeout should be called next.
func (s *sender) nextDeadline() time.Time {
	if !s.expires.IsZero() && (s.deadline.IsZero() || s.expires.Before(s.deadline)) {
		return s.expires
	}
	return s.deadline
}

// checkpoint returns the last block acknowledged and the source position
// after it: resuming there (first = block+1) loses nothing.
func (s *sender) checkpoint() (block uint64, pos sourcePos) {
	if s.base == 0 {
		return 0, s.basePos
	}
	return s.base - 1, s.basePos
}
