// Command echo runs the echo server of Akka I/O's TCP chapter in one of its
// three back-pressure flows, and a load generator for it.
//
//	echo serve -flow ack|nack|pull -listen 127.0.0.1:7000
//	echo load -addr 127.0.0.1:7000 -conns 64 -size 64 -duration 10s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"github.com/ioactor/ioactor/backpressure"
	"github.com/ioactor/ioactor/internal/cli"
	"github.com/ioactor/ioactor/internal/loadgen"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

func main() { cli.Main("echo", run) }

const usage = `usage:
  echo serve [-flow ack|nack|pull] [-listen 127.0.0.1:7000] [-loops N]
  echo load  [-addr 127.0.0.1:7000] [-conns N] [-size B] [-pipeline K] [-duration D]
  echo -version`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return cli.Usagef(stderr, "%s", usage)
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stdout, stderr)
	case "load":
		return load(ctx, args[1:], stdout, stderr)
	case "-version", "--version", "version":
		fmt.Fprintln(stdout, "echo", cli.Version())
		return nil
	}
	if cli.IsHelp(args[0]) {
		fmt.Fprintln(stdout, usage)
		return nil
	}
	return cli.Usagef(stderr, "echo: unknown command %q\n%s", args[0], usage)
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	flowName := fs.String("flow", "ack", "back-pressure flow: ack, nack or pull")
	listen := fs.String("listen", "127.0.0.1:7000", "address to listen on")
	loops := fs.Int("loops", 0, "event loops (0: one per core)")
	if err := cli.Parse(fs, args, stdout, stderr); err != nil {
		return err
	}
	flow, err := backpressure.ParseFlow(*flowName)
	if err != nil {
		return err
	}
	addr, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	if !addr.Addr().IsLoopback() {
		logger.Warn("listening beyond loopback", "addr", addr)
	}
	sys, err := netio.NewSystem(netio.Config{Loops: *loops, Logger: logger})
	if err != nil {
		return err
	}
	bound := make(chan error, 1)
	srv := &backpressure.EchoServer{Flow: flow, OnBound: func(b tcp.Bound, err error) {
		if err == nil {
			fmt.Fprintf(stdout, "echo (%s flow) listening on %v\n", flow, b.LocalAddr)
		}
		bound <- err
	}}
	ref := sys.Spawn(srv)
	tcp.Manager(sys).Tell(tcp.Bind{Handler: ref, LocalAddr: addr, PullMode: flow == backpressure.FlowPull})
	select {
	case err = <-bound:
	case <-ctx.Done():
	}
	if err == nil {
		<-ctx.Done()
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return errors.Join(err, sys.Shutdown(sctx))
}

func load(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	var cfg loadgen.Config
	fs.StringVar(&cfg.Addr, "addr", "127.0.0.1:7000", "echo server address")
	fs.IntVar(&cfg.Conns, "conns", 1, "connections")
	fs.IntVar(&cfg.Size, "size", 64, "message size in bytes")
	fs.IntVar(&cfg.Pipeline, "pipeline", 1, "messages in flight per connection (1: closed loop)")
	fs.DurationVar(&cfg.Warmup, "warmup", time.Second, "warm-up, not measured")
	fs.DurationVar(&cfg.Duration, "duration", 5*time.Second, "measured window")
	if err := cli.Parse(fs, args, stdout, stderr); err != nil {
		return err
	}
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if res.FirstErr != nil {
		return fmt.Errorf("load: %w", res.FirstErr)
	}
	fmt.Fprintf(stdout, "conns=%d size=%d pipeline=%d: %.1f MB/s, %.0f msg/s, p50 %v, p99 %v, p999 %v\n",
		cfg.Conns, cfg.Size, cfg.Pipeline, res.MBps(), res.MsgsPerSec(),
		res.Latency.Quantile(0.5), res.Latency.Quantile(0.99), res.Latency.Quantile(0.999))
	return nil
}
