package tftp

import (
	"fmt"
	"strings"
)

// Rollover says which block number follows block 65535 in a transfer of
// more than 65535 blocks. RFC 1350 does not say; every common server and
// client wraps to 0.
type Rollover uint8

const (
	// RolloverZero numbers blocks ... 65534, 65535, 0, 1, ... (the common
	// practice, and the default).
	RolloverZero Rollover = iota
	// RolloverOne numbers blocks ... 65534, 65535, 1, 2, ... (what some
	// older clients expect).
	RolloverOne
	// RolloverRefuse refuses transfers that need more than 65535 blocks:
	// a download whose size is known to be too large is refused before it
	// starts with ERROR 3, and any transfer that reaches block 65535
	// without ending stops with ERROR 3.
	RolloverRefuse
)

func (r Rollover) String() string {
	switch r {
	case RolloverZero:
		return "zero"
	case RolloverOne:
		return "one"
	case RolloverRefuse:
		return "refuse"
	}
	return fmt.Sprintf("Rollover(%d)", uint8(r))
}

// ParseRollover parses the names String returns.
func ParseRollover(s string) (Rollover, error) {
	for _, r := range []Rollover{RolloverZero, RolloverOne, RolloverRefuse} {
		if strings.EqualFold(s, r.String()) || s == fmt.Sprint(uint8(r)) {
			return r, nil
		}
	}
	return 0, fmt.Errorf("tftp: unknown rollover policy %q (want zero, one or refuse)", s)
}

// maxBlocksNoRollover is the last block number before the counter wraps.
const maxBlocksNoRollover = 65535

// Block indexes count the blocks of a transfer from 1 without wrapping
// (block 0 is the OACK, or the request's ACK 0); the wire carries their
// low 16 bits, as the Rollover policy maps them.

// wire returns the block number sent on the wire for index i.
func (r Rollover) wire(i uint64) uint16 {
	if r == RolloverOne && i > maxBlocksNoRollover {
		return uint16((i-1)%maxBlocksNoRollover + 1)
	}
	return uint16(i)
}

// index returns the index in [lo, lo+n) whose wire number is w. With n at
// most 65535 there is at most one.
func (r Rollover) index(w uint16, lo, n uint64) (uint64, bool) {
	if n == 0 {
		return 0, false
	}
	if r == RolloverOne {
		if lo == 0 {
			if w == 0 {
				return 0, true
			}
			lo, n = 1, n-1
			if n == 0 {
				return 0, false
			}
		}
		if w == 0 {
			return 0, false
		}
		d := (uint64(w) + maxBlocksNoRollover - uint64(r.wire(lo))) % maxBlocksNoRollover
		if d < n {
			return lo + d, true
		}
		return 0, false
	}
	d := uint64(w - uint16(lo))
	if d < n {
		return lo + d, true
	}
	return 0, false
}

// exceeds reports whether index i is beyond what the policy allows.
func (r Rollover) exceeds(i uint64) bool {
	return r == RolloverRefuse && i > maxBlocksNoRollover
}
