package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/ioactor/ioactor/internal/cli"

	"github.com/ioactor/ioactor/bench"
)

// runtimeStats are the server's Go runtime counters, read with
// runtime/metrics (no stop-the-world, unlike runtime.ReadMemStats).
type runtimeStats struct {
	Allocs     uint64 `json:"allocs"`      // heap allocations, tiny ones included
	AllocBytes uint64 `json:"alloc_bytes"` // bytes allocated on the heap
	GCCycles   uint64 `json:"gc_cycles"`
	Goroutines uint64 `json:"goroutines"`
}

var statSamples = []metrics.Sample{
	{Name: "/gc/heap/allocs:objects"},
	{Name: "/gc/heap/tiny/allocs:objects"},
	{Name: "/gc/heap/allocs:bytes"},
	{Name: "/gc/cycles/total:gc-cycles"},
	{Name: "/sched/goroutines:goroutines"},
}

func readRuntimeStats() runtimeStats {
	metrics.Read(statSamples)
	return runtimeStats{
		Allocs:     statSamples[0].Value.Uint64() + statSamples[1].Value.Uint64(),
		AllocBytes: statSamples[2].Value.Uint64(),
		GCCycles:   statSamples[3].Value.Uint64(),
		Goroutines: statSamples[4].Value.Uint64(),
	}
}

func serve(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	implName := fs.String("impl", string(bench.IoactorAck), fmt.Sprintf("contender: %v", bench.Impls()))
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	loops := fs.Int("loops", 0, "event loops of ioactor and gnet (0: one per core)")
	netBuf := fs.Int("netbuf", bench.DefaultNetBuffer, "per-connection buffer of the net echo")
	if err := cli.Parse(fs, args, stdout, stderr); err != nil {
		return err
	}
	impl, err := bench.ParseImpl(*implName)
	if err != nil {
		return err
	}
	addr, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if !addr.Addr().IsLoopback() {
		logger.Warn("listening beyond loopback", "addr", addr)
	}
	srv, err := bench.Start(ctx, impl, addr, bench.ServerConfig{Loops: *loops, NetBuffer: *netBuf, Logger: logger})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "listening %v\n", srv.Addr)
	cmds := make(chan string)
	go func() {
		defer close(cmds)
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			cmds <- sc.Text()
		}
	}()
	var profiling *os.File
	defer func() {
		if profiling != nil {
			pprof.StopCPUProfile()
			profiling.Close()
		}
	}()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case line, ok := <-cmds:
			if !ok {
				break loop
			}
			verb, arg, _ := strings.Cut(strings.TrimSpace(line), " ")
			switch verb {
			case "stats":
				b, _ := json.Marshal(readRuntimeStats())
				fmt.Fprintf(stdout, "%s\n", b)
			case "gc":
				runtime.GC()
				fmt.Fprintln(stdout, "ok")
			case "heapprofile":
				// A heap profile after a collection: what live connections hold.
				runtime.GC()
				f, err := os.Create(arg)
				if err == nil {
					err = errors.Join(pprof.Lookup("heap").WriteTo(f, 0), f.Close())
				}
				if err != nil {
					fmt.Fprintln(stdout, "error:", err)
					continue
				}
				fmt.Fprintln(stdout, "ok")
			case "cpuprofile":
				if profiling != nil {
					fmt.Fprintln(stdout, "error: already profiling")
					continue
				}
				f, err := os.Create(arg)
				if err == nil {
					if err = pprof.StartCPUProfile(f); err != nil {
						f.Close()
					}
				}
				if err != nil {
					fmt.Fprintln(stdout, "error:", err)
					continue
				}
				profiling = f
				fmt.Fprintln(stdout, "ok")
			case "cpuprofile-stop":
				if profiling != nil {
					pprof.StopCPUProfile()
					profiling.Close()
					profiling = nil
				}
				fmt.Fprintln(stdout, "ok")
			default:
				fmt.Fprintf(stdout, "error: unknown command %q\n", verb)
			}
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Close(sctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
