package tftp

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// Option names this package negotiates, in their canonical lowercase form.
const (
	OptBlockSize  = "blksize"    // RFC 2348
	OptTimeout    = "timeout"    // RFC 2349
	OptTSize      = "tsize"      // RFC 2349
	OptWindowSize = "windowsize" // RFC 7440
)

// Indexes into knownOptions.
const (
	optBlockSize = iota
	optTimeout
	optTSize
	optWindowSize
	numOptions
)

var knownOptions = [numOptions]string{
	optBlockSize:  OptBlockSize,
	optTimeout:    OptTimeout,
	optTSize:      OptTSize,
	optWindowSize: OptWindowSize,
}

// DefaultMaxWindowSize is the window size cap of a zero [Limits]. A window
// is sent as one burst, so the cap bounds what a single ACK releases onto
// the network: 16 blocks of 1468 bytes (an Ethernet-sized block) are about
// 23 KiB, which gets most of the RFC 7440 speed-up without overrunning
// default socket buffers. Raise it for paths with a large bandwidth-delay
// product.
const DefaultMaxWindowSize = 16

// Ranges of RFC 7440 and RFC 2349.
const (
	maxWindowSize = 65535
	minTimeout    = 1 * time.Second
	maxTimeout    = 255 * time.Second
)

// Limits bounds what [Negotiate] accepts. The zero value accepts every
// option within its RFC range, except that window sizes are capped at
// [DefaultMaxWindowSize].
type Limits struct {
	// MaxBlockSize caps blksize: a larger request is answered with
	// MaxBlockSize, as RFC 2348 allows. 0 means [MaxBlockSize] (65464);
	// other values are clamped to [MinBlockSize, MaxBlockSize]. Negative
	// refuses the option, so transfers use 512-byte blocks.
	MaxBlockSize int
	// MaxWindowSize caps windowsize: a larger request is answered with
	// MaxWindowSize. 0 means [DefaultMaxWindowSize]; values above 65535
	// mean 65535. Negative refuses the option, so transfers are lock-step.
	MaxWindowSize int
	// MinTimeout and MaxTimeout bound the timeout option, which a server
	// must accept as requested or not at all (RFC 2349). 0 means 1 s and
	// 255 s, the RFC range. A negative MaxTimeout refuses the option.
	MinTimeout, MaxTimeout time.Duration
}

func (l Limits) maxBlockSize() int {
	switch {
	case l.MaxBlockSize < 0:
		return -1
	case l.MaxBlockSize == 0:
		return MaxBlockSize
	}
	return min(max(l.MaxBlockSize, MinBlockSize), MaxBlockSize)
}

func (l Limits) maxWindowSize() int {
	switch {
	case l.MaxWindowSize < 0:
		return -1
	case l.MaxWindowSize == 0:
		return DefaultMaxWindowSize
	}
	return min(l.MaxWindowSize, maxWindowSize)
}

func (l Limits) timeoutRange() (lo, hi time.Duration) {
	lo, hi = minTimeout, maxTimeout
	if l.MinTimeout > 0 {
		lo = l.MinTimeout
	}
	if l.MaxTimeout != 0 {
		hi = l.MaxTimeout
	}
	return lo, hi
}

// Negotiated holds the transfer parameters after option negotiation. The
// zero-valued fields of [Negotiated] are never meaningful: use [Negotiate]
// or [ParseOACKReply], whose results start from the RFC 1350 defaults.
type Negotiated struct {
	BlockSize  int           // bytes per DATA payload; 512 unless negotiated
	WindowSize int           // DATA packets per ACK; 1 unless negotiated
	Timeout    time.Duration // retransmission timeout; 0 unless negotiated
	// TSize is the transfer size in bytes: the file size a server announces
	// for an RRQ, or the size a client announces for a WRQ (a server may
	// refuse an upload that is too big). -1 unless negotiated.
	TSize int64
}

func defaultNegotiated() Negotiated {
	return Negotiated{BlockSize: DefaultBlockSize, WindowSize: 1, TSize: -1}
}

