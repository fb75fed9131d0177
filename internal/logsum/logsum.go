// Package logsum wraps a [slog.Handler] so that no kind of log record can
// flood the log: past a burst of records with the same level and message
// in one interval, the others are counted, not written, and one summary
// record per kind says how many were left out when the interval ends.
//
// It bounds what an attacker can make a server write by sending packets
// that each draw the same warning. The messages are the program's own
// constant strings, so the table of kinds stays small; attributes (which
// may carry what a stranger sent) play no part in the kind.
//
// # Usage
//
//	h := logsum.New(slog.NewTextHandler(os.Stderr, nil), logsum.Config{})
//	log := slog.New(h)
//	defer h.Flush() // the summaries of the last interval
//
// Loggers derived with With or WithGroup share their parent's counts.
// A summary is written with the next record after its interval, or by
// Flush; no goroutine is started.
package logsum

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Config configures a Handler. Zero means the default.
type Config struct {
	// Burst is how many records of one kind are written per interval; 0
	// means 100, negative means no limit (the handler passes everything).
	Burst int
	// Interval is the length of one counting interval; 0 means 10 s.
	Interval time.Duration
	// Now reads the clock that intervals run on; nil means time.Now. Tests
	// set it.
	Now func() time.Time
}

// SummaryMessage is the message of a summary record. Its attributes are
// "message" (the records' message), "level", "suppressed" (how many) and
// "interval".
const SummaryMessage = "log: repeated messages suppressed"

// Handler is a slog.Handler that summarises repeated records; see the
// package doc. It is safe for concurrent use.
type Handler struct {
	next slog.Handler
	st   *state
}

type kindKey struct {
	level slog.Level
	msg   string
}

type state struct {
	base     slog.Handler // summaries go here, without the With attributes
	burst    int
	interval time.Duration
	now      func() time.Time

	mu    sync.Mutex
	start time.Time
	kinds map[kindKey]int // records of the current interval, by kind
}

// New returns a Handler that passes to next what cfg allows.
func New(next slog.Handler, cfg Config) *Handler {
	if cfg.Burst == 0 {
		cfg.Burst = 100
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Handler{next: next, st: &state{base: next, burst: cfg.Burst, interval: cfg.Interval, now: cfg.Now, kinds: make(map[kindKey]int)}}
}

// Enabled reports whether the wrapped handler takes records of level l.
func (h *Handler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

// Handle writes r, unless its kind already had its burst in this
// interval.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	st := h.st
	if st.burst < 0 {
		return h.next.Handle(ctx, r)
	}
	st.mu.Lock()
	// The interval runs on the clock read under the lock, not on the
	// records' times: concurrent loggers take their records' times before
	// they queue for the lock, out of order, and an earlier time arriving
	// after a later one must not start a new interval (it did: more than
	// Burst records of a kind got through).
	now := st.now()
	var sums []slog.Record
	if st.start.IsZero() || now.Sub(st.start) >= st.interval {
		sums = st.rollLocked(now)
	}
	k := kindKey{r.Level, r.Message}
	n := st.kinds[k] + 1
	st.kinds[k] = n
	st.mu.Unlock()
	for _, s := range sums {
		st.base.Handle(ctx, s)
	}
	if n > st.burst {
		return nil
	}
	return h.next.Handle(ctx, r)
}

// rollLocked ends the interval at now: it returns the summaries of the
// kinds that went over their burst, and starts counting again.
func (st *state) rollLocked(now time.Time) []slog.Record {
	var sums []slog.Record
	for k, n := range st.kinds {
		if n > st.burst {
			s := slog.NewRecord(now, max(k.level, slog.LevelWarn), SummaryMessage, 0)
			s.AddAttrs(slog.String("message", k.msg), slog.String("level", k.level.String()),
				slog.Int("suppressed", n-st.burst), slog.Duration("interval", st.interval))
			sums = append(sums, s)
		}
	}
	clear(st.kinds)
	st.start = now
	return sums
}

// Flush writes the summaries of the current interval and starts a new
// one. Call it before the program exits.
func (h *Handler) Flush() {
	st := h.st
	st.mu.Lock()
	sums := st.rollLocked(time.Now())
	st.mu.Unlock()
	for _, s := range sums {
		st.base.Handle(context.Background(), s)
	}
}

// WithAttrs returns a Handler with attrs that shares h's counts.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &Handler{next: h.next.WithAttrs(attrs), st: h.st}
}

// WithGroup returns a Handler with the group that shares h's counts.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(name), st: h.st}
}
