package loadgen

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

// ProcStat is a snapshot of one process's CPU time (summed over its threads)
// and resident memory, read from /proc.
type ProcStat struct {
	User, Sys time.Duration // utime and stime, at the kernel's clock-tick resolution
	RSS       int64         // VmRSS, bytes
}

// ReadProc reads /proc/PID/stat and /proc/PID/status.
func ReadProc(pid int) (ProcStat, error) {
	var ps ProcStat
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ps, fmt.Errorf("loadgen: %w", err)
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return ps, fmt.Errorf("loadgen: /proc/%d/stat: malformed", pid)
	}
	f := bytes.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return ps, fmt.Errorf("loadgen: /proc/%d/stat: %d fields", pid, len(f)+2)
	}
	tick := time.Second / time.Duration(clockTicks())
	ut, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	st, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return ps, fmt.Errorf("loadgen: /proc/%d/stat: bad utime or stime", pid)
	}
	ps.User, ps.Sys = time.Duration(ut)*tick, time.Duration(st)*tick
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, fmt.Errorf("loadgen: %w", err)
	}
	for line := range bytes.Lines(status) {
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			v = bytes.TrimSpace(bytes.TrimSuffix(bytes.TrimSpace(v), []byte("kB")))
			kb, err := strconv.ParseInt(string(v), 10, 64)
			if err != nil {
				return ps, fmt.Errorf("loadgen: /proc/%d/status: VmRSS: %w", pid, err)
			}
			ps.RSS = kb << 10
			break
		}
	}
	return ps, nil
}

// clockTicks is the kernel's USER_HZ (sysconf(_SC_CLK_TCK)), from the
// auxiliary vector; 100 if it cannot be read.
var clockTicks = sync.OnceValue(func() int64 {
	auxv, err := os.ReadFile("/proc/self/auxv")
	if err != nil {
		return 100
	}
	const atClkTck = 17
	for i := 0; i+16 <= len(auxv); i += 16 {
		k := binary.NativeEndian.Uint64(auxv[i:])
		v := binary.NativeEndian.Uint64(auxv[i+8:])
		if k == atClkTck && v > 0 {
			return int64(v)
		}
		if k == 0 {
			break
		}
	}
	return 100
})

// ServerUsage is what a server process spent over a measured window.
type ServerUsage struct {
	User, Sys time.Duration // CPU time in the window
	RSSMax    int64         // largest VmRSS sampled in the window, bytes
	RSSEnd    int64         // VmRSS at the end of the window, bytes
}

// CPU is user plus system time.
func (u ServerUsage) CPU() time.Duration { return u.User + u.Sys }

// procSampler follows a process's RSS during a window.
type procSampler struct {
	pid   int
	start ProcStat
	stop  chan struct{}
	done  chan struct{}
	max   int64
}

// startSampling reads the process's counters now and samples its RSS every
// interval until finish.
func startSampling(pid int, interval time.Duration) (*procSampler, error) {
	p0, err := ReadProc(pid)
	if err != nil {
		return nil, err
	}
	s := &procSampler{pid: pid, start: p0, max: p0.RSS, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				if p, err := ReadProc(pid); err == nil {
					s.max = max(s.max, p.RSS)
				}
			}
		}
	}()
	return s, nil
}

// finish stops sampling and returns the usage since startSampling.
func (s *procSampler) finish() (ServerUsage, error) {
	p1, err := ReadProc(s.pid)
	close(s.stop)
	<-s.done
	if err != nil {
		return ServerUsage{}, err
	}
	return ServerUsage{
		User:   p1.User - s.start.User,
		Sys:    p1.Sys - s.start.Sys,
		RSSMax: max(s.max, p1.RSS),
		RSSEnd: p1.RSS,
	}, nil
}
