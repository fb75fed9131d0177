package tftp

import (
	"net/netip"
	"strconv"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"
)

// Refusal reasons, the closed set of the reason label of
// ioactor_tftp_requests_refused_total.
const (
	refuseBusy            = "busy"             // MaxTransfers reached
	refuseClientTransfers = "client_transfers" // MaxClientTransfers reached
	refuseClientRate      = "client_rate"      // ClientRate exceeded
	refuseShutdown        = "shutting_down"
)

var refuseReasons = [...]string{refuseBusy, refuseClientTransfers, refuseClientRate, refuseShutdown}

func refuseIndex(r string) int {
	for i, s := range refuseReasons {
		if s == r {
			return i
		}
	}
	return 0
}

// share is what one client (an address, or a network of
// ClientPrefix4/ClientPrefix6 bits) holds: its transfers in progress and
// its token bucket of new requests. Owned by the listener's loop.
type share struct {
	active int
	lim    *rate.Limiter
	warned bool // its refusal was logged since the last sweep
	// refusals bounds the ERRORs that refuse its requests; made on first
	// use.
	refusals *rate.Limiter
}

// refusalRate and refusalBurst bound the refusals one client is told of:
// past them, its refused requests go unanswered (and are counted).
const (
	refusalRate  = 10
	refusalBurst = 20
)

// shares is the listener's table of clients. It is bounded: past
// maxShares clients, the newcomers share one overflow entry (so a flood of
// forged addresses cannot grow it without end, and gets one share between
// all of them), and a sweep drops the idle ones.
type shares struct {
	m          map[netip.Prefix]*share
	overflow   share
	bits4      int
	bits6      int
	rate       rate.Limit
	burst      int
	maxPerPeer int
}

const (
	maxShares     = 1 << 16
	sweepInterval = 10 * time.Second
)

func newShares(cfg *ServerConfig) *shares {
	s := &shares{
		m: make(map[netip.Prefix]*share), bits4: cfg.ClientPrefix4, bits6: cfg.ClientPrefix6,
		rate: rate.Inf, burst: cfg.ClientBurst, maxPerPeer: cfg.MaxClientTransfers,
	}
	if cfg.ClientRate > 0 {
		s.rate = rate.Limit(cfg.ClientRate)
	}
	s.overflow.lim = rate.NewLimiter(s.rate, s.burst)
	return s
}

// key is the client a source address belongs to.
func (s *shares) key(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	bits := s.bits6
	if a.Is4() {
		bits = s.bits4
	}
	p, err := a.Prefix(bits)
	if err != nil {
		return netip.PrefixFrom(a, a.BitLen())
	}
	return p
}

// get returns the share of the client at a, creating it.
func (s *shares) get(a netip.Addr) *share {
	k := s.key(a)
	if sh := s.m[k]; sh != nil {
		return sh
	}
	if len(s.m) >= maxShares {
		return &s.overflow
	}
	sh := &share{lim: rate.NewLimiter(s.rate, s.burst)}
	s.m[k] = sh
	return sh
}

// admit decides on a new request from a: "" to serve it, or the refusal's
// reason.
func (s *shares) admit(now time.Time, sh *share) string {
	if s.maxPerPeer > 0 && sh.active >= s.maxPerPeer {
		return refuseClientTransfers
	}
	if !sh.lim.AllowN(now, 1) {
		return refuseClientRate
	}
	return ""
}

// sweep forgets the clients that hold nothing and have their full burst
// back.
func (s *shares) sweep(now time.Time) {
	for k, sh := range s.m {
		sh.warned = false
		if sh.active == 0 && sh.lim.TokensAt(now) >= float64(s.burst) && (sh.refusals == nil || sh.refusals.TokensAt(now) >= refusalBurst) {
			delete(s.m, k)
		}
	}
	s.overflow.warned = false
}

// strangerErrors is how many ERROR packets one transfer port sends to
// strangers, in a burst, and strangerRate how many a second after that.
const (
	strangerErrors = 4
	strangerRate   = 1
)

// allowError reports whether an ERROR to a stranger may leave now: within
// the server's ErrorRate and, for a transfer's port (lim not nil), within
// the transfer's own allowance.
func (s *Server) allowError(now time.Time, lim *rate.Limiter) bool {
	if lim != nil && !lim.AllowN(now, 1) {
		return false
	}
	if s.errLim != nil && !s.errLim.AllowN(now, 1) {
		return false
	}
	return true
}

// maxLoggedName bounds the bytes of a file name in a log line, and
// maxLoggedErr those of an error: an attacker's 65,000-byte name must not
// make a 130 KB line.
const (
	maxLoggedName = 64
	maxLoggedErr  = 160
)

// logName returns name for a log line, cut to maxLoggedName bytes with the
// length it had. It does not quote: slog's handlers quote and escape what
// needs it (control bytes, spaces, quotes), and quoting here as well made
// the text handler print the name twice quoted.
func logName(name string) string {
	if len(name) <= maxLoggedName {
		return name
	}
	return truncateUTF8(name, maxLoggedName) + "…(" + strconv.Itoa(len(name)) + " bytes)"
}

// logErr returns err's text for a log line, cut to maxLoggedErr bytes (an
// error may quote a file name).
func logErr(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) <= maxLoggedErr {
		return s
	}
	return truncateUTF8(s, maxLoggedErr) + "…"
}

// truncateUTF8 cuts s to at most n bytes, not inside a UTF-8 sequence.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for i := n; i > n-utf8.UTFMax && i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return s[:i]
		}
	}
	return s[:n]
}

// logOptions returns a request's options for a log line, bounded.
func logOptions(opts []Option) string {
	b := make([]byte, 0, 64)
	for i, o := range opts {
		if len(b) > maxLoggedErr {
			b = append(b, "…"...)
			break
		}
		if i > 0 {
			b = append(b, ' ')
		}
		b = strconv.AppendQuote(b, truncateUTF8(o.Name, 32))
		b = append(b, '=')
		b = strconv.AppendQuote(b, truncateUTF8(o.Value, 32))
	}
	return string(b)
}
