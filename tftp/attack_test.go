package tftp

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/logsum"
)

// The tests of issue 16: a few hostile packets from other loopback
// addresses than the legitimate client's (127.0.0.2 and up) must not take
// the service away from it.

// TestAttackSlotHold is point 1: from 127.0.0.2, requests asking for the
// longest timeout, some acknowledging the OACK and falling silent, while
// curl downloads from 127.0.0.1. The attacker gets its share and ERRORs
// that say why; curl's downloads are byte-identical throughout; every
// attacker slot is free within the silence limit of its last packet.
func TestAttackSlotHold(t *testing.T) {
	leakcheck.Check(t)
	curl := needTool(t, "curl")
	dir := t.TempDir()
	hash := writePattern(t, dir, "big.bin", 1<<20)
	const silence = 4 * time.Second
	reg := prometheus.NewRegistry()
	srv := startServer(t, ServerConfig{
		Root: dir, MaxTransfers: 64, SilenceLimit: silence, Registerer: reg,
		Listen: netip.MustParseAddrPort("127.0.0.1:0"),
	})
	url := fmt.Sprintf("tftp://127.0.0.1:%d/big.bin", srv.Addr().Port())

	var (
		stop     atomic.Bool
		lastSent atomic.Int64
		refusals atomic.Int64 // ERRORs that name the client's address as the reason
		nERRORs  atomic.Int64 // every ERROR the attacker read
		errMsg   atomic.Value // a refusal's message
		wg       sync.WaitGroup
	)
	wg.Go(func() {
		// Rounds of 100 fresh ports, each asking for timeout 255; the odd
		// ones acknowledge the OACK (pinning the transfer), then nothing.
		for round := 0; !stop.Load(); round++ {
			conns := make([]*net.UDPConn, 100)
			for i := range conns {
				c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.2:0")))
				if err != nil {
					t.Error(err)
					return
				}
				conns[i] = c
				c.WriteToUDPAddrPort(rrq("big.bin", "timeout", "255", "blksize", "512"), srv.Addr())
			}
			lastSent.Store(time.Now().UnixNano())
			buf := make([]byte, 2048)
			for i, c := range conns {
				c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				n, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					continue
				}
				switch op, _ := PacketOpcode(buf[:n]); op {
				case OpERROR:
					// A port of an earlier round may come back and read
					// its abandoned transfer's "timed out": count only
					// the refusals.
					nERRORs.Add(1)
					if _, msg, _ := ParseError(buf[:n]); strings.Contains(msg, "your address") {
						refusals.Add(1)
						errMsg.Store(msg)
					}
				case OpOACK:
					if i%2 == 1 {
						c.WriteToUDPAddrPort(AppendAck(nil, 0), from)
						lastSent.Store(time.Now().UnixNano())
					}
				}
			}
			for _, c := range conns {
				c.Close()
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	// curl downloads throughout the attack.
	start := time.Now()
	var downloads int
	for time.Since(start) < 6*time.Second {
		out := filepath.Join(t.TempDir(), "out")
		cmd := exec.Command(curl, "-sS", "--max-time", "60", "-o", out, url)
		if b, err := cmd.CombinedOutput(); err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("curl download %d during the attack: %v: %s", downloads+1, err, b)
		}
		if got := fileSHA(t, out); got != hash {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("curl download %d differs", downloads+1)
		}
		downloads++
	}
	stop.Store(true)
	wg.Wait()
	attackEnd := time.Unix(0, lastSent.Load())

	m := gather(t, reg)
	refused := m[`ioactor_tftp_requests_refused_total{reason="client_transfers"}`] + m[`ioactor_tftp_requests_refused_total{reason="client_rate"}`]
	msg, _ := errMsg.Load().(string)
	t.Logf("%d byte-identical curl downloads during the attack; %v requests of the attacker refused (client_transfers %v, client_rate %v, busy %v); the attacker read %d ERRORs, %d of them refusals, e.g. %q",
		downloads, refused, m[`ioactor_tftp_requests_refused_total{reason="client_transfers"}`], m[`ioactor_tftp_requests_refused_total{reason="client_rate"}`],
		m[`ioactor_tftp_requests_refused_total{reason="busy"}`], nERRORs.Load(), refusals.Load(), msg)
	if refused == 0 || refusals.Load() == 0 {
		t.Fatalf("the attacker was not refused with a clear ERROR")
	}
	if m[`ioactor_tftp_requests_refused_total{reason="busy"}`] != 0 {
		t.Fatalf("the server ran out of slots: the attacker took more than its share")
	}

	// Every attacker slot is free within the silence limit of the
	// attacker's last packet (plus slack for a loaded machine).
	for {
		sts, err := srv.Transfers(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		held := 0
		for _, st := range sts {
			if st.Client.Addr() == netip.MustParseAddr("127.0.0.2") {
				held++
			}
		}
		if held == 0 {
			t.Logf("attacker slots all free %v after its last packet (silence limit %v)", time.Since(attackEnd).Round(10*time.Millisecond), silence)
			break
		}
		if time.Since(attackEnd) > silence+3*time.Second {
			t.Fatalf("%d attacker slots still held %v after its last packet", held, time.Since(attackEnd))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func needTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: this test needs it (apt-get install %s): %v", name, name, err)
	}
	return p
}

// TestAttackErrorStorm is point 2: one forged ERROR (or ACK) whose source
// is one transfer port, sent to another, must not start an exchange
// between them. It needs a raw socket, so root (CI runs as root).
func TestAttackErrorStorm(t *testing.T) {
	leakcheck.Check(t)
	if os.Geteuid() != 0 {
		t.Fatal("this test forges source addresses with a raw socket: run it as root (CI does)")
	}
	for _, single := range []bool{false, true} {
		t.Run(fmt.Sprintf("single=%v", single), func(t *testing.T) {
			dir := t.TempDir()
			writePattern(t, dir, "f", 1<<20)
			srv := startServer(t, ServerConfig{Root: dir, SinglePort: single})
			// Two transfers whose client (127.0.0.3) never answers: their
			// ports are where their DATA 1 came from.
			a, b := rawFrom(t, "127.0.0.3:0"), rawFrom(t, "127.0.0.3:0")
			a.send(srv.Addr(), rrq("f"))
			b.send(srv.Addr(), rrq("f"))
			_, pa := a.mustRecv("DATA 1 of A")
			_, pb := b.mustRecv("DATA 1 of B")
			sniff := newSniffer(t)
			cpu0 := processCPU()
			for _, pkt := range [][]byte{AppendError(nil, ErrUnknownTID, "forged"), AppendAck(nil, 1)} {
				spoofUDP(t, pa, pb, pkt)
				if pa != pb {
					spoofUDP(t, pb, pa, pkt)
				}
			}
			sent := 4
			if pa == pb {
				sent = 2
			}
			n := sniff.count(time.Second, pa, pb)
			cpu := processCPU() - cpu0
			t.Logf("transfer ports %v and %v: %d packets between them in 1 s after %d forged ones (%d in answer); %v of CPU", pa, pb, n, sent, n-sent, cpu)
			if n-sent >= 10 {
				t.Fatalf("%d packets in answer to %d forged ones", n-sent, sent)
			}
			if cpu > 500*time.Millisecond {
				t.Fatalf("%v of CPU in the second after the forged packets", cpu)
			}
		})
	}
}

// processCPU returns the process's user and system time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// spoofUDP sends a UDP datagram with a forged source over a raw socket.
func spoofUDP(t testing.TB, from, to netip.AddrPort, payload []byte) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		t.Fatalf("raw socket: %v", err)
	}
	defer syscall.Close(fd)
	pkt := make([]byte, 28+len(payload))
	pkt[0] = 0x45
	binary.BigEndian.PutUint16(pkt[2:], uint16(len(pkt)))
	pkt[8] = 64
	pkt[9] = syscall.IPPROTO_UDP
	src, dst := from.Addr().As4(), to.Addr().As4()
	copy(pkt[12:16], src[:])
	copy(pkt[16:20], dst[:])
	binary.BigEndian.PutUint16(pkt[20:], from.Port())
	binary.BigEndian.PutUint16(pkt[22:], to.Port())
	binary.BigEndian.PutUint16(pkt[24:], uint16(8+len(payload))) // checksum 0: none (IPv4)
	copy(pkt[28:], payload)
	if err := syscall.Sendto(fd, pkt, 0, &syscall.SockaddrInet4{Addr: dst}); err != nil {
		t.Fatalf("sendto: %v", err)
	}
}

// sniffer sees every UDP datagram the host receives (a raw IPPROTO_UDP
// socket).
type sniffer struct {
	t  testing.TB
	fd int
}

func newSniffer(t testing.TB) *sniffer {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_UDP)
	if err != nil {
		t.Fatalf("raw socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	tv := syscall.Timeval{Usec: 20000}
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	return &sniffer{t: t, fd: fd}
}

// count counts, for d, the datagrams from one of the ports to the other
// (or to itself).
func (s *sniffer) count(d time.Duration, a, b netip.AddrPort) int {
	buf := make([]byte, 70000)
	n := 0
	end := time.Now().Add(d)
	in := func(p uint16) bool { return p == a.Port() || p == b.Port() }
	for time.Now().Before(end) {
		m, _, err := syscall.Recvfrom(s.fd, buf, 0)
		if err != nil || m < 28 {
			continue
		}
		ihl := int(buf[0]&0xf) * 4
		if m < ihl+8 {
			continue
		}
		sp, dp := binary.BigEndian.Uint16(buf[ihl:]), binary.BigEndian.Uint16(buf[ihl+2:])
		if in(sp) && in(dp) {
			n++
		}
	}
	return n
}

// countingWriter counts the bytes written through it.
type countingWriter struct{ n atomic.Int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n.Add(int64(len(p)))
	return len(p), nil
}

// TestAttackLogAmplification is point 3: a request with a 65,000-byte file
// name costs the log under 1 KB, and 3,500 of them under 1 MB.
func TestAttackLogAmplification(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	var w countingWriter
	h := logsum.New(slog.NewTextHandler(&w, &slog.HandlerOptions{Level: slog.LevelInfo}), logsum.Config{})
	log := slog.New(h)
	// No per-client limit: every request makes a transfer, and its log.
	reg := prometheus.NewRegistry()
	srv := startServer(t, ServerConfig{Root: dir, Logger: log, MaxClientTransfers: -1, ClientRate: -1, Registerer: reg})
	atk := rawFrom(t, "127.0.0.4:0")
	name := strings.Repeat("\x1b[2J", 65000/4)
	req := rrq(name)

	// One request: its log bytes.
	before := w.n.Load()
	atk.send(srv.Addr(), req)
	atk.mustRecv("ERROR")
	waitLog := func(min int64) {
		for deadline := time.Now().Add(10 * time.Second); w.n.Load() < min && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitLog(before + 1)
	time.Sleep(50 * time.Millisecond)
	one := w.n.Load() - before
	t.Logf("one request with a %d-byte name: %d log bytes", len(name), one)
	if one == 0 || one >= 1024 {
		t.Fatalf("%d log bytes for one request", one)
	}

	// 3,500 of them, from fresh ports.
	before = w.n.Load()
	start := time.Now()
	// 16 senders, each waiting for its ERROR before the next, so that none
	// is lost in a full receive buffer: every one costs the server its log.
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			buf := make([]byte, 1024)
			for i := g; i < 3500; i += 16 {
				c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.4:0")))
				if err != nil {
					t.Error(err)
					return
				}
				c.WriteToUDPAddrPort(req, srv.Addr())
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				c.ReadFromUDPAddrPort(buf)
				c.Close()
			}
		})
	}
	wg.Wait()
	var served float64
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if served = gather(t, reg)[`ioactor_tftp_transfers_total{op="read",result="refused"}`]; served >= 3501 {
			break
		}
	}
	h.Flush()
	total := w.n.Load() - before
	t.Logf("3500 such requests sent in %v, %v reached the server: %d log bytes (%.0f per request)", time.Since(start).Round(time.Millisecond), served-1, total, float64(total)/3500)
	if served-1 < 3000 {
		t.Fatalf("only %v of the 3500 requests reached the server", served-1)
	}
	if total >= 1<<20 {
		t.Fatalf("3500 requests wrote %d log bytes", total)
	}
}

