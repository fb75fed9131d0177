package bench

// Raft transport benchmarks: this module's raft transport (ioactor) against
// raft.NetworkTransport (TCP) and, for whole clusters, raft.InmemTransport
// (the no-network ceiling), side by side in one run:
//
//	go test -run '^$' -bench 'Raft' -benchtime 2s ./bench/
//
// BenchmarkRaftTransport are transport-only micro-benchmarks between two
// transports with a consumer that answers at once; BenchmarkRaftCodec is the
// cost of encoding and decoding one AppendEntries request; BenchmarkRaftCluster
// is Apply on the leader of a 3-node cluster with in-memory stores. Each
// benchmark ends with a table of ratios against NetworkTransport.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-msgpack/v2/codec"
	hraft "github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/netio"
	ioraft "github.com/ioactor/ioactor/raft"
)

type raftTransport interface {
	hraft.Transport
	hraft.WithClose
}

type raftImpl struct {
	name string
	// make returns a transport; link lets from reach to (in-memory only).
	make func(b *testing.B) raftTransport
	link func(from, to raftTransport)
}

var (
	raftOurs = raftImpl{name: "ioactor",
		make: func(b *testing.B) raftTransport {
			tr, err := ioraft.New(ioraft.Config{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			return tr
		},
		link: func(from, to raftTransport) {}}
	raftNet = raftImpl{name: "NetworkTransport",
		make: func(b *testing.B) raftTransport {
			tr, err := hraft.NewTCPTransportWithConfig("127.0.0.1:0", nil, &hraft.NetworkTransportConfig{
				MaxPool: 3, Timeout: 10 * time.Second, Logger: hclog.NewNullLogger()})
			if err != nil {
				b.Fatal(err)
			}
			return tr
		},
		link: func(from, to raftTransport) {}}
	raftInmem = raftImpl{name: "InmemTransport",
		make: func(b *testing.B) raftTransport {
			_, tr := hraft.NewInmemTransportWithTimeout("", 10*time.Second)
			return tr
		},
		link: func(from, to raftTransport) {
			from.(*hraft.InmemTransport).Connect(to.LocalAddr(), to)
		}}
)

// raftOursOneLoop is ours with every transport of the benchmark on one
// System of one loop (the caller's choice, Config.System), shut down at the
// end of the benchmark: what the benchmarks measured before transports got
// a private System each. In one process on few cores it saves a thread
// hand-off per hop between transports; a deployment has one transport per
// process, like the private default.
func raftOursOneLoop(b *testing.B) raftImpl {
	sys, err := netio.NewSystem(netio.Config{Loops: 1, Logger: slog.New(slog.DiscardHandler), RawWait: -1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sys.Shutdown(ctx)
	})
	return raftImpl{name: "ioactor-1loop",
		make: func(b *testing.B) raftTransport {
			tr, err := ioraft.New(ioraft.Config{System: sys, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			return tr
		},
		link: func(from, to raftTransport) {}}
}

// results collects one metric per benchmark for the ratio tables.
type results struct {
	mu  sync.Mutex
	val map[string]float64
}

func (r *results) set(key string, v float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.val == nil {
		r.val = make(map[string]float64)
	}
	r.val[key] = v
}

// table logs, per row, each implementation's value and its ratio to
// NetworkTransport's.
func (r *results) table(b *testing.B, metric string, rows []string, impls []raftImpl) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-28s", "# "+metric)
	for _, im := range impls {
		fmt.Fprintf(&sb, " %18s", im.name)
	}
	fmt.Fprintf(&sb, " %18s\n", "ioactor/Network")
	for _, row := range rows {
		fmt.Fprintf(&sb, "%-28s", row)
		for _, im := range impls {
			fmt.Fprintf(&sb, " %18.4g", r.val[row+"/"+im.name])
		}
		if n := r.val[row+"/"+raftNet.name]; n > 0 {
			fmt.Fprintf(&sb, " %17.2fx", r.val[row+"/"+raftOurs.name]/n)
		}
		sb.WriteByte('\n')
	}
	// Printed, not logged: a parent benchmark's log is not shown.
	fmt.Print(sb.String())
}

// percentile returns the p-th percentile of d (sorted in place), in µs.
func percentile(d []time.Duration, p float64) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(float64(len(d)-1) * p)
	return float64(d[i]) / float64(time.Microsecond)
}

// transportPair starts a client and a server whose consumer answers every
// RPC at once (heartbeats through the heartbeat handler).
func transportPair(b *testing.B, im raftImpl) (client, server raftTransport) {
	server = im.make(b)
	client = im.make(b)
	im.link(client, server)
	im.link(server, client)
	server.SetHeartbeatHandler(func(rpc hraft.RPC) {
		rpc.Respond(&hraft.AppendEntriesResponse{Term: rpc.Command.(*hraft.AppendEntriesRequest).Term, Success: true}, nil)
	})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case rpc := <-server.Consumer():
				switch req := rpc.Command.(type) {
				case *hraft.AppendEntriesRequest:
					var last uint64
					if n := len(req.Entries); n > 0 {
						last = req.Entries[n-1].Index
					}
					rpc.Respond(&hraft.AppendEntriesResponse{Term: req.Term, LastLog: last, Success: true}, nil)
				case *hraft.InstallSnapshotRequest:
					_, err := io.Copy(io.Discard, rpc.Reader)
					rpc.Respond(&hraft.InstallSnapshotResponse{Term: req.Term, Success: err == nil}, err)
				default:
					rpc.Respond(nil, fmt.Errorf("unexpected %T", rpc.Command))
				}
			case <-stop:
				return
			}
		}
	}()
	b.Cleanup(func() {
		client.Close()
		close(stop)
		wg.Wait()
		server.Close()
	})
	return client, server
}

