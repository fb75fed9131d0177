package tftp

import (
	"testing"
	"time"
)

// TestCheckpointEveryGrowsWithTransfers: a few transfers checkpoint every
// CheckpointInterval; many stretch it by checkpointPerTransfer each, so
// that a loop's checkpoints add up to about 1,000 a second, up to
// checkpointMaxInterval; a longer configured interval is kept.
func TestCheckpointEveryGrowsWithTransfers(t *testing.T) {
	const ms = time.Millisecond
	for _, c := range []struct {
		interval time.Duration
		active   int64
		want     time.Duration
	}{
		{20 * ms, 0, 20 * ms},
		{20 * ms, 1, 20 * ms},
		{20 * ms, 20, 20 * ms},
		{20 * ms, 200, 200 * ms},
		{20 * ms, 1000, time.Second},
		{20 * ms, 100000, time.Second},
		{5 * time.Second, 200, 5 * time.Second},
	} {
		if got := checkpointEvery(c.interval, c.active); got != c.want {
			t.Errorf("checkpointEvery(%v, %d) = %v, want %v", c.interval, c.active, got, c.want)
		}
	}
	for active := int64(1); active <= 1000; active++ {
		if rate := float64(active) / checkpointEvery(20*ms, active).Seconds(); rate > 1000.5 {
			t.Fatalf("%d transfers checkpoint %.0f times a second together", active, rate)
		}
	}
}
