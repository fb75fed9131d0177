package tftp

import "time"

// rto is the retransmission timeout of one side of a transfer. It is fixed
// (the negotiated timeout option, or a configured one) or adaptive: an
// RFC 6298 estimate from round-trip samples, kept within [lo, hi]. Every
// timeout doubles the wait, up to 8 times the estimate; progress resets
// the back-off.
type rto struct {
	cur          time.Duration // the estimate, before back-off
	lo, hi       time.Duration // bounds of the adaptive estimate; lo == 0: fixed
	srtt, rttvar time.Duration
	backoff      uint8
}

const maxBackoff = 3 // doublings: the longest wait is 8 times the estimate

func fixedRTO(d time.Duration) rto { return rto{cur: d} }

// adaptiveRTO starts at initial and adapts within [lo, hi].
func adaptiveRTO(initial, lo, hi time.Duration) rto {
	return rto{cur: initial, lo: max(lo, time.Millisecond), hi: max(hi, lo)}
}

// wait returns how long to wait for an answer before retransmitting.
func (r *rto) wait() time.Duration { return r.cur << r.backoff }

// expired records a timeout.
func (r *rto) expired() {
	if r.backoff < maxBackoff {
		r.backoff++
	}
}

// progress records an answer that moved the transfer forward.
func (r *rto) progress() { r.backoff = 0 }

// lateNotLost records a spurious retransmission: a packet the peer got
// after all, whose answer took d from its first send. Under a boot storm
// (hundreds of lock-step transfers sharing two busy cores) a round trip
// now and then takes several times the usual one, longer than the
// estimate; each retransmission it causes costs a send, a duplicate ACK
// and its receive, and makes the server busier still. So d is a sample
// (the first answer was the original's), and it raises the floor of this
// transfer's estimate to 5/4 d for the rest of the transfer: a path that
// delayed a packet that long will again. A retransmission that was needed
// (a loss: one ACK only) leaves both alone.
func (r *rto) lateNotLost(d time.Duration) {
	if r.lo == 0 {
		return
	}
	r.lo = min(max(r.lo, d+d/4), r.hi)
	r.sample(d)
}

// sample records the round-trip time of a packet that was sent once
// (Karn's algorithm: never sample a retransmitted one).
func (r *rto) sample(d time.Duration) {
	if r.lo == 0 {
		return
	}
	if r.srtt == 0 {
		r.srtt, r.rttvar = d, d/2
	} else {
		diff := r.srtt - d
		if diff < 0 {
			diff = -diff
		}
		r.rttvar = (3*r.rttvar + diff) / 4
		r.srtt = (7*r.srtt + d) / 8
	}
	r.cur = min(max(r.srtt+4*r.rttvar, r.lo), r.hi)
}
