package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/ioactor/ioactor/internal/cli"
	"github.com/ioactor/ioactor/internal/loadgen"
)

// storm drives a boot storm against one running TFTP server: N clients at
// once, each fetching the boot set of loadgen.WriteBootSet in order (half
// at blksize 1468 after a tsize probe, half at 512). The side-by-side run
// of every contender is BenchmarkStorm in bench/; this mode is for one
// server under perf or valgrind:
//
//	bench storm -write-set DIR            # write the boot set, then serve DIR
//	bench storm -addr 127.0.0.1:6969 -pid PID -clients 20,200 [-kernel=false]
func storm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("storm", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:6969", "the TFTP server")
	pid := fs.Int("pid", 0, "the server's process ID, to report its CPU time and peak RSS from /proc (0: don't)")
	clients := fs.String("clients", "20,200", "client counts, one storm each")
	kernel := fs.Bool("kernel", true, "fetch the 10 MiB kernel too (false: 40 KB + 1.5 MiB only)")
	write := fs.String("write-set", "", "write the boot set into this directory and exit")
	if err := cli.Parse(fs, args, stdout, stderr); err != nil {
		return err
	}
	if *write != "" {
		return loadgen.WriteBootSet(*write)
	}
	set := loadgen.BootSet(*kernel)
	for f := range strings.SplitSeq(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return cli.Usagef(stderr, "bench storm: bad -clients %q", *clients)
		}
		var before loadgen.ProcStat
		if *pid > 0 {
			if before, err = loadgen.ReadProc(*pid); err != nil {
				return err
			}
		}
		r, err := loadgen.Storm(ctx, loadgen.StormConfig{Addr: *addr, Clients: n, Files: set})
		if err != nil {
			return err
		}
		line := fmt.Sprintf("N=%d: %.1f MB/s, last client %.2f s, p50 %.2f s, p99 %.2f s, %d failed, %d retransmits",
			n, r.MBps(), r.Elapsed.Seconds(), r.Quantile(0.5).Seconds(), r.Quantile(0.99).Seconds(), r.Failed, r.Retransmits)
		if *pid > 0 {
			after, err := loadgen.ReadProc(*pid)
			if err != nil {
				return err
			}
			cpu := (after.User + after.Sys - before.User - before.Sys).Seconds()
			line += fmt.Sprintf(", server %.2f CPU s/GiB, RSS %.0f MiB", cpu/(float64(r.Bytes)/(1<<30)), float64(after.RSS)/(1<<20))
		}
		fmt.Fprintln(stdout, line)
		if r.FirstErr != nil {
			fmt.Fprintln(stdout, "  first failure:", r.FirstErr)
		}
	}
	return nil
}
