package tcp_test

// Tests for the API traps of issue 15 (found by writing the echo example
// from the docs alone): each shows the trap is gone.

import (
	"context"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tcp"
)

// logRecords is a slog.Handler that keeps the messages of the records at
// Warn and above.
type logRecords struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logRecords) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelWarn }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Message)
	l.mu.Unlock()
	return nil
}
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecords) WithGroup(string) slog.Handler      { return l }

// count is how many records had a message starting with prefix.
func (l *logRecords) count(prefix string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.HasPrefix(m, prefix) {
			n++
		}
	}
	return n
}

// waitLog waits until n records start with prefix.
func (l *logRecords) waitLog(t *testing.T, prefix string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for l.count(prefix) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d log records %q, want %d", l.count(prefix), prefix, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func newLoggedSystem(t *testing.T, reg prometheus.Registerer) (*netio.System, *logRecords) {
	t.Helper()
	logs := &logRecords{}
	return newSystemWith(t, netio.Config{Loops: 2, Logger: slog.New(logs), Registerer: reg}), logs
}

// The natural spelling, case tcp.Received, matches: Received is delivered as
// a value like every other event (it used to arrive as a *Received, so this
// case compiled and never matched).
func TestReceivedArrivesAsAValue(t *testing.T) {
	sys := newSystem(t)
	got := make(chan string, 1)
	h := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch m := msg.(type) {
		case tcp.Connected:
			ctx.Reply(tcp.Register{})
		case tcp.Received:
			got <- string(m.Data())
		}
	}))
	bound := make(chan tcp.Bound, 1)
	binder := sys.Spawn(netio.ReceiveFunc(func(ctx *netio.Context, msg any) {
		switch m := msg.(type) {
		case tcp.Bound:
			bound <- m
		case tcp.Connected:
			ctx.Forward(h, m)
		}
	}))
	tcp.Manager(sys).Tell(tcp.Bind{Handler: binder, LocalAddr: loopback})
	b := <-bound
	peer, err := net.Dial("tcp", b.LocalAddr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peer.Write([]byte("value"))
	select {
	case s := <-got:
		if s != "value" {
			t.Fatalf("Received %q", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("case tcp.Received never matched")
	}
	b.Socket.Tell(tcp.Unbind{})
}

// The zero Received is usable (Data is nil), and NewReceived carries its
// bytes: code that makes the event itself (raft's TLS layer) needs both.
func TestReceivedZeroAndNew(t *testing.T) {
	var zero tcp.Received
	if zero.Data() != nil {
		t.Fatalf("zero Received: Data %q", zero.Data())
	}
	if r := tcp.NewReceived([]byte("x")); string(r.Data()) != "x" {
		t.Fatalf("NewReceived: Data %q", r.Data())
	}
}

// A Bind or Connect told from outside any actor without a Handler would
// make a socket that answers nobody: the manager refuses it with a warning
// and makes no socket.
func TestCommandWithoutHandlerIsRefused(t *testing.T) {
	sys, logs := newLoggedSystem(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	tcp.Manager(sys).Tell(tcp.Bind{LocalAddr: addr})
	tcp.Manager(sys).Tell(&tcp.Connect{RemoteAddr: addr})
	const msg = "tcp: command without a handler or a sender"
	logs.waitLog(t, msg, 2)
	// No listener was made: the port is still free.
	ln, err = net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatalf("the refused Bind holds the port: %v", err)
	}
	ln.Close()
}

// A plain NACK (a Write while another is pending, without UseResumeWriting)
// loses the refused bytes unless the handler resends them; an echo written
// without flow control used to lose them silently. The connection logs the
// first one per connection and counts every one.
func TestPlainNackIsLoud(t *testing.T) {
	reg := prometheus.NewRegistry()
	sys, logs := newLoggedSystem(t, reg)
	p := newProbe(sys)
	_, conn := serverConn(t, sys, p, tcp.Register{})
	conn.Tell(tcp.Write{Data: make([]byte, 32<<20)}) // more than the kernel takes: stays pending
	conn.Tell(tcp.Write{Data: []byte("a")})
	conn.Tell(tcp.Write{Data: []byte("b")})
	expect[tcp.CommandFailed](t, p)
	expect[tcp.CommandFailed](t, p)
	logs.waitLog(t, tcp.LogWriteRefused, 1)
	if n := logs.count(tcp.LogWriteRefused); n != 1 {
		t.Fatalf("%d warnings for 2 NACKs of one connection, want 1", n)
	}
	if n := counter(t, reg, "ioactor_tcp_writes_refused_total"); n != 2 {
		t.Fatalf("ioactor_tcp_writes_refused_total = %v, want 2", n)
	}

	// With UseResumeWriting the NACK is the handler's chosen protocol: no
	// warning.
	_, conn = serverConn(t, sys, p, tcp.Register{UseResumeWriting: true})
	conn.Tell(tcp.Write{Data: make([]byte, 32<<20)})
	conn.Tell(tcp.Write{Data: []byte("a")})
	expect[tcp.CommandFailed](t, p)
	if n := logs.count(tcp.LogWriteRefused); n != 1 {
		t.Fatalf("%d warnings, want still 1 (UseResumeWriting)", n)
	}
}

func counter(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// Received is a value: a `case *tcp.Received` (or *udp.Received) anywhere in
// the module compiles and never matches. Code written against the old
// pointer event (a branch merged later) is caught here rather than by a
// handler that silently drops every read.
func TestNoPointerReceivedInTheModule(t *testing.T) {
	pat := regexp.MustCompile(`\*(tcp|udp)\.Received\b|&(tcp|udp)\.Received\{`)
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && path != ".." {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || path == filepath.Join("..", "tcp", "traps_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			if pat.MatchString(line) {
				t.Errorf("%s:%d: %s — Received is delivered as a value", path, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
