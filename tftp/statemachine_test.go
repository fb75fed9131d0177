package tftp

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// patternFile is a file of size bytes whose content is a function of the
// offset, so that any part can be read or checked without storing it.
type patternFile struct{ size int64 }

func patternByte(off int64) byte { return byte(off*7 + off>>9 + off>>17) }

func (p patternFile) ReadAt(b []byte, off int64) (int, error) {
	if off >= p.size {
		return 0, io.EOF
	}
	n := int(min(int64(len(b)), p.size-off))
	for i := range n {
		b[i] = patternByte(off + int64(i))
	}
	if n < len(b) {
		return n, io.EOF
	}
	return n, nil
}

// link is a simulated network path between a sender and a receiver: each
// packet is dropped, duplicated or delayed by the rules, with a seeded
// random source, and the clock is virtual.
type link struct {
	rng       *rand.Rand
	drop, dup float64 // probabilities, each direction
	latency   time.Duration
	jitter    time.Duration
	dropFn    func(toReceiver bool, pkt []byte) bool // optional, deterministic drops
	inflight  []flight
	sent      int
}

type flight struct {
	at         time.Time
	toReceiver bool
	pkt        []byte
	seq        int
}

func (l *link) send(now time.Time, toReceiver bool, pkt []byte) {
	l.sent++
	if l.dropFn != nil && l.dropFn(toReceiver, pkt) {
		return
	}
	copies := 1
	if l.rng != nil {
		if l.rng.Float64() < l.drop {
			return
		}
		if l.rng.Float64() < l.dup {
			copies = 2
		}
	}
	for range copies {
		d := l.latency
		if l.jitter > 0 && l.rng != nil {
			d += time.Duration(l.rng.Int64N(int64(l.jitter)))
		}
		l.inflight = append(l.inflight, flight{at: now.Add(d), toReceiver: toReceiver, pkt: slices.Clone(pkt), seq: l.sent})
	}
}

// next removes and returns the earliest packet in flight.
func (l *link) next() (flight, bool) {
	if len(l.inflight) == 0 {
		return flight{}, false
	}
	i := 0
	for j, f := range l.inflight {
		if f.at.Before(l.inflight[i].at) || f.at.Equal(l.inflight[i].at) && f.seq < l.inflight[i].seq {
			i = j
		}
	}
	f := l.inflight[i]
	l.inflight = slices.Delete(l.inflight, i, i+1)
	return f, true
}

type pairConfig struct {
	size       int64
	bs, window int
	roll       Rollover
	netascii   bool
	first      uint64 // resume at this block (octet): blocks before it count as delivered
	oack       bool
	file       *os.File // read the pattern from this file, with preadv
	prefetch   bool
	link       link
	sndRTO     rto
	rcvRTO     rto
	retries    int
}

type pairResult struct {
	hash        [32]byte
	n           int64
	elapsed     time.Duration
	sndErr      error
	rcvErr      error
	retransmits uint64
	acksResent  uint64
	wireBlocks  []uint16 // wire numbers of the DATA the receiver accepted, when recorded
	dataSent    int
}

