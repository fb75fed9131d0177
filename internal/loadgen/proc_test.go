package loadgen

import (
	"os"
	"testing"
	"time"
)

func TestReadProcSelf(t *testing.T) {
	p0, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p0.RSS <= 0 {
		t.Fatalf("RSS %d", p0.RSS)
	}
	// Burn some CPU: utime must move by at least a clock tick.
	deadline := time.Now().Add(100 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	p1, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p1.User+p1.Sys <= p0.User+p0.Sys {
		t.Fatalf("CPU time did not move: %+v then %+v (%d spins)", p0, p1, x)
	}
	if hz := clockTicks(); hz < 1 || hz > 10000 {
		t.Fatalf("clock ticks %d", hz)
	}
}

func TestReadProcMissing(t *testing.T) {
	if _, err := ReadProc(1 << 30); err == nil {
		t.Fatal("no error for a process that does not exist")
	}
}