func entries(n, size int, first uint64) []*hraft.Log {
	es := make([]*hraft.Log, n)
	now := time.Now()
	for i := range es {
		es[i] = &hraft.Log{Index: first + uint64(i), Term: 3, Type: hraft.LogCommand, Data: make([]byte, size), AppendedAt: now}
	}
	return es
}

var transportResults results

// BenchmarkRaftTransport measures one transport pair: a heartbeat round
// trip, a synchronous one-entry append, pipelined appends of 64 entries, and
// a 64 MiB snapshot.
func BenchmarkRaftTransport(b *testing.B) {
	impls := []raftImpl{raftOurs, raftNet}
	for _, im := range impls {
		b.Run("heartbeat/"+im.name, func(b *testing.B) {
			client, server := transportPair(b, im)
			//lint:ignore SA1019 raft v1.8 still sets and reads the deprecated Leader
			req := &hraft.AppendEntriesRequest{RPCHeader: hraft.RPCHeader{ID: []byte("leader"), Addr: []byte("127.0.0.1:1")}, Term: 3, Leader: []byte("127.0.0.1:1")}
			lat := roundTrips(b, func() error {
				var resp hraft.AppendEntriesResponse
				return client.AppendEntries("f", server.LocalAddr(), req, &resp)
			})
			transportResults.set("heartbeat p50 µs/"+im.name, lat)
		})
	}
	for _, im := range impls {
		b.Run("append_sync_1x128B/"+im.name, func(b *testing.B) {
			client, server := transportPair(b, im)
			req := &hraft.AppendEntriesRequest{RPCHeader: hraft.RPCHeader{ID: []byte("leader"), Addr: []byte("127.0.0.1:1")},
				Term: 3, PrevLogEntry: 10, PrevLogTerm: 3, LeaderCommitIndex: 10, Entries: entries(1, 128, 11)}
			lat := roundTrips(b, func() error {
				var resp hraft.AppendEntriesResponse
				return client.AppendEntries("f", server.LocalAddr(), req, &resp)
			})
			transportResults.set("append p50 µs/"+im.name, lat)
		})
	}
	for _, size := range []int{128, 4096} {
		for _, im := range impls {
			name := fmt.Sprintf("pipeline_64x%s/%s", sizeName(size), im.name)
			b.Run(name, func(b *testing.B) {
				client, server := transportPair(b, im)
				p, err := client.AppendEntriesPipeline("f", server.LocalAddr())
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				req := &hraft.AppendEntriesRequest{RPCHeader: hraft.RPCHeader{ID: []byte("leader"), Addr: []byte("127.0.0.1:1")},
					Term: 3, PrevLogEntry: 10, PrevLogTerm: 3, LeaderCommitIndex: 10, Entries: entries(64, size, 11)}
				var done atomic.Int64
				var failed atomic.Value
				consumed := make(chan struct{})
				var sent int64
				b.SetBytes(int64(64 * size))
				b.ReportAllocs()
				go func() {
					defer close(consumed)
					for f := range p.Consumer() {
						if err := f.Error(); err != nil {
							failed.Store(err)
						}
						if done.Add(1) == -1 {
							return
						}
					}
				}()
				start := time.Now()
				for b.Loop() {
					if _, err := p.AppendEntries(req, new(hraft.AppendEntriesResponse)); err != nil {
						b.Fatal(err)
					}
					sent++
				}
				for done.Load() < sent {
					time.Sleep(50 * time.Microsecond)
				}
				el := time.Since(start)
				if err := failed.Load(); err != nil {
					b.Fatal(err)
				}
				eps := float64(sent*64) / el.Seconds()
				b.ReportMetric(eps, "entries/s")
				transportResults.set(fmt.Sprintf("pipeline 64x%s entries/s", sizeName(size))+"/"+im.name, eps)
				p.Close()
			})
		}
	}
	for _, im := range impls {
		b.Run("snapshot_64MiB/"+im.name, func(b *testing.B) {
			client, server := transportPair(b, im)
			const size = 64 << 20
			b.SetBytes(size)
			start := time.Now()
			n := 0
			for b.Loop() {
				var resp hraft.InstallSnapshotResponse
				req := &hraft.InstallSnapshotRequest{Term: 3, Leader: []byte("l"), LastLogIndex: 100, LastLogTerm: 3, Size: size}
				if err := client.InstallSnapshot("f", server.LocalAddr(), req, &resp, &zeroReader{n: size}); err != nil || !resp.Success {
					b.Fatal(err, resp.Success)
				}
				n++
			}
			transportResults.set("snapshot MB/s/"+im.name, float64(n*size)/1e6/time.Since(start).Seconds())
		})
	}
	transportResults.table(b, "transport", []string{"heartbeat p50 µs", "append p50 µs",
		"pipeline 64x128B entries/s", "pipeline 64x4KiB entries/s", "snapshot MB/s"}, impls)
}