// TestAttackAmplification is point 5: the bytes an unanswered 15-byte RRQ
// draws, in the default configuration.
func TestAttackAmplification(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	writePattern(t, dir, "f.bin1", 1<<20)
	for _, single := range []bool{false, true} {
		t.Run(fmt.Sprintf("single=%v", single), func(t *testing.T) {
			srv := startServer(t, ServerConfig{Root: dir, SinglePort: single})
			for _, opts := range [][]string{nil, {"blksize", "1468"}} {
				req := rrq("f.bin1", opts...)
				c := rawFrom(t, "127.0.0.5:0")
				c.send(srv.Addr(), req)
				var got, pkts int
				// The default: 1 s, then 2 s, then the transfer is gone.
				for {
					pkt, _, ok := c.recv(2500 * time.Millisecond)
					if !ok {
						break
					}
					got += len(pkt)
					pkts++
				}
				amp := float64(got) / float64(len(req))
				t.Logf("unanswered %d-byte RRQ (options %q): %d packets, %d bytes: %.1f× amplification", len(req), opts, pkts, got, amp)
				if amp > 70 {
					t.Fatalf("%.1f× amplification", amp)
				}
			}
		})
	}
	if !bytes.Equal(rrq("f.bin1")[:2], []byte{0, 1}) || len(rrq("f.bin1")) != 15 {
		t.Fatal("the request is not the 15-byte RRQ of the issue")
	}
}

