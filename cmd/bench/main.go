// Command bench runs the echo comparison of ioactor against gnet and Go's net
// package: every contender in a server process of its own, driven by the
// same load generator, interleaved round by round (A B C … A B C …) so that
// the machine's noise spreads over all of them; it reports medians as a
// Markdown table and a JSON file, and with -plot draws SVG charts.
//
//	bench [-rounds 3] [-duration 5s] [-conns 1,64,1000] [-sizes 64,4096]
//	      [-pipelines 1,16] [-idle 10000] [-json bench.json] [-plot DIR]
//	      [-base OTHER-BENCH-BINARY]
//	bench storm -addr HOST:PORT [-pid PID] [-clients 20,200] [-kernel=false]
//	bench storm -write-set DIR
//	bench serve -impl ioactor-ack|ioactor-nack|ioactor-pull|gnet|net [-listen 127.0.0.1:0]
//
// The serve subcommand is the server process the comparison starts (it
// re-executes itself); it prints "listening ADDR" and then answers commands
// on standard input, one per line: "stats" (a JSON line of the Go runtime's
// allocation counters), "gc", "cpuprofile PATH", "cpuprofile-stop",
// "heapprofile PATH". It exits when standard input closes.
package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/ioactor/ioactor/internal/cli"
)

func main() {
	cli.Main("bench", func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		return run(ctx, args, os.Stdin, stdout, stderr)
	})
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "serve":
			return serve(ctx, args[1:], stdin, stdout, stderr)
		case "storm":
			return storm(ctx, args[1:], stdout, stderr)
		}
		if cli.IsVersion(args[0]) {
			fmt.Fprintln(stdout, "bench", cli.Version())
			return nil
		}
	}
	return compare(ctx, args, stdout, stderr)
}