// runPair runs a sender and a receiver against each other over l, in
// virtual time, until both are done or one fails.
func runPair(t testing.TB, c pairConfig, record bool) pairResult {
	t.Helper()
	now := time.Unix(1000, 0)
	start := now
	f := patternFile{size: c.size}
	var src blockSource
	first := max(c.first, 1)
	offset := int64(first-1) * int64(c.bs)
	switch {
	case c.netascii:
		src = newNetasciiSource(f, sourcePos{})
	case c.file != nil:
		src = newOctetSource(c.file, offset)
	default:
		src = &octetSource{f: f, off: offset}
	}
	if c.retries == 0 {
		c.retries = 5
	}
	if c.sndRTO.cur == 0 {
		c.sndRTO = fixedRTO(time.Second)
	}
	if c.rcvRTO.cur == 0 {
		c.rcvRTO = fixedRTO(time.Second)
	}
	var oack []byte
	if c.oack {
		oack = AppendOACK(nil, []Option{{Name: OptBlockSize, Value: fmt.Sprint(c.bs)}})
	}
	s := newSender(senderConfig{blockSize: c.bs, window: c.window, roll: c.roll, src: src, oack: oack, first: first, rto: c.sndRTO, maxRetries: c.retries, prefetch: c.prefetch})
	r := newReceiver(receiverConfig{blockSize: c.bs, window: c.window, roll: c.roll, next: first, rto: c.rcvRTO, maxRetries: c.retries, dally: 3 * time.Second})
	h := sha256.New()
	var dec NetasciiDecoder
	dbuf := make([]byte, c.bs+1)
	var res pairResult
	l := &c.link
	rcvDone := false
	for steps := 0; ; steps++ {
		if steps > 50_000_000 {
			t.Fatalf("no end after %d steps", steps)
		}
		for _, p := range s.emit(now) {
			res.dataSent++
			l.send(now, true, p)
		}
		s.prefetch()
		if a := r.emit(now); a != nil {
			l.send(now, false, a)
		}
		if s.phase == phaseFailed {
			res.sndErr = s.err
			break
		}
		if r.phase == phaseFailed {
			res.rcvErr = r.err
			break
		}
		if s.phase == phaseDone && rcvDone {
			break
		}
		// The next event: a packet arriving, or a timer.
		at := time.Time{}
		if len(l.inflight) > 0 {
			at = l.inflight[0].at
			for _, f := range l.inflight {
				if f.at.Before(at) {
					at = f.at
				}
			}
		}
		sd, rd := s.nextDeadline(), r.nextDeadline()
		if s.phase != phaseRunning {
			sd = time.Time{}
		}
		for _, d := range []time.Time{sd, rd} {
			if !d.IsZero() && (at.IsZero() || d.Before(at)) {
				at = d
			}
		}
		if at.IsZero() {
			t.Fatalf("deadlock: nothing in flight, no timer (sender %v, receiver %v)", s.phase, r.phase)
		}
		if at.After(now) {
			now = at
		}
		if fl, ok := l.next(); ok && !fl.at.After(now) {
			if fl.toReceiver {
				block, payload, err := ParseData(fl.pkt)
				if err != nil {
					if rcvDone || r.next != 1 { // an OACK resent after ACK 0 got lost
						continue
					}
					r.ackFirst()
					continue
				}
				switch r.data(now, block, len(payload)) {
				case recvDeliver, recvLast:
					if record {
						res.wireBlocks = append(res.wireBlocks, block)
					}
					res.n += int64(len(payload))
					if c.netascii {
						for p := payload; len(p) > 0; {
							n, m := dec.Decode(dbuf, p)
							h.Write(dbuf[:n])
							p = p[m:]
						}
					} else {
						h.Write(payload)
					}
					if r.phase == phaseDone {
						rcvDone = true
						if c.netascii {
							h.Write(dbuf[:dec.Flush(dbuf)])
						}
					}
				}
			} else {
				block, err := ParseAck(fl.pkt)
				if err != nil {
					t.Fatalf("receiver sent %q", fl.pkt)
				}
				s.ack(now, block)
			}
			continue
		} else if ok {
			l.inflight = append(l.inflight, fl) // not yet
		}
		s.timeout(now)
		if r.timeout(now) == evDone {
			rcvDone = true
		}
	}
	copy(res.hash[:], h.Sum(nil))
	res.elapsed = now.Sub(start)
	res.retransmits = s.retransmits
	res.acksResent = r.resends
	return res
}

