package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/loadgen"
)

var loopback = netip.MustParseAddrPort("127.0.0.1:0")

func startServer(tb testing.TB, impl Impl) *Server {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv, err := Start(ctx, impl, loopback, ServerConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Close(ctx); err != nil {
			tb.Errorf("close %s: %v", impl, err)
		}
	})
	return srv
}

// TestContendersEcho checks that every contender echoes every byte, in order,
// on several connections at once, and that it stops cleanly.
func TestContendersEcho(t *testing.T) {
	for _, impl := range Impls() {
		t.Run(string(impl), func(t *testing.T) {
			leakcheck.Check(t)
			srv := startServer(t, impl)
			want := make([]byte, 256<<10)
			rand.Read(want)
			errs := make(chan error, 4)
			for range cap(errs) {
				go func() { errs <- echoOnce(srv.Addr.String(), want) }()
			}
			for range cap(errs) {
				if err := <-errs; err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func echoOnce(addr string, want []byte) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	werr := make(chan error, 1)
	go func() {
		// Odd-sized writes, so that reads and writes do not line up.
		var err error
		for p := want; len(p) > 0 && err == nil; {
			n := min(len(p), 1000+len(p)%3000)
			_, err = c.Write(p[:n])
			p = p[n:]
		}
		werr <- err
	}()
	got := make([]byte, len(want))
	_, rerr := io.ReadFull(c, got)
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("read: %w", rerr)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("echoed bytes differ")
	}
	return nil
}

// TestLoadgenCountsMessages runs the load generator in counting mode against
// one contender, with the test process as the sampled "server".
func TestLoadgenCountsMessages(t *testing.T) {
	leakcheck.Check(t)
	srv := startServer(t, IoactorAck)
	res, err := loadgen.Run(context.Background(), loadgen.Config{
		Addr: srv.Addr.String(), Conns: 4, Size: 100, Pipeline: 16,
		Warmup: 20 * time.Millisecond, Messages: 5000, Duration: 10 * time.Second,
		ServerPID: os.Getpid(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.FirstErr != nil {
		t.Fatal(res.FirstErr)
	}
	if res.Messages != 5000 || res.Latency.Count() != 5000 || res.Bytes != 500000 {
		t.Fatalf("messages %d, latencies %d, bytes %d; want 5000, 5000, 500000", res.Messages, res.Latency.Count(), res.Bytes)
	}
	if res.Server.RSSMax <= 0 {
		t.Fatalf("no RSS sampled: %+v", res.Server)
	}
}

// BenchmarkThroughput is the short echo matrix, every contender in this
// process behind the same load generator: one op is one round trip of one
// message, so ns/op is the inverse of the aggregate message rate and
// allocs/op is allocations per message (server and client; the client
// allocates nothing per message).
func BenchmarkThroughput(b *testing.B) {
	for _, impl := range Impls() {
		b.Run(string(impl), func(b *testing.B) {
			leakcheck.Check(b)
			srv := startServer(b, impl)
			for _, conns := range []int{1, 64} {
				for _, size := range []int{64, 4096} {
					for _, depth := range []int{1, 16} {
						name := fmt.Sprintf("conns=%d/size=%d/pipeline=%d", conns, size, depth)
						b.Run(name, func(b *testing.B) { benchEcho(b, srv.Addr, conns, size, depth) })
					}
				}
			}
		})
	}
}

func benchEcho(b *testing.B, addr netip.AddrPort, conns, size, depth int) {
	b.SetBytes(int64(size))
	b.ReportAllocs()
	res, err := loadgen.Run(context.Background(), loadgen.Config{
		Addr: addr.String(), Conns: conns, Size: size, Pipeline: depth,
		Warmup:   100 * time.Millisecond,
		Messages: int64(b.N), Duration: time.Minute,
		OnMeasureStart: b.ResetTimer, OnMeasureEnd: b.StopTimer,
	})
	if err != nil {
		b.Fatal(err)
	}
	if res.FirstErr != nil {
		b.Fatal(res.FirstErr)
	}
	if res.Messages != int64(b.N) {
		b.Fatalf("%d messages in a minute, want %d", res.Messages, b.N)
	}
	b.ReportMetric(res.MsgsPerSec(), "msgs/s")
	b.ReportMetric(float64(res.Latency.Quantile(0.50).Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(res.Latency.Quantile(0.99).Nanoseconds()), "p99-ns")
}