// Negotiate is the server side of option negotiation (RFC 2347). It
// returns the transfer parameters for a request with operation op and
// options opts, and the options to send in an OACK: those accepted, in the
// order the client sent them, with canonical names and values. The OACK is
// nil if no option was accepted; the server then starts the transfer as
// RFC 1350 describes.
//
// fileSize is the size of the file an RRQ reads, answered to the tsize
// option; pass -1 when it is unknown (for example in netascii mode, where
// the size on the wire differs) to leave tsize out. It is not used for a
// WRQ, whose tsize is the client's and is echoed.
//
// Unknown options are ignored, as are options with a value that is not a
// plain decimal number ("abc", "-1", "1e3", " 512", "+512", "") or is out
// of range:
//
//   - blksize below 8; a request above the limit gets the limit;
//   - timeout outside 1..255 seconds or outside the [Limits] range;
//   - windowsize 0; a request above the limit gets the limit.
//
// Of options named more than once (ignoring case), the first counts.
func Negotiate(op Opcode, opts []Option, lim Limits, fileSize int64) (Negotiated, []Option) {
	n := defaultNegotiated()
	if op != OpRRQ && op != OpWRQ {
		return n, nil
	}
	var oack []Option
	var seen [numOptions]bool
	for _, o := range opts {
		k := knownOption(o.Name)
		if k < 0 || seen[k] {
			continue
		}
		seen[k] = true
		v, ok := parseDecimal(o.Value)
		if !ok {
			continue
		}
		switch k {
		case optBlockSize:
			limit := lim.maxBlockSize()
			if limit < 0 || v < MinBlockSize {
				continue
			}
			v = min(v, int64(limit))
			n.BlockSize = int(v)
		case optTimeout:
			lo, hi := lim.timeoutRange()
			if v < 1 || v > int64(maxTimeout/time.Second) {
				continue
			}
			t := time.Duration(v) * time.Second
			if t < lo || t > hi {
				continue
			}
			n.Timeout = t
		case optTSize:
			if op == OpRRQ {
				if fileSize < 0 {
					continue
				}
				v = fileSize
			}
			n.TSize = v
		case optWindowSize:
			limit := lim.maxWindowSize()
			if limit < 0 || v < 1 {
				continue
			}
			v = min(v, int64(limit))
			n.WindowSize = int(v)
		}
		oack = append(oack, Option{Name: knownOptions[k], Value: strconv.FormatInt(v, 10)})
	}
	return n, oack
}

// ParseOACKReply is the client side of option negotiation: it checks the
// options of a server's OACK against those the client requested and
// returns the transfer parameters. It returns an error wrapping
// [ErrBadOACK], after which the client must send ERROR
// [ErrOptionRefused], if the OACK holds an option the client did not
// request or names one twice, or a value that is not a decimal number or
// is not allowed: blksize outside 8..65464 or above the request,
// windowsize outside 1..65535 or above the request, timeout different from
// the request. Any tsize is accepted. Options the client requested that
// this package does not know are accepted and otherwise ignored.
func ParseOACKReply(requested, oack []Option) (Negotiated, error) {
	n := defaultNegotiated()
	var seen [numOptions]bool
	for _, o := range oack {
		req, ok := findOption(requested, o.Name)
		if !ok {
			return Negotiated{}, fmt.Errorf("%w: option %q not requested", ErrBadOACK, o.Name)
		}
		k := knownOption(o.Name)
		if k < 0 {
			continue
		}
		if seen[k] {
			return Negotiated{}, fmt.Errorf("%w: option %q acknowledged twice", ErrBadOACK, o.Name)
		}
		seen[k] = true
		v, ok := parseDecimal(o.Value)
		r, rok := parseDecimal(req.Value)
		switch {
		case !ok:
			return Negotiated{}, fmt.Errorf("%w: option %q has bad value %q", ErrBadOACK, o.Name, o.Value)
		case k == optTSize:
			n.TSize = v
			continue
		case !rok:
			return Negotiated{}, fmt.Errorf("%w: option %q acknowledged, but its requested value %q is bad", ErrBadOACK, o.Name, req.Value)
		}
		switch k {
		case optBlockSize:
			ok = v >= MinBlockSize && v <= MaxBlockSize && v <= r
			n.BlockSize = int(v)
		case optWindowSize:
			ok = v >= 1 && v <= maxWindowSize && v <= r
			n.WindowSize = int(v)
		case optTimeout:
			ok = v == r && v >= 1 && v <= int64(maxTimeout/time.Second)
			n.Timeout = time.Duration(v) * time.Second
		}
		if !ok {
			return Negotiated{}, fmt.Errorf("%w: option %q value %d not allowed for requested %d", ErrBadOACK, o.Name, v, r)
		}
	}
	return n, nil
}

// knownOption returns the index in knownOptions of name, ignoring ASCII
// case, or -1.
func knownOption(name string) int {
	for i, known := range knownOptions {
		if equalFold(name, known) {
			return i
		}
	}
	return -1
}

// findOption returns the first option named name, ignoring ASCII case.
func findOption(opts []Option, name string) (Option, bool) {
	for _, o := range opts {
		if equalFold(o.Name, name) {
			return o, true
		}
	}
	return Option{}, false
}

// parseDecimal parses s as a non-negative decimal integer: ASCII digits
// only, no sign, space or exponent, no overflow of int64.
func parseDecimal(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	var v int64
	for i := range len(s) {
		d := int64(s[i]) - '0'
		if d < 0 || d > 9 || v > (math.MaxInt64-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}