func sizeName(n int) string {
	if n >= 1024 {
		return fmt.Sprintf("%dKiB", n/1024)
	}
	return fmt.Sprintf("%dB", n)
}

// roundTrips times f per iteration and reports p50/p99 in µs; it returns
// the p50.
func roundTrips(b *testing.B, f func() error) float64 {
	b.ReportAllocs()
	var lat []time.Duration
	for b.Loop() {
		start := time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	p50, p99 := percentile(lat, 0.50), percentile(lat, 0.99)
	b.ReportMetric(p50, "p50-µs")
	b.ReportMetric(p99, "p99-µs")
	return p50
}

type zeroReader struct{ n int }

func (z *zeroReader) Read(p []byte) (int, error) {
	if z.n == 0 {
		return 0, io.EOF
	}
	k := min(len(p), z.n)
	clear(p[:k])
	z.n -= k
	return k, nil
}

var codecResults results

// BenchmarkRaftCodec encodes and decodes one AppendEntries request of 64
// entries: this transport's codec against msgpack (NetworkTransport's).
func BenchmarkRaftCodec(b *testing.B) {
	for _, size := range []int{128, 4096} {
		req := &hraft.AppendEntriesRequest{RPCHeader: hraft.RPCHeader{ProtocolVersion: 3, ID: []byte("leader"), Addr: []byte("127.0.0.1:1")},
			Term: 3, PrevLogEntry: 10, PrevLogTerm: 3, LeaderCommitIndex: 10, Entries: entries(64, size, 11)}
		row := fmt.Sprintf("encode+decode 64x%s ns", sizeName(size))
		b.Run(fmt.Sprintf("64x%s/ioactor", sizeName(size)), func(b *testing.B) {
			b.ReportAllocs()
			var buf []byte
			for b.Loop() {
				buf = ioraft.EncodeAppendEntries(buf[:0], req)
				var out hraft.AppendEntriesRequest
				if err := ioraft.DecodeAppendEntries(buf, &out); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(buf)), "wire-bytes")
			codecResults.set(row+"/ioactor", float64(b.Elapsed().Nanoseconds())/float64(b.N))
		})
		b.Run(fmt.Sprintf("64x%s/msgpack", sizeName(size)), func(b *testing.B) {
			b.ReportAllocs()
			h := &codec.MsgpackHandle{}
			h.TimeNotBuiltin = true // as NetworkTransport encodes
			var buf []byte
			enc := codec.NewEncoderBytes(&buf, h)
			dec := codec.NewDecoderBytes(nil, h)
			for b.Loop() {
				buf = buf[:0]
				enc.ResetBytes(&buf)
				if err := enc.Encode(req); err != nil {
					b.Fatal(err)
				}
				dec.ResetBytes(buf)
				var out hraft.AppendEntriesRequest
				if err := dec.Decode(&out); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(buf)), "wire-bytes")
			codecResults.set(row+"/NetworkTransport", float64(b.Elapsed().Nanoseconds())/float64(b.N))
		})
	}
	codecResults.table(b, "codec", []string{"encode+decode 64x128B ns", "encode+decode 64x4KiB ns"}, []raftImpl{raftOurs, raftNet})
}

