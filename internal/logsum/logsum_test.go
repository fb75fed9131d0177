package logsum_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/logsum"
)

func TestRepeatedRecordsAreSummarised(t *testing.T) {
	var buf bytes.Buffer
	h := logsum.New(slog.NewTextHandler(&buf, nil), logsum.Config{Burst: 3, Interval: time.Hour})
	log := slog.New(h)
	child := log.With("xfer", 1) // derived loggers share the counts
	for i := range 1000 {
		child.Warn("refused", "i", i)
		if i%100 == 0 {
			log.Info("other")
		}
	}
	h.Flush()
	out := buf.String()
	if n := strings.Count(out, "msg=refused"); n != 3 {
		t.Errorf("%d refused lines, want 3:\n%s", n, out)
	}
	if n := strings.Count(out, "msg=other"); n != 3 {
		t.Errorf("%d other lines, want 3", n)
	}
	if !strings.Contains(out, `message=refused level=WARN suppressed=997`) || !strings.Contains(out, `message=other level=INFO suppressed=7`) {
		t.Errorf("summaries missing:\n%s", out)
	}
	if strings.Count(out, "\n") != 8 {
		t.Errorf("want 8 lines:\n%s", out)
	}
}

func TestIntervalRollsAndNegativeBurstPasses(t *testing.T) {
	var buf bytes.Buffer
	clock := time.Now()
	now := func() time.Time { return clock }
	log := slog.New(logsum.New(slog.NewTextHandler(&buf, nil), logsum.Config{Burst: 1, Interval: time.Millisecond, Now: now}))
	log.Warn("a")
	log.Warn("a")
	clock = clock.Add(5 * time.Millisecond)
	log.Warn("a") // a new interval: written, after the summary of the last
	out := buf.String()
	if strings.Count(out, "msg=a") != 2 || !strings.Contains(out, "suppressed=1") {
		t.Fatalf("got:\n%s", out)
	}
	buf.Reset()
	all := slog.New(logsum.New(slog.NewTextHandler(&buf, nil), logsum.Config{Burst: -1}))
	for range 500 {
		all.Warn("b")
	}
	if n := strings.Count(buf.String(), "msg=b"); n != 500 {
		t.Fatalf("negative burst: %d lines", n)
	}
}

func TestConcurrentUse(t *testing.T) {
	var mu sync.Mutex
	var buf bytes.Buffer
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return buf.Write(p) })
	log := slog.New(logsum.New(slog.NewTextHandler(w, nil), logsum.Config{Burst: 10}))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			l := log.With("g", g)
			for range 1000 {
				l.Warn("x")
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(buf.String(), "msg=x"); n != 10 {
		t.Fatalf("%d lines, want 10", n)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