func patternHash(from, size int64) [32]byte {
	h := sha256.New()
	buf := make([]byte, 1<<16)
	for off := from; off < size; {
		n, _ := patternFile{size: size}.ReadAt(buf, off)
		h.Write(buf[:n])
		off += int64(n)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

func TestPairLockstepSizes(t *testing.T) {
	for _, size := range []int64{0, 1, 511, 512, 513, 1024, 100_000} {
		for _, bs := range []int{8, 512, 1428} {
			res := runPair(t, pairConfig{size: size, bs: bs, window: 1, link: link{latency: time.Millisecond}}, false)
			if res.sndErr != nil || res.rcvErr != nil || res.hash != patternHash(0, size) || res.n != size {
				t.Fatalf("size %d bs %d: %+v", size, bs, res)
			}
			blocks := size/int64(bs) + 1
			if res.dataSent != int(blocks) || res.retransmits != 0 {
				t.Fatalf("size %d bs %d: %d DATA sent, %d retransmitted; want %d, 0", size, bs, res.dataSent, res.retransmits, blocks)
			}
			// One round trip per block.
			if want := time.Duration(blocks) * 2 * time.Millisecond; res.elapsed != want {
				t.Fatalf("size %d bs %d: took %v, want %v", size, bs, res.elapsed, want)
			}
		}
	}
}

func TestPairWindow(t *testing.T) {
	for _, w := range []int{2, 4, 16, 64} {
		size := int64(1428*w*10 + 77)
		res := runPair(t, pairConfig{size: size, bs: 1428, window: w, oack: true, link: link{latency: time.Millisecond}}, false)
		if res.sndErr != nil || res.rcvErr != nil || res.hash != patternHash(0, size) {
			t.Fatalf("window %d: %+v", w, res)
		}
		// OACK/ACK 0, then one round trip per window.
		windows := (size/1428 + 1 + int64(w) - 1) / int64(w)
		if want := time.Duration(1+windows) * 2 * time.Millisecond; res.elapsed != want {
			t.Fatalf("window %d: took %v, want %v", w, res.elapsed, want)
		}
	}
}

func TestPairNetascii(t *testing.T) {
	for _, bs := range []int{8, 9, 512} {
		res := runPair(t, pairConfig{size: 20_000, bs: bs, window: 3, netascii: true, link: link{latency: time.Millisecond}}, false)
		if res.sndErr != nil || res.rcvErr != nil || res.hash != patternHash(0, 20_000) {
			t.Fatalf("bs %d: %+v", bs, res)
		}
	}
}

// TestPairRollover crosses block 65535 at every block size, resuming from a
// checkpoint just before it so that even 64 KiB blocks stay cheap.
func TestPairRollover(t *testing.T) {
	for _, roll := range []Rollover{RolloverZero, RolloverOne} {
		for _, bs := range []int{8, 512, 1024, 1428, 8192, 65464} {
			for _, w := range []int{1, 7} {
				first := uint64(65530)
				size := int64(65540)*int64(bs) + int64(bs/2)
				res := runPair(t, pairConfig{size: size, bs: bs, window: w, roll: roll, first: first, prefetch: bs < 8192, link: link{latency: time.Millisecond}}, true)
				from := int64(first-1) * int64(bs)
				if res.sndErr != nil || res.rcvErr != nil || res.hash != patternHash(from, size) {
					t.Fatalf("%v bs %d w %d: %v %v", roll, bs, w, res.sndErr, res.rcvErr)
				}
				var want []uint16
				for i := first; i <= 65541; i++ {
					want = append(want, roll.wire(i))
				}
				if !slices.Equal(res.wireBlocks, want) {
					t.Fatalf("%v bs %d: wire blocks %v, want %v", roll, bs, res.wireBlocks, want)
				}
			}
		}
	}
	if got := []uint16{RolloverZero.wire(65535), RolloverZero.wire(65536), RolloverOne.wire(65535), RolloverOne.wire(65536), RolloverOne.wire(131070), RolloverOne.wire(131071)}; !slices.Equal(got, []uint16{65535, 0, 65535, 1, 65535, 1}) {
		t.Fatalf("wire numbers %v", got)
	}
}

func TestPairRolloverRefuse(t *testing.T) {
	res := runPair(t, pairConfig{size: 65536 * 8, bs: 8, window: 4, roll: RolloverRefuse, first: 65530, link: link{latency: time.Millisecond}}, false)
	var te *Error
	if !errors.As(res.sndErr, &te) || te.Code != ErrDiskFull {
		t.Fatalf("sender error %v, want ERROR 3", res.sndErr)
	}
	// Exactly 65535 blocks fit: 65534 full ones and a short one.
	res = runPair(t, pairConfig{size: 65534*8 + 3, bs: 8, window: 4, roll: RolloverRefuse, first: 65530, link: link{latency: time.Millisecond}}, false)
	if res.sndErr != nil || res.rcvErr != nil {
		t.Fatalf("65535 blocks: %v %v", res.sndErr, res.rcvErr)
	}
}

// TestPairLoss runs transfers over a link that drops and duplicates
// packets both ways and checks they arrive intact.
func TestPairLoss(t *testing.T) {
	for seed := range uint64(30) {
		for _, w := range []int{1, 4, 16} {
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			size := int64(200_000 + rng.IntN(5000))
			c := pairConfig{
				size: size, bs: 512, window: w, oack: seed%2 == 0, retries: 8, prefetch: seed%3 == 0,
				link:   link{rng: rng, drop: 0.1, dup: 0.1, latency: time.Millisecond, jitter: 2 * time.Millisecond},
				sndRTO: adaptiveRTO(time.Second, 10*time.Millisecond, time.Second),
				rcvRTO: fixedRTO(200 * time.Millisecond),
			}
			res := runPair(t, c, false)
			if res.sndErr != nil || res.rcvErr != nil || res.hash != patternHash(0, size) {
				t.Fatalf("seed %d window %d: %v %v", seed, w, res.sndErr, res.rcvErr)
			}
		}
	}
}

// TestSorcerersApprentice: a network that duplicates every packet must not
// make the sender send more DATA than twice the blocks (each DATA once,
// each duplicated once by the network): a sender that answered duplicate
// ACKs would double the traffic with every block.
func TestSorcerersApprentice(t *testing.T) {
	size := int64(512 * 200)
	c := pairConfig{size: size, bs: 512, window: 1, link: link{rng: rand.New(rand.NewPCG(1, 2)), dup: 1, latency: time.Millisecond}}
	res := runPair(t, c, false)
	if res.sndErr != nil || res.rcvErr != nil || res.hash != patternHash(0, size) {
		t.Fatalf("%v %v", res.sndErr, res.rcvErr)
	}
	if blocks := int(size/512 + 1); res.dataSent != blocks || res.retransmits != 0 {
		t.Fatalf("sent %d DATA (%d again) for %d blocks", res.dataSent, res.retransmits, blocks)
	}
}

func TestSenderDuplicateAckIgnored(t *testing.T) {
	now := time.Unix(0, 0)
	s := newSender(senderConfig{blockSize: 4, window: 1, src: &octetSource{f: patternFile{size: 100}}, first: 1, rto: fixedRTO(time.Second), maxRetries: 3})
	if out := s.emit(now); len(out) != 1 {
		t.Fatalf("emit %d", len(out))
	}
	if ev := s.ack(now, 1); ev != evProgress {
		t.Fatalf("ack 1: %v", ev)
	}
	if out := s.emit(now); len(out) != 1 || !bytes.Equal(out[0][:4], []byte{0, 3, 0, 2}) {
		t.Fatalf("after ack 1: %q", out)
	}
	for range 5 {
		if ev := s.ack(now, 1); ev != evNone {
			t.Fatalf("duplicate ack 1: %v", ev)
		}
		if out := s.emit(now); out != nil {
			t.Fatalf("duplicate ack 1 sent %q", out)
		}
	}
	for _, w := range []uint16{3, 100, 65535} { // not sent yet, or stray
		if ev := s.ack(now, w); ev != evNone {
			t.Fatalf("ack %d: %v", w, ev)
		}
	}
}

func TestSenderBackoffAndGiveUp(t *testing.T) {
	now := time.Unix(0, 0)
	s := newSender(senderConfig{blockSize: 512, window: 1, src: &octetSource{f: patternFile{size: 100}}, first: 1, rto: fixedRTO(time.Second), maxRetries: 4})
	s.emit(now)
	var waits []time.Duration
	for s.phase == phaseRunning {
		d := s.nextDeadline()
		waits = append(waits, d.Sub(now))
		if ev := s.timeout(d.Add(-time.Nanosecond)); ev != evNone {
			t.Fatalf("early timeout: %v", ev)
		}
		now = d
		s.timeout(now)
		s.emit(now)
	}
	if want := []time.Duration{1, 2, 4, 8, 8}; !slices.Equal(waits, scale(want, time.Second)) {
		t.Fatalf("waits %v, want %v s", waits, want)
	}
	if !errors.Is(s.err, ErrTimeout) || s.retransmits != 4 {
		t.Fatalf("err %v after %d retransmissions", s.err, s.retransmits)
	}
}

func scale(ds []time.Duration, unit time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d * unit
	}
	return out
}

func TestSenderDeadline(t *testing.T) {
	now := time.Unix(0, 0)
	s := newSender(senderConfig{blockSize: 512, window: 1, src: &octetSource{f: patternFile{size: 1 << 20}}, first: 1, rto: fixedRTO(time.Second), maxRetries: 100, expires: now.Add(10 * time.Second)})
	for i := uint16(1); s.phase == phaseRunning; i++ {
		s.emit(now)
		now = now.Add(time.Second)
		s.ack(now, i)
	}
	if !errors.Is(s.err, errTransferDeadline) {
		t.Fatalf("err %v", s.err)
	}
}

func TestAdaptiveRTO(t *testing.T) {
	r := adaptiveRTO(time.Second, 10*time.Millisecond, time.Second)
	if r.wait() != time.Second {
		t.Fatalf("initial %v", r.wait())
	}
	for range 20 {
		r.sample(100 * time.Microsecond)
	}
	if r.wait() != 10*time.Millisecond {
		t.Fatalf("after fast samples %v, want the floor", r.wait())
	}
	for range 20 {
		r.sample(300 * time.Millisecond)
	}
	if w := r.wait(); w < 300*time.Millisecond || w > time.Second {
		t.Fatalf("after slow samples %v", w)
	}
	r.expired()
	r.expired()
	if w := r.wait(); w != 4*r.cur {
		t.Fatalf("back-off %v, estimate %v", w, r.cur)
	}
	r.progress()
	if r.wait() != r.cur {
		t.Fatal("progress did not reset the back-off")
	}
}

func TestReceiverWindowAcks(t *testing.T) {
	now := time.Unix(0, 0)
	r := newReceiver(receiverConfig{blockSize: 4, window: 4, next: 1, rto: fixedRTO(time.Second), maxRetries: 3})
	acks := func() []uint16 {
		var out []uint16
		if a := r.emit(now); a != nil {
			b, _ := ParseAck(a)
			out = append(out, b)
		}
		return out
	}
	for b := uint16(1); b <= 3; b++ {
		if res := r.data(now, b, 4); res != recvDeliver {
			t.Fatalf("block %d: %v", b, res)
		}
		if a := acks(); a != nil {
			t.Fatalf("ack before the window's end: %v", a)
		}
	}
	r.data(now, 4, 4)
	if a := acks(); !slices.Equal(a, []uint16{4}) {
		t.Fatalf("acks %v, want [4]", a)
	}
	// A gap: 5 lost, 6 and 7 arrive; one ACK 4 only.
	r.data(now, 6, 4)
	if a := acks(); !slices.Equal(a, []uint16{4}) {
		t.Fatalf("gap acks %v", a)
	}
	r.data(now, 7, 4)
	if a := acks(); a != nil {
		t.Fatalf("second gap ack %v", a)
	}
	// Old blocks: one ACK per window's worth of duplicates.
	var n int
	for range 8 {
		r.data(now, 3, 4)
		n += len(acks())
	}
	if n != 2 {
		t.Fatalf("%d acks for 8 duplicates, want 2", n)
	}
	// The last block, short.
	for b := uint16(5); b <= 7; b++ {
		r.data(now, b, 4)
	}
	if res := r.data(now, 8, 1); res != recvLast {
		t.Fatalf("last: %v", res)
	}
	if a := acks(); !slices.Equal(a, []uint16{8}) {
		t.Fatalf("last acks %v", a)
	}
	// Dally: the last block again is acknowledged again.
	r.data(now, 8, 1)
	if a := acks(); !slices.Equal(a, []uint16{8}) {
		t.Fatalf("dally acks %v", a)
	}
	if res := r.data(now, 9, 4); res != recvIgnore {
		t.Fatalf("after the end: %v", res)
	}
}

func TestReceiverRejectsOversizedBlock(t *testing.T) {
	r := newReceiver(receiverConfig{blockSize: 512, window: 1, next: 1, rto: fixedRTO(time.Second)})
	if res := r.data(time.Unix(0, 0), 1, 513); res != recvFailed || !errors.Is(r.err, ErrMalformed) {
		t.Fatalf("%v %v", res, r.err)
	}
}

func TestRolloverIndex(t *testing.T) {
	for _, roll := range []Rollover{RolloverZero, RolloverOne} {
		for _, lo := range []uint64{0, 1, 65530, 65535, 65536, 131069, 131070, 131071, 1 << 40} {
			for n := uint64(0); n < 40; n++ {
				for i := lo; i < lo+n; i++ {
					got, ok := roll.index(roll.wire(i), lo, n)
					if !ok || got != i {
						t.Fatalf("%v: index(wire(%d)=%d, %d, %d) = %d, %v", roll, i, roll.wire(i), lo, n, got, ok)
					}
				}
				if n > 0 {
					if _, ok := roll.index(roll.wire(lo+n), lo, n); ok && roll.wire(lo+n) != roll.wire(lo) {
						t.Fatalf("%v: index past the range found", roll)
					}
				}
			}
		}
	}
}

func TestTransferStateRoundTrip(t *testing.T) {
	st := TransferState{
		ID: 42, Op: OpRRQ, Client: mustAP("192.0.2.1:1234"), Server: mustAP("[2001:db8::1]:40000"),
		Filename: "boot/pxelinux.0", Mode: ModeNetascii,
		Negotiated: Negotiated{BlockSize: 1428, WindowSize: 16, Timeout: 3 * time.Second, TSize: 1 << 33},
		Options:    AppendOACK(nil, []Option{{Name: OptBlockSize, Value: "1428"}}),
		Rollover:   RolloverOne, Size: 1 << 33, Block: 1<<17 + 5, Offset: 123456789, Netascii: 2,
		Started: time.Unix(1700000000, 123),
	}
	b, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got TransferState
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if !got.Started.Equal(st.Started) {
		t.Fatalf("started %v", got.Started)
	}
	got.Started = st.Started
	if fmt.Sprint(got) != fmt.Sprint(st) {
		t.Fatalf("round trip:\n%+v\n%+v", got, st)
	}
	if len(b) > 128 {
		t.Fatalf("encoding is %d bytes", len(b))
	}
	for i := range b {
		if err := new(TransferState).UnmarshalBinary(b[:i]); err == nil {
			t.Fatalf("truncated to %d bytes: no error", i)
		}
	}
}

func mustAP(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestEmitStable: what emit returned stays as it was while later packets
// are handled, until the next emit: a socket may send it later.
func TestEmitStable(t *testing.T) {
	now := time.Unix(0, 0)
	r := newReceiver(receiverConfig{blockSize: 4, window: 2, next: 1, rto: fixedRTO(time.Second)})
	r.data(now, 1, 4)
	r.data(now, 2, 4)
	ack := r.emit(now)
	want := slices.Clone(ack)
	r.data(now, 3, 4)
	r.data(now, 4, 1)
	if !bytes.Equal(ack, want) {
		t.Fatalf("emitted ACK changed to %q", ack)
	}
	s := newSender(senderConfig{blockSize: 4, window: 2, src: &octetSource{f: patternFile{size: 100}}, first: 1, rto: fixedRTO(time.Second)})
	out := s.emit(now)
	wantOut := [][]byte{slices.Clone(out[0]), slices.Clone(out[1])}
	s.ack(now, 1)
	s.ack(now, 2)
	s.timeout(now.Add(time.Hour))
	for i := range out {
		if !bytes.Equal(out[i], wantOut[i]) {
			t.Fatalf("emitted DATA %d changed", i)
		}
	}
}

// TestPairFileSource runs transfers whose sender reads a real file with
// preadv, a window at a time, across sizes, windows and rollover.
func TestPairFileSource(t *testing.T) {
	dir := t.TempDir()
	for _, size := range []int64{0, 7, 512, 4096, 100_000, 65540*8 + 3} {
		p := filepath.Join(dir, fmt.Sprint(size))
		writePattern(t, dir, fmt.Sprint(size), size)
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := newOctetSource(f, 0).(batchSource); !ok {
			t.Fatal("no batch reads for a file")
		}
		for _, bs := range []int{8, 512, 1428} {
			for _, w := range []int{1, 3, 16} {
				first := uint64(1)
				if size > 500_000 && bs == 8 {
					first = 65500
				}
				res := runPair(t, pairConfig{size: size, bs: bs, window: w, file: f, first: first, prefetch: w != 3, link: link{latency: time.Millisecond}}, false)
				from := int64(first-1) * int64(bs)
				if res.sndErr != nil || res.rcvErr != nil || res.hash != patternHash(min(from, size), size) {
					t.Fatalf("size %d bs %d w %d: %v %v", size, bs, w, res.sndErr, res.rcvErr)
				}
			}
		}
		f.Close()
	}
}

// A resumed sender sends a wide first window from its checkpoint; a client
// further ahead than that acknowledges its own block, and the transfer
// moves there (an octet source seeks, a netascii one converts its way
// there), then continues with the negotiated window. An ACK beyond the
// file's end moves nothing.
func TestResumedSenderJumpsToAClientAhead(t *testing.T) {
	const bs, ckpt = 4, 10
	f := patternFile{size: 4000}
	for _, mode := range []string{ModeOctet, ModeNetascii} {
		t.Run(mode, func(t *testing.T) {
			ref := referenceBlocks(f, mode, bs)
			now := time.Unix(0, 0)
			s := newSender(senderConfig{blockSize: bs, window: 8, src: resumeSource(f, mode, ckpt, bs), first: ckpt + 1, rto: fixedRTO(time.Second), maxRetries: 3, prefetch: true})
			s.resumed, s.restoreWindow = true, 1
			if mode == ModeOctet {
				s.lastBlock = uint64(len(ref))
			}
			out := s.emit(now)
			if len(out) != 8 || !bytes.Equal(out[0][:4], []byte{0, 3, 0, 11}) || !bytes.Equal(out[0][4:], ref[10]) {
				t.Fatalf("resume window: %d datagrams, first %q", len(out), out[0])
			}
			if ev := s.ack(now, uint16(len(ref)+5)); ev != evNone {
				t.Fatalf("an ACK beyond the last block: %v", ev)
			}
			if s.lastBlock != uint64(len(ref)) { // netascii: found by converting, once
				t.Fatalf("after an ACK beyond the end the last block is %d, want %d", s.lastBlock, len(ref))
			}
			if ev := s.ack(now, 500); ev != evProgress { // far beyond block 18
				t.Fatalf("ack 500: %v", ev)
			}
			for k := 501; k <= 503; k++ {
				out = s.emit(now)
				if len(out) != 1 || int(out[0][2])<<8|int(out[0][3]) != k || !bytes.Equal(out[0][4:], ref[k-1]) {
					t.Fatalf("after the jump: %d datagrams, %q, want block %d", len(out), out[0], k)
				}
				s.ack(now, uint16(k))
			}
			if ev := s.ack(now, 2000); ev != evNone { // the window is back to 1: no more jumps
				t.Fatalf("a second jump: %v", ev)
			}
		})
	}
}

// A sender resumed from a transfer's Begin record (block 0) with options
// sends nothing, not the OACK (a client past it would start over or
// abort), until the client speaks: its ACK of a later block moves the
// transfer there, ACK 0 starts it at DATA 1; its silence only counts
// down the retries.
func TestQuietResumeWaitsForTheClient(t *testing.T) {
	const bs = 4
	f := patternFile{size: 4000}
	ref := referenceBlocks(f, ModeOctet, bs)
	now := time.Unix(0, 0)
	quiet := func() *sender {
		s := newSender(senderConfig{blockSize: bs, window: 1, src: resumeSource(f, ModeOctet, 0, bs), oack: []byte{0, 6, 'x', 0, '1', 0},
			first: 1, rto: fixedRTO(time.Second), maxRetries: 2, prefetch: true})
		s.resumed, s.quiet, s.heard, s.lastBlock = true, true, true, uint64(len(ref))
		return s
	}
	s := quiet()
	for i := range 3 {
		if out := s.emit(now); len(out) != 0 {
			t.Fatalf("emit %d: %q, want nothing", i, out)
		}
		now = s.nextDeadline()
		if ev := s.timeout(now); i < 2 && ev != evProgress || i == 2 && ev != evFailed {
			t.Fatalf("timeout %d: %v", i, ev)
		}
	}
	s = quiet()
	s.emit(now)
	if ev := s.ack(now, uint16(len(ref)+5)); ev != evNone || s.base != 0 {
		t.Fatalf("an ACK beyond the last block: %v, base %d", ev, s.base)
	}
	if ev := s.ack(now, 40); ev != evProgress {
		t.Fatalf("ack 40: %v", ev)
	}
	if out := s.emit(now); len(out) != 1 || !bytes.Equal(out[0][:4], []byte{0, 3, 0, 41}) || !bytes.Equal(out[0][4:], ref[40]) {
		t.Fatalf("after ACK 40: %q, want DATA 41", out)
	}
	s = quiet()
	s.emit(now)
	if ev := s.ack(now, 0); ev != evProgress {
		t.Fatalf("ack 0: %v", ev)
	}
	if out := s.emit(now); len(out) != 1 || !bytes.Equal(out[0][:4], []byte{0, 3, 0, 1}) || !bytes.Equal(out[0][4:], ref[0]) {
		t.Fatalf("after ACK 0: %q, want DATA 1", out)
	}
}

// A resumed lock-step sender probes for its client one block at a time,
// two blocks apart, and moves to the client's block on the first ACK; the
// client model is RFC 1350's (tftp-hpa, curl): it takes the block it waits
// for, acknowledges again a duplicate of its last block, and ignores the
// rest. Octet and netascii: a netascii block's place in the file is only
// known by converting what comes before it, and its last block only when
// the conversion reaches it.
func TestResumedSenderProbesForItsClient(t *testing.T) {
	const bs = 4
	f := patternFile{size: 4000}
	for _, c := range []struct {
		mode string
		ckpt uint64 // two: both parities of the probes against the last block
	}{{ModeOctet, 10}, {ModeOctet, 11}, {ModeNetascii, 10}, {ModeNetascii, 11}} {
		mode, ckpt := c.mode, c.ckpt
		ref := referenceBlocks(f, mode, bs) // ref[k-1] is block k
		nblocks := uint64(len(ref))
		for _, tc := range []struct {
			name         string
			client       uint64 // the last block the client has
			span         uint64
			wantFallBack bool
		}{
			{"at the checkpoint", ckpt, 100, false},
			{"one ahead", ckpt + 1, 100, false},
			{"two ahead", ckpt + 2, 100, false},
			{"far ahead", 310, 1000, false},
			{"has every block but the last", nblocks - 1, 2 * nblocks, false},
			{"has every block", nblocks, 2 * nblocks, false}, // the last ACK was lost with the server
			{"beyond the span", 500, 100, true},
		} {
			t.Run(fmt.Sprintf("%s/checkpoint-%d/%s", mode, ckpt, tc.name), func(t *testing.T) {
				now := time.Unix(0, 0)
				s := newSender(senderConfig{blockSize: bs, window: 1, src: resumeSource(f, mode, ckpt, bs), first: ckpt + 1, rto: fixedRTO(time.Second), maxRetries: 3, prefetch: true})
				s.resumed = true
				if mode == ModeOctet {
					s.lastBlock = nblocks // as resume sets it; netascii finds it
				}
				s.startProbe(tc.span)
				client := tc.client
				for i := 0; i < 5000 && s.probe != nil; i++ {
					out := s.emit(now)
					if len(out) != 1 {
						t.Fatalf("probe %d: %d datagrams", i, len(out))
					}
					k := uint64(out[0][2])<<8 | uint64(out[0][3])
					if k == 0 || k > nblocks || !bytes.Equal(out[0][4:], ref[k-1]) {
						t.Fatalf("probe of block %d carries the wrong bytes", k)
					}
					switch {
					case k == client+1: // takes it
						client++
						s.ack(now, uint16(client))
					case k == client: // a duplicate: acknowledged again
						s.ack(now, uint16(client))
					default: // ignored: the probe goes on
						now = now.Add(4 * probeGap)
						s.timeout(now)
					}
				}
				// Probes go ckpt+1, ckpt+3, ... and a pass ends on the last
				// block: the first at or past the client's block finds it;
				// beyond the span, two passes of span/2+1 find nothing.
				want := (tc.client-ckpt)/2 + 1
				if tc.wantFallBack {
					want = 2 * (tc.span/2 + 1)
				}
				if s.probes != want {
					t.Errorf("probes: %d, want %d", s.probes, want)
				}
				if client == nblocks || s.phase == phaseDone {
					if client != nblocks || s.phase != phaseDone {
						t.Fatalf("phase %v, the client has %d of %d blocks", s.phase, client, nblocks)
					}
					return
				}
				out := s.emit(now)
				if len(out) != 1 {
					t.Fatalf("after the probe: %d datagrams", len(out))
				}
				k := uint64(out[0][2])<<8 | uint64(out[0][3])
				if tc.wantFallBack {
					if k != ckpt+1 || !bytes.Equal(out[0][4:], ref[k-1]) {
						t.Fatalf("after an unanswered probe the sender sends block %d, want the checkpoint's next, %d", k, ckpt+1)
					}
					// The client's own retransmitted ACK still moves it there.
					if ev := s.ack(now, uint16(client)); ev != evProgress || s.base != client+1 {
						t.Fatalf("the client's ACK %d: %v, base %d", client, ev, s.base)
					}
					out = s.emit(now)
					k = uint64(out[0][2])<<8 | uint64(out[0][3])
				}
				if k != client+1 || !bytes.Equal(out[0][4:], ref[k-1]) {
					t.Fatalf("after the probe the sender sends block %d (right bytes: %v), the client waits for %d", k, bytes.Equal(out[0][4:], ref[k-1]), client+1)
				}
				// The rest of the file follows from there, intact.
				for k < nblocks {
					if s.ack(now, uint16(k)) != evProgress {
						t.Fatalf("ack %d refused", k)
					}
					out = s.emit(now)
					k = uint64(out[0][2])<<8 | uint64(out[0][3])
					if !bytes.Equal(out[0][4:], ref[k-1]) {
						t.Fatalf("block %d carries the wrong bytes", k)
					}
				}
				if s.ack(now, uint16(nblocks)) != evDone {
					t.Fatal("the last ACK did not end the transfer")
				}
			})
		}
	}
}

// referenceBlocks returns f's DATA payloads in mode, block by block.
func referenceBlocks(f io.ReaderAt, mode string, bs int) [][]byte {
	var src blockSource = &octetSource{f: f}
	if mode == ModeNetascii {
		src = newNetasciiSource(f, sourcePos{})
	}
	var blocks [][]byte
	for {
		b := make([]byte, bs)
		n, err := src.readBlock(b)
		if err != nil {
			panic(err)
		}
		blocks = append(blocks, b[:n])
		if n < bs {
			return blocks
		}
	}
}

// resumeSource returns a source for f in mode at the start of block
// ckpt+1, as a checkpoint records it.
func resumeSource(f io.ReaderAt, mode string, ckpt uint64, bs int) seekSource {
	if mode == ModeOctet {
		return &octetSource{f: f, off: int64(ckpt) * int64(bs)}
	}
	walk := newNetasciiSource(f, sourcePos{})
	if _, _, err := walk.skip(ckpt, bs); err != nil {
		panic(err)
	}
	return newNetasciiSource(f, walk.pos())
}

// The client's last ACK, reaching a resumed server while it probes (the
// client had the whole file), ends the transfer, and the sender knows its
// last block (the resume's lag metric reads it), netascii too.
func TestResumedSenderLastAckWhileProbing(t *testing.T) {
	const bs, ckpt = 4, 10
	f := patternFile{size: 4000}
	for _, mode := range []string{ModeOctet, ModeNetascii} {
		n := uint64(len(referenceBlocks(f, mode, bs)))
		s := newSender(senderConfig{blockSize: bs, window: 1, src: resumeSource(f, mode, ckpt, bs), first: ckpt + 1, rto: fixedRTO(time.Second), maxRetries: 3, prefetch: true})
		s.resumed = true
		if mode == ModeOctet {
			s.lastBlock = n
		}
		s.startProbe(100)
		now := time.Unix(0, 0)
		if out := s.emit(now); len(out) != 1 {
			t.Fatalf("%s: first probe: %d datagrams", mode, len(out))
		}
		if ev := s.ack(now, uint16(n)); ev != evDone || s.lastBlock != n {
			t.Fatalf("%s: the last ACK while probing: %v, last block %d, want done at %d", mode, ev, s.lastBlock, n)
		}
	}
}

// TestSenderSpuriousRetransmission: a lock-step block whose ACK comes late
// (after its retransmission) and then once more for the copy was not lost:
// the estimate learns its round trip and the floor rises, so that the next
// late block is not sent twice. A retransmission that was needed (one ACK)
// changes neither.
func TestSenderSpuriousRetransmission(t *testing.T) {
	for _, late := range []bool{true, false} {
		now := time.Unix(0, 0)
		s := newSender(senderConfig{blockSize: 512, window: 1, src: &octetSource{f: patternFile{size: 1 << 20}}, first: 1,
			rto: adaptiveRTO(time.Second, 50*time.Millisecond, time.Second), maxRetries: 5})
		// Fast round trips: the estimate sits at its 50 ms floor.
		for i := uint16(1); i <= 20; i++ {
			s.emit(now)
			now = now.Add(time.Millisecond)
			s.ack(now, i)
		}
		if w := s.rto.wait(); w != 50*time.Millisecond {
			t.Fatalf("estimate %v, want the floor", w)
		}
		s.emit(now) // block 21
		now = now.Add(50 * time.Millisecond)
		s.timeout(now)
		s.emit(now) // block 21 again
		now = now.Add(30 * time.Millisecond)
		s.ack(now, 21) // 80 ms after its first send
		s.emit(now)    // block 22
		if late {
			s.ack(now, 21) // the copy's ACK: the first one arrived
		}
		w := s.rto.wait()
		switch {
		case late && (s.rto.lo != 100*time.Millisecond || w < 100*time.Millisecond):
			t.Fatalf("after a late block: floor %v, wait %v; want a floor of 5/4 of 80 ms", s.rto.lo, w)
		case !late && (s.rto.lo != 50*time.Millisecond || w != 50*time.Millisecond):
			t.Fatalf("after a loss: floor %v, wait %v; want 50 ms", s.rto.lo, w)
		}
	}
}