// benchCluster is a 3-node raft cluster with in-memory stores.
type benchCluster struct {
	rafts  []*hraft.Raft
	trans  []raftTransport
	leader *hraft.Raft
}

func newBenchCluster(b *testing.B, im raftImpl) *benchCluster {
	return newStoreCluster(b, im, false)
}

func (c *benchCluster) close() {
	for _, r := range c.rafts {
		r.Shutdown().Error()
	}
	for _, t := range c.trans {
		t.Close()
	}
}

type nopFSM struct{}

func (nopFSM) Apply(*hraft.Log) any                 { return nil }
func (nopFSM) Snapshot() (hraft.FSMSnapshot, error) { return nil, fmt.Errorf("no snapshots") }
func (nopFSM) Restore(io.ReadCloser) error          { return nil }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var clusterResults results

// BenchmarkRaftCluster measures Apply on the leader of a 3-node in-memory
// cluster at concurrency 1, 16 and 128 with 128 B and 4 KiB commands.
func BenchmarkRaftCluster(b *testing.B) {
	impls := []raftImpl{raftOurs, raftNet, raftInmem}
	var rows []string
	for _, size := range []int{128, 4096} {
		for _, conc := range []int{1, 16, 128} {
			row := fmt.Sprintf("c%d %s ops/s", conc, sizeName(size))
			rows = append(rows, row)
			for _, im := range impls {
				b.Run(fmt.Sprintf("%s/c%d/%s", sizeName(size), conc, im.name), func(b *testing.B) {
					c := newBenchCluster(b, im)
					leader := c.leader
					var mu sync.Mutex
					var lat []time.Duration
					var failures atomic.Int64
					apply := func(mine *[]time.Duration) {
						start := time.Now()
						if err := leader.Apply(make([]byte, size), 10*time.Second).Error(); err != nil {
							failures.Add(1)
							return
						}
						*mine = append(*mine, time.Since(start))
					}
					b.SetBytes(int64(size))
					cpu0, t0 := cpuTime(), time.Now()
					if conc == 1 {
						for b.Loop() {
							apply(&lat)
						}
					} else {
						b.SetParallelism((conc + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
						b.RunParallel(func(pb *testing.PB) {
							var mine []time.Duration
							for pb.Next() {
								apply(&mine)
							}
							mu.Lock()
							lat = append(lat, mine...)
							mu.Unlock()
						})
					}
					el, cpu := time.Since(t0), cpuTime()-cpu0
					if f := failures.Load(); f > 0 {
						// A leadership change under a starved CPU; counted, not fatal.
						b.Logf("%d applies failed", f)
					}
					ops := float64(len(lat)) / el.Seconds()
					b.ReportMetric(ops, "ops/s")
					b.ReportMetric(percentile(lat, 0.5), "p50-µs")
					b.ReportMetric(percentile(lat, 0.99), "p99-µs")
					b.ReportMetric(float64(cpu.Microseconds())/float64(max(1, len(lat))), "cpu-µs/op")
					changed := 0.0
					if leader.State() != hraft.Leader {
						changed = 1
					}
					b.ReportMetric(changed, "leader-lost")
					b.ReportMetric(float64(failures.Load()), "failed")
					clusterResults.set(row+"/"+im.name, ops)
					clusterResults.set(fmt.Sprintf("c%d %s p50 µs", conc, sizeName(size))+"/"+im.name, percentile(lat, 0.5))
				})
			}
		}
	}
	for _, size := range []int{128, 4096} {
		for _, conc := range []int{1, 16, 128} {
			rows = append(rows, fmt.Sprintf("c%d %s p50 µs", conc, sizeName(size)))
		}
	}
	sort.SliceStable(rows, func(i, j int) bool {
		return strings.HasSuffix(rows[i], "ops/s") && !strings.HasSuffix(rows[j], "ops/s")
	})
	clusterResults.table(b, "3-node cluster", rows, impls)
}
