package bench

import (
	"context"
	"flag"
	"fmt"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// BenchmarkRaftClusterRounds: Apply on the leader of a 3-node cluster, one
// cluster per transport, all alive at once and measured in interleaved
// rounds (each round runs every transport at every point, in a rotating
// order); the table gives the medians over the rounds: Apply throughput,
// and CPU (the whole process's, user+system) per Apply:
//
//	go test -run '^$' -bench RaftClusterRounds -benchtime 1x ./bench/ -args -raft.rounds 5
//	go test -run '^$' -bench RaftClusterRounds -benchtime 1x ./bench/ -args -raft.rounds 5 -raft.bolt
//
// -raft.bolt stores the logs in raft-boltdb (fsync per append batch) in a
// temporary directory instead of memory.
var (
	raftBolt      = flag.Bool("raft.bolt", false, "BenchmarkRaftClusterRounds: raft-boltdb stores (fsync) instead of in-memory ones")
	raftPointTime = flag.Duration("raft.point", 300*time.Millisecond, "BenchmarkRaftClusterRounds: time per point and round")
	raftImplsRE   = flag.String("raft.impls", "", "BenchmarkRaftClusterRounds: a regexp; only the transports whose name it matches (a profile of one), NetworkTransport's column then absent from the ratios")
)

// newStoreCluster starts a 3-node cluster on im whose nodes store their
// logs in memory, or with bolt in raft-boltdb files, and waits for its
// leader. Each node's transport and raft start under the pprof labels
// impl=im.name and node=nI, which their goroutines inherit (the transport's
// loops and the goroutines they start too), so that a CPU profile
// (-test.cpuprofile) splits by node: go tool pprof -tagfocus node=n0.
func newStoreCluster(b *testing.B, im raftImpl, bolt bool) *benchCluster {
	c := &benchCluster{}
	var servers []hraft.Server
	labels := func(i int) context.Context {
		return pprof.WithLabels(context.Background(), pprof.Labels("impl", im.name, "node", fmt.Sprint("n", i)))
	}
	for i := range 3 {
		pprof.SetGoroutineLabels(labels(i))
		tr := im.make(b)
		pprof.SetGoroutineLabels(context.Background())
		c.trans = append(c.trans, tr)
		servers = append(servers, hraft.Server{ID: hraft.ServerID(fmt.Sprint("n", i)), Address: tr.LocalAddr()})
	}
	for _, a := range c.trans {
		for _, t := range c.trans {
			if a != t {
				im.link(a, t)
			}
		}
	}
	for i, tr := range c.trans {
		conf := hraft.DefaultConfig()
		conf.LocalID = servers[i].ID
		conf.Logger = hclog.NewNullLogger()
		conf.HeartbeatTimeout = 500 * time.Millisecond
		conf.ElectionTimeout = 500 * time.Millisecond
		conf.LeaderLeaseTimeout = 500 * time.Millisecond
		conf.SnapshotThreshold = 1 << 40
		conf.SnapshotInterval = time.Hour
		var logs hraft.LogStore
		var stable hraft.StableStore
		if bolt {
			st, err := raftboltdb.NewBoltStore(filepath.Join(b.TempDir(), "raft.db"))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { st.Close() })
			logs, stable = st, st
		} else {
			st := hraft.NewInmemStore()
			logs, stable = st, st
		}
		snaps := hraft.NewInmemSnapshotStore()
		if i == 0 {
			if err := hraft.BootstrapCluster(conf, logs, stable, snaps, tr, hraft.Configuration{Servers: servers}); err != nil {
				b.Fatal(err)
			}
		}
		pprof.SetGoroutineLabels(labels(i))
		r, err := hraft.NewRaft(conf, nopFSM{}, logs, stable, snaps, tr)
		pprof.SetGoroutineLabels(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		c.rafts = append(c.rafts, r)
	}
	b.Cleanup(c.close)
	deadline := time.Now().Add(10 * time.Second)
	for c.leader == nil {
		for _, r := range c.rafts {
			if r.State() == hraft.Leader {
				c.leader = r
			}
		}
		if time.Now().After(deadline) {
			b.Fatal("no leader")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := c.leader.Barrier(5 * time.Second).Error(); err != nil {
		b.Fatal(err)
	}
	return c
}

// applyFor applies size-byte commands from conc goroutines for d and
// returns the throughput and the process's CPU per Apply.
func (c *benchCluster) applyFor(conc, size int, d time.Duration) (ops, cpuPerOp float64) {
	// A starved machine can cost the leader its lease: measure on the
	// current one.
	for deadline := time.Now().Add(10 * time.Second); c.leader.State() != hraft.Leader && time.Now().Before(deadline); {
		for _, r := range c.rafts {
			if r.State() == hraft.Leader {
				c.leader = r
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	var n, failed atomic.Int64
	var wg sync.WaitGroup
	cpu0, t0 := cpuTime(), time.Now()
	stop := t0.Add(d)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := make([]byte, size)
			for time.Now().Before(stop) {
				if err := c.leader.Apply(cmd, 10*time.Second).Error(); err != nil {
					failed.Add(1)
					continue
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	el, cpu := time.Since(t0), cpuTime()-cpu0
	return float64(n.Load()) / el.Seconds(), float64(cpu.Microseconds()) / float64(max(1, n.Load()))
}

func BenchmarkRaftClusterRounds(b *testing.B) {
	impls := []raftImpl{raftOurs, raftOursOneLoop(b), raftNet, raftInmem}
	if *raftImplsRE != "" {
		re, err := regexp.Compile(*raftImplsRE)
		if err != nil {
			b.Fatal(err)
		}
		impls = slices.DeleteFunc(impls, func(im raftImpl) bool { return !re.MatchString(im.name) })
	}
	clusters := make([]*benchCluster, len(impls))
	for i, im := range impls {
		clusters[i] = newStoreCluster(b, im, *raftBolt)
	}
	type point struct{ conc, size int }
	var points []point
	for _, size := range []int{128, 4096} {
		for _, conc := range []int{1, 16, 128} {
			points = append(points, point{conc, size})
		}
	}
	vals := make(map[string][]float64)
	b.ResetTimer()
	for r := range *raftRounds {
		for k := range impls {
			i := (k + r) % len(impls)
			for _, p := range points {
				ops, cpu := clusters[i].applyFor(p.conc, p.size, *raftPointTime)
				row := fmt.Sprintf("c%d %s", p.conc, sizeName(p.size))
				vals[row+" ops/s/"+impls[i].name] = append(vals[row+" ops/s/"+impls[i].name], ops)
				vals[row+" cpu-µs/op/"+impls[i].name] = append(vals[row+" cpu-µs/op/"+impls[i].name], cpu)
			}
		}
	}
	b.StopTimer()

	store := "in-memory stores"
	if *raftBolt {
		store = "raft-boltdb stores"
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n# 3-node cluster, Apply on the leader, %s, median of %d interleaved rounds of %v\n%-24s", store, *raftRounds, *raftPointTime, "point")
	for _, im := range impls {
		fmt.Fprintf(&sb, " %16s", im.name)
	}
	fmt.Fprintf(&sb, " %16s %16s\n", "ioactor/Network", "1loop/Network")
	for _, metric := range []string{"ops/s", "cpu-µs/op"} {
		for _, p := range points {
			row := fmt.Sprintf("c%d %s %s", p.conc, sizeName(p.size), metric)
			fmt.Fprintf(&sb, "%-24s", row)
			for _, im := range impls {
				fmt.Fprintf(&sb, " %16.4g", median(vals[row+"/"+im.name]))
			}
			net := median(vals[row+"/"+raftNet.name])
			fmt.Fprintf(&sb, " %15.2fx %15.2fx\n", median(vals[row+"/"+raftOurs.name])/net, median(vals[row+"/ioactor-1loop"])/net)
		}
	}
	fmt.Print(sb.String())
}
