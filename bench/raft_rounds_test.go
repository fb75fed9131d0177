package bench

import (
	"flag"
	"fmt"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

// BenchmarkRaftRounds: the transport micro-benchmarks of
// BenchmarkRaftTransport, all three transports in one run, in interleaved
// rounds (each round runs every transport once, in a rotating order), so
// that a machine whose load changes during the run biases none of them;
// the table gives each metric's median over the rounds and the ratio to
// NetworkTransport. The CPU rows are the whole process's (both ends, every
// goroutine and loop) per heartbeat round trip and per MB of snapshot:
//
//	go test -run '^$' -bench RaftRounds -benchtime 1x ./bench/ -args -raft.rounds 9
var raftRounds = flag.Int("raft.rounds", 7, "BenchmarkRaftRounds: interleaved rounds")

// roundCalls is the number of round trips timed per round and transport.
const roundCalls = 3000

func BenchmarkRaftRounds(b *testing.B) {
	impls := []raftImpl{raftOurs, raftOursOneLoop(b), raftNet, raftInmem}
	type pair struct{ client, server raftTransport }
	pairs := make([]pair, len(impls))
	for i, im := range impls {
		c, s := transportPair(b, im)
		pairs[i] = pair{c, s}
	}
	// A heartbeat as raft sends it, Leader set too (NetworkTransport's fast
	// path looks at it when Addr is empty).
	//lint:ignore SA1019 raft v1.8 still sets and reads the deprecated Leader
	hb := &hraft.AppendEntriesRequest{RPCHeader: hraft.RPCHeader{ID: []byte("leader"), Addr: []byte("127.0.0.1:1")}, Term: 3, Leader: []byte("127.0.0.1:1")}
	app := &hraft.AppendEntriesRequest{RPCHeader: hraft.RPCHeader{ID: []byte("leader"), Addr: []byte("127.0.0.1:1")},
		Term: 3, PrevLogEntry: 10, PrevLogTerm: 3, LeaderCommitIndex: 10, Entries: entries(1, 128, 11)}
	batch := &hraft.AppendEntriesRequest{RPCHeader: hraft.RPCHeader{ID: []byte("leader"), Addr: []byte("127.0.0.1:1")},
		Term: 3, PrevLogEntry: 10, PrevLogTerm: 3, LeaderCommitIndex: 10, Entries: entries(64, 128, 11)}
	const snapSize = 64 << 20

	metrics := []string{"heartbeat p50 µs", "heartbeat p99 µs", "append 1x128B p50 µs", "append 1x128B p99 µs",
		"pipeline 64x128B entries/s", "snapshot 64MiB MB/s",
		"heartbeat CPU µs", "snapshot CPU µs/MB"}
	vals := make(map[string][]float64) // metric/impl → per-round values
	add := func(metric string, i int, v float64) {
		k := metric + "/" + impls[i].name
		vals[k] = append(vals[k], v)
	}
	sync := func(p pair, req *hraft.AppendEntriesRequest) (p50, p99 float64) {
		lat := make([]time.Duration, 0, roundCalls)
		for range roundCalls {
			start := time.Now()
			var resp hraft.AppendEntriesResponse
			if err := p.client.AppendEntries("f", p.server.LocalAddr(), req, &resp); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		return percentile(lat, 0.5), percentile(lat, 0.99)
	}
	pipelined := func(p pair) float64 {
		pl, err := p.client.AppendEntriesPipeline("f", p.server.LocalAddr())
		if err != nil {
			b.Fatal(err)
		}
		defer pl.Close()
		const n = 500
		errc := make(chan error, 1)
		start := time.Now()
		go func() {
			for range n {
				if _, err := pl.AppendEntries(batch, new(hraft.AppendEntriesResponse)); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		for i := 0; i < n; {
			select {
			case f := <-pl.Consumer():
				if err := f.Error(); err != nil {
					b.Fatal(err)
				}
				i++
			case err := <-errc:
				if err != nil {
					b.Fatal(err)
				}
				errc = nil // all sent
			}
		}
		el := time.Since(start)
		if errc != nil {
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
		}
		return float64(n*len(batch.Entries)) / el.Seconds()
	}
	snapshot := func(p pair) (mbps, cpuPerMB float64) {
		start, cpu := time.Now(), cpuTime()
		var resp hraft.InstallSnapshotResponse
		req := &hraft.InstallSnapshotRequest{Term: 3, Leader: []byte("l"), LastLogIndex: 100, LastLogTerm: 3, Size: snapSize}
		if err := p.client.InstallSnapshot("f", p.server.LocalAddr(), req, &resp, &zeroReader{n: snapSize}); err != nil || !resp.Success {
			b.Fatal(err, resp.Success)
		}
		el, used := time.Since(start), cpuTime()-cpu
		return snapSize / 1e6 / el.Seconds(), float64(used.Microseconds()) / (snapSize / 1e6)
	}
	// Warm up: connections dialed, buffers grown.
	for _, p := range pairs {
		sync(p, hb)
		sync(p, app)
	}
	b.ResetTimer()
	for r := range *raftRounds {
		for k := range impls {
			i := (k + r) % len(impls)
			p := pairs[i]
			cpu := cpuTime()
			p50, p99 := sync(p, hb)
			add("heartbeat CPU µs", i, float64((cpuTime()-cpu).Microseconds())/roundCalls)
			add("heartbeat p50 µs", i, p50)
			add("heartbeat p99 µs", i, p99)
			p50, p99 = sync(p, app)
			add("append 1x128B p50 µs", i, p50)
			add("append 1x128B p99 µs", i, p99)
			add("pipeline 64x128B entries/s", i, pipelined(p))
			mbps, cpuMB := snapshot(p)
			add("snapshot 64MiB MB/s", i, mbps)
			add("snapshot CPU µs/MB", i, cpuMB)
		}
	}
	b.StopTimer()
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n# raft transports, median of %d interleaved rounds\n%-28s", *raftRounds, "metric")
	for _, im := range impls {
		fmt.Fprintf(&sb, " %16s", im.name)
	}
	fmt.Fprintf(&sb, " %16s %16s\n", "ioactor/Network", "1loop/Network")
	for _, m := range metrics {
		fmt.Fprintf(&sb, "%-28s", m)
		for _, im := range impls {
			fmt.Fprintf(&sb, " %16.4g", median(vals[m+"/"+im.name]))
		}
		net := median(vals[m+"/"+raftNet.name])
		ratio := median(vals[m+"/"+raftOurs.name]) / net
		fmt.Fprintf(&sb, " %15.2fx %15.2fx\n", ratio, median(vals[m+"/"+impls[1].name])/net)
		unit := strings.NewReplacer(" ", "_", "µs", "us", "/", "_per_").Replace(m)
		b.ReportMetric(ratio, unit+"-ratio")
	}
	fmt.Print(sb.String())
}