// TestAttackRefusalsNotSilenced: a flood of refused requests from one
// address gets a few ERRORs and then silence, but does not use up the
// ERRORs that tell another client why it is refused.
func TestAttackRefusalsNotSilenced(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	writePattern(t, dir, "f", 1<<20)
	reg := prometheus.NewRegistry()
	srv := startServer(t, ServerConfig{Root: dir, MaxClientTransfers: 1, ClientRate: -1, ErrorRate: 5, Registerer: reg})
	// The attacker holds its one transfer and floods.
	hold := rawFrom(t, "127.0.0.7:0")
	hold.send(srv.Addr(), rrq("f"))
	hold.mustRecv("DATA 1")
	var errs int
	start := time.Now()
	for range 500 {
		c := rawFrom(t, "127.0.0.7:0")
		c.send(srv.Addr(), rrq("f"))
		if _, _, ok := c.recv(5 * time.Millisecond); ok {
			errs++
		}
		c.c.Close()
	}
	// The legitimate client, over its own share, is told why.
	mine := rawFrom(t, "127.0.0.1:0")
	mine.send(srv.Addr(), rrq("f"))
	mine.mustRecv("DATA 1")
	again := rawFrom(t, "127.0.0.1:0")
	again.send(srv.Addr(), rrq("f"))
	pkt, _ := again.mustRecv("a refusal")
	expectError(t, pkt, ErrUndefined, "the legitimate client's second request")
	m := gather(t, reg)
	t.Logf("the flood of 500 refused requests got %d ERRORs (%v suppressed); the other client's refusal arrived: %q", errs, m["ioactor_tftp_errors_suppressed_total"], pkt[4:len(pkt)-1])
	if max := refusalBurst + int(time.Since(start).Seconds()+1)*refusalRate; errs > max {
		t.Fatalf("the flood got %d ERRORs in %v, more than %d", errs, time.Since(start), max)
	}
}
