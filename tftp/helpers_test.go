package tftp

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ioactor/ioactor/netio"
)

// testLogger logs through t when -v is set, and is silent otherwise.
func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startServer starts a server on a fresh 2-loop system, listening on a free
// loopback port unless cfg says otherwise; both stop at the end of the
// test.
func startServer(t testing.TB, cfg ServerConfig) *Server {
	t.Helper()
	if !cfg.Listen.IsValid() {
		cfg.Listen = netip.MustParseAddrPort("127.0.0.1:0")
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	sys, err := netio.NewSystem(netio.Config{Loops: 2, Logger: cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(sys, cfg)
	if err != nil {
		sys.Shutdown(context.Background())
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sys.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return srv
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:8])
}

func fileSHA(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// writePattern writes a pattern file of size bytes and returns its hash.
func writePattern(t testing.TB, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), io.NewSectionReader(patternFile{size: size}, 0, size)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	os.Chmod(p, 0o644)
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// rawConn is a bare UDP socket for speaking TFTP by hand.
type rawConn struct {
	t testing.TB
	c *net.UDPConn
}

func newRaw(t testing.TB, network string) *rawConn {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "udp6" {
		addr = "[::1]:0"
	}
	return rawFrom(t, addr)
}

// rawFrom is a rawConn bound to addr: attackers use other loopback
// addresses (127.0.0.2 and up) than the legitimate client.
func rawFrom(t testing.TB, addr string) *rawConn {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c}
}

func (r *rawConn) addr() netip.AddrPort { return r.c.LocalAddr().(*net.UDPAddr).AddrPort() }

func (r *rawConn) send(to netip.AddrPort, pkt []byte) {
	r.t.Helper()
	if _, err := r.c.WriteToUDPAddrPort(pkt, to); err != nil {
		r.t.Fatal(err)
	}
}

// recv returns the next datagram, or ok false after d.
func (r *rawConn) recv(d time.Duration) (pkt []byte, from netip.AddrPort, ok bool) {
	buf := make([]byte, 65536)
	r.c.SetReadDeadline(time.Now().Add(d))
	n, from, err := r.c.ReadFromUDPAddrPort(buf)
	if err != nil {
		return nil, netip.AddrPort{}, false
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), true
}

// mustRecv returns the next datagram or fails the test.
func (r *rawConn) mustRecv(what string) ([]byte, netip.AddrPort) {
	r.t.Helper()
	pkt, from, ok := r.recv(5 * time.Second)
	if !ok {
		r.t.Fatalf("no %s", what)
	}
	return pkt, from
}

// expectError checks that pkt is an ERROR with the code.
func expectError(t testing.TB, pkt []byte, code ErrorCode, what string) {
	t.Helper()
	c, msg, err := ParseError(pkt)
	if err != nil || c != code {
		t.Fatalf("%s: got %q, want ERROR %d", what, pkt, code)
	}
	if msg == "" {
		t.Fatalf("%s: ERROR %d without a message", what, code)
	}
}

func rrq(name string, opts ...string) []byte {
	return request(OpRRQ, name, ModeOctet, opts...)
}

func request(op Opcode, name, mode string, opts ...string) []byte {
	r := Request{Op: op, Filename: name, Mode: mode}
	for i := 0; i+1 < len(opts); i += 2 {
		r.Options = append(r.Options, Option{Name: opts[i], Value: opts[i+1]})
	}
	return AppendRequest(nil, r)
}

func get(t testing.TB, c *Client, srv *Server, name string) ([]byte, Stats) {
	t.Helper()
	var buf bytes.Buffer
	st, err := c.Get(context.Background(), srv.Addr().String(), name, &buf)
	if err != nil {
		t.Fatalf("get %s with %+v: %v", name, *c, err)
	}
	return buf.Bytes(), st
}

// download acknowledges DATA from tid until the last block, the first of
// which is pkt, skipping the duplicates a retransmission brings, and
// returns the file. Every DATA must come from tid.
func (r *rawConn) download(tid netip.AddrPort, pkt []byte, bs int) []byte {
	r.t.Helper()
	var got []byte
	for block := uint16(1); ; {
		b, payload, err := ParseData(pkt)
		if err != nil {
			r.t.Fatalf("got %q, want DATA %d", pkt[:min(len(pkt), 8)], block)
		}
		if b == block {
			got = append(got, payload...)
			r.send(tid, AppendAck(nil, block))
			if len(payload) < bs {
				return got
			}
			block++
		} else if b != block-1 {
			r.t.Fatalf("got DATA %d, want %d", b, block)
		}
		var from netip.AddrPort
		pkt, from = r.mustRecv(fmt.Sprint("DATA ", block))
		if from != tid {
			r.t.Fatalf("DATA %d from %v, want %v", block, from, tid)
		}
	}
}
