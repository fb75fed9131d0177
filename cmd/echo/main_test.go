package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
)

func TestServeAndLoadEachFlow(t *testing.T) {
	for _, flow := range []string{"ack", "nack", "pull"} {
		t.Run(flow, func(t *testing.T) {
			leakcheck.Check(t)
			// Find a free port, then serve on it.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := ln.Addr().String()
			ln.Close()
			ctx, cancel := context.WithCancel(context.Background())
			var out, errOut testutil.SyncBuffer
			done := make(chan error, 1)
			go func() {
				done <- run(ctx, []string{"serve", "-flow", flow, "-listen", addr, "-loops", "2"}, &out, &errOut)
			}()
			for !strings.Contains(out.String(), "listening") {
				time.Sleep(10 * time.Millisecond)
			}
			var lout bytes.Buffer
			err = run(context.Background(), []string{"load", "-addr", addr, "-conns", "4", "-size", "512", "-pipeline", "4", "-warmup", "100ms", "-duration", "300ms"}, &lout, &errOut)
			if err != nil || !strings.Contains(lout.String(), "MB/s") {
				t.Fatalf("load: %v; %s %s", err, lout.String(), errOut.String())
			}
			t.Log(lout.String())
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestHelpAndVersion(t *testing.T) {
	testutil.CheckHelp(t, "echo", run, [][]string{{"-h"}, {"serve", "-h"}, {"load", "-h"}})
}
