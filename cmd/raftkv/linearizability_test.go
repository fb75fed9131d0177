package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

// kvInput and kvOutput are an operation of the porcupine history.
type kvInput struct {
	put   bool
	key   string
	value string // the value written
}

type kvOutput struct {
	value   string // the value read; "" for a missing key (values are never empty)
	unknown bool   // a write whose outcome is unknown
}

// kvModel is a register per key: porcupine checks each key on its own.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := make(map[string][]porcupine.Operation)
		for _, op := range history {
			k := op.Input.(kvInput).key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]string, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in, out := input.(kvInput), output.(kvOutput)
		if in.put {
			return true, in.value
		}
		return out.value == state.(string), state
	},
	Equal: func(a, b any) bool { return a.(string) == b.(string) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvInput), output.(kvOutput)
		if in.put {
			if out.unknown {
				return fmt.Sprintf("put(%s, %s) → ?", in.key, in.value)
			}
			return fmt.Sprintf("put(%s, %s)", in.key, in.value)
		}
		return fmt.Sprintf("get(%s) → %q", in.key, out.value)
	},
}

// history records operations from several clients.
type history struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	// counts, for the log and a sanity check
	puts, gets, unknown, dropped int
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(op porcupine.Operation) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, op)
	switch {
	case op.Output.(kvOutput).unknown:
		h.unknown++
	case op.Input.(kvInput).put:
		h.puts++
	default:
		h.gets++
	}
}

func (h *history) drop() {
	h.mu.Lock()
	h.dropped++
	h.mu.Unlock()
}

// neverSent reports whether err says the request never left the client.
func neverSent(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

// TestLinearizableUnderLeaderKills runs clients doing puts (of unique
// values) and linearizable gets against random nodes while the leader is
// killed and restarted from its data directory, twice, and checks the
// history with porcupine. A put that failed with X-Raftkv-Not-Applied or
// that was never sent is left out; any other failed put has an unknown
// outcome: it is kept, returning at the end of time, and may or may not
// have happened. A failed get is left out (a get has no effect).
func TestLinearizableUnderLeaderKills(t *testing.T) {
	leakcheck.Check(t)
	c := newTestCluster(t, 3)
	c.waitLeader(10 * time.Second)

	const (
		clients = 4
		keys    = 3
		rounds  = 2
	)
	h := &history{start: time.Now()}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var wg sync.WaitGroup
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	for i := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			for seq := 0; ctx.Err() == nil; seq++ {
				id := c.ids[rng.IntN(len(c.ids))]
				addr := c.addr(id)
				in := kvInput{put: rng.IntN(2) == 0, key: fmt.Sprintf("k%d", rng.IntN(keys))}
				// Operations are not cut short by the end of the test: each
				// ends on its own, within its timeout.
				opCtx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				call := h.now()
				var out kvOutput
				var err error
				if in.put {
					in.value = fmt.Sprintf("c%d-%d", i, seq)
					var resp *http.Response
					resp, err = c.put(opCtx, addr, in.key, in.value)
					switch {
					case err == nil:
					case neverSent(err) || resp != nil && resp.Header.Get(hdrNotApplied) != "":
						h.drop()
					default:
						out.unknown = true
						h.add(porcupine.Operation{ClientId: i, Input: in, Call: call, Output: out, Return: math.MaxInt64})
					}
				} else {
					out.value, err = c.get(opCtx, addr, in.key, "")
					if errors.Is(err, errNotFound) {
						out.value, err = "", nil
					}
					if err != nil {
						h.drop()
					}
				}
				ret := h.now()
				cancel()
				if err == nil {
					h.add(porcupine.Operation{ClientId: i, Input: in, Call: call, Output: out, Return: ret})
				} else {
					time.Sleep(10 * time.Millisecond) // back off while there is no leader
				}
			}
		})
	}

	for round := range rounds {
		time.Sleep(time.Second)
		leader := c.waitLeader(10 * time.Second)
		id := leader.cfg.ID
		t.Logf("round %d: killing leader %s", round, id)
		c.kill(id)
		time.Sleep(500 * time.Millisecond)
		next := c.waitLeader(10 * time.Second)
		t.Logf("round %d: new leader %s; restarting %s", round, next.cfg.ID, id)
		c.restart(id)
	}
	time.Sleep(time.Second)
	stop()
	wg.Wait()

	h.mu.Lock()
	ops := h.ops
	t.Logf("history: %d puts, %d gets, %d puts of unknown outcome, %d failed operations left out", h.puts, h.gets, h.unknown, h.dropped)
	if h.puts < 50 || h.gets < 50 {
		t.Errorf("too few successful operations for a meaningful check")
	}
	h.mu.Unlock()

	start := time.Now()
	res, info := porcupine.CheckOperationsVerbose(kvModel, ops, 30*time.Second)
	t.Logf("porcupine: %v in %v", res, time.Since(start))
	switch res {
	case porcupine.Ok:
	case porcupine.Illegal:
		path := filepath.Join(os.TempDir(), fmt.Sprintf("raftkv-linearizability-%d.html", seed))
		if err := porcupine.VisualizePath(kvModel, info, path); err != nil {
			t.Logf("visualization: %v", err)
		}
		t.Fatalf("history is not linearizable; visualization in %s", path)
	default:
		t.Fatalf("porcupine could not decide: %v", res)
	}

	// Every node, the restarted ones included, converges to the same state.
	c.waitConverged(t, 10*time.Second)
}

// waitConverged waits until every live node has applied the same index
// and holds the same key-value map.
func (c *testCluster) waitConverged(t *testing.T, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var first map[string]string
		same := true
		c.mu.Lock()
		var idx []uint64
		for _, id := range c.ids {
			n := c.nodes[id]
			n.fsm.mu.RLock()
			kv := maps.Clone(n.fsm.kv)
			idx = append(idx, n.fsm.index)
			n.fsm.mu.RUnlock()
			if first == nil {
				first = kv
			} else if len(kv) != len(first) {
				same = false
			} else {
				for k, v := range kv {
					if first[k] != v {
						same = false
					}
				}
			}
		}
		c.mu.Unlock()
		for _, i := range idx {
			same = same && i == idx[0]
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes did not converge after %v: applied indexes %v", timeout, idx)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
