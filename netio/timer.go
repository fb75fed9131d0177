package netio

import (
	"container/heap"
	"time"
)

// Timer is a message scheduled for the actor that created it. Its methods may
// be called only from that actor.
type Timer struct {
	when   time.Time
	period time.Duration
	a      *actor
	msg    any
	index  int         // position in the loop's heap; -1 when not scheduled
	t      *time.Timer // blocking actors use the runtime's timers
}

// After sends msg to this actor once, after d.
func (c *Context) After(d time.Duration, msg any) *Timer {
	t := &Timer{a: c.a, msg: msg, index: -1}
	t.Reset(d)
	return t
}

// Every sends msg to this actor every d, until the timer is stopped or the
// actor stops. d must be positive.
func (c *Context) Every(d time.Duration, msg any) *Timer {
	if d <= 0 {
		panic("netio: Every with a non-positive period")
	}
	t := &Timer{a: c.a, msg: msg, index: -1, period: d}
	t.Reset(d)
	return t
}

// Reset reschedules the timer to fire d from now (a periodic timer then keeps
// its period). It reuses the timer: no allocation.
func (t *Timer) Reset(d time.Duration) {
	a := t.a
	if a.loop == nil {
		if t.t == nil {
			t.t = time.AfterFunc(d, func() {
				send(nil, nil, a, t.msg, kindUser)
				if t.period > 0 {
					t.t.Reset(t.period)
				}
			})
			return
		}
		t.t.Reset(d)
		return
	}
	l := a.loop
	t.when = l.now.Add(d)
	if t.index >= 0 {
		heap.Fix(&l.timers, t.index)
		return
	}
	heap.Push(&l.timers, t)
}

// Stop cancels the timer; it reports whether the timer was scheduled.
func (t *Timer) Stop() bool {
	if t.a.loop == nil {
		return t.t != nil && t.t.Stop()
	}
	if t.index < 0 {
		return false
	}
	heap.Remove(&t.a.loop.timers, t.index)
	return true
}

type timerHeap []*Timer

func (h timerHeap) Len() int           { return len(h) }
func (h timerHeap) Less(i, j int) bool { return h[i].when.Before(h[j].when) }
func (h timerHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *timerHeap) Push(x any) {
	t := x.(*Timer)
	t.index = len(*h)
	*h = append(*h, t)
}
func (h *timerHeap) Pop() any {
	old := *h
	t := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	t.index = -1
	return t
}

func (h timerHeap) next() *Timer {
	if len(h) == 0 {
		return nil
	}
	return h[0]
}

// fire delivers every due timer to its actor's local queue and reports
// whether it delivered any.
func (h *timerHeap) fire(l *Loop) (fired bool) {
	for len(*h) > 0 {
		t := (*h)[0]
		if t.when.After(l.now) {
			return fired
		}
		if t.a.state == stateStopped {
			heap.Pop(h)
			continue
		}
		if t.period > 0 {
			t.when = t.when.Add(t.period)
			if t.when.Before(l.now) {
				t.when = l.now.Add(t.period)
			}
			heap.Fix(h, 0)
		} else {
			heap.Pop(h)
		}
		l.local.push(t.a, t.a, t.msg, kindUser)
		fired = true
	}
	return fired
}
