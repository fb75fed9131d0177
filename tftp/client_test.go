package tftp

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// These tests run the client and the server's transfer logic over an
// in-memory network in a synctest bubble: timeouts of seconds cost nothing
// and happen at exact fake times.

func patternBytes(n int) []byte {
	b := make([]byte, n)
	patternFile{size: int64(n)}.ReadAt(b, 0)
	return b
}

func writeFile(t testing.TB, dir, name string, data []byte) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// memSetup starts a memServer serving dir; stop it with the returned func.
func memSetup(t *testing.T, n *memNet, cfg ServerConfig) (*memServer, func()) {
	t.Helper()
	m, err := newMemServer(n, cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		m.serve(ctx)
		close(done)
	}()
	return m, func() {
		cancel()
		<-done
	}
}

func memGet(c *Client, n *memNet, server netip.AddrPort, file string) ([]byte, Stats, error) {
	conn := n.listen(0)
	defer conn.close()
	var buf bytes.Buffer
	st, err := c.get(context.Background(), conn, server, file, &buf)
	return buf.Bytes(), st, err
}

func memPut(c *Client, n *memNet, server netip.AddrPort, file string, data []byte, size int64) (Stats, error) {
	conn := n.listen(0)
	defer conn.close()
	return c.put(context.Background(), conn, server, file, bytes.NewReader(data), size)
}

func TestFakeTimeGetPutLossy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		data := patternBytes(300_000)
		writeFile(t, dir, "f", data)
		n := newMemNet()
		n.rng = rand.New(rand.NewPCG(7, 7))
		n.drop, n.dup, n.latency = 0.05, 0.05, 2*time.Millisecond
		m, stop := memSetup(t, n, ServerConfig{Root: dir, AllowWrite: true, AllowOverwrite: true})
		defer stop()
		for i, c := range []*Client{
			{},
			{BlockSize: 1428, TSize: true},
			{BlockSize: 1000, WindowSize: 8, Timeout: 300 * time.Millisecond},
			{BlockSize: 8192, WindowSize: 16, TSize: true, Retries: 10},
		} {
			got, st, err := memGet(c, n, m.addr(), "f")
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("get %d: %v, %d bytes, stats %+v", i, err, len(got), st)
			}
			name := "up" + string(rune('a'+i))
			if st, err := memPut(c, n, m.addr(), name, data, int64(len(data))); err != nil {
				t.Fatalf("put %d: %v %+v", i, err, st)
			}
			if up, _ := os.ReadFile(filepath.Join(dir, name)); !bytes.Equal(up, data) {
				t.Fatalf("put %d: uploaded %d bytes differ", i, len(up))
			}
		}
	})
}

func TestFakeTimeClientGivesUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newMemNet()
		start := time.Now()
		_, st, err := memGet(&Client{}, n, netip.AddrPortFrom(memHost, 69), "f")
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("err %v", err)
		}
		// 1 s, then doubling to 8 s: 1+2+4+8+8+8.
		if d := time.Since(start); d != 31*time.Second || st.Retransmits != 5 {
			t.Fatalf("gave up after %v and %d retransmissions", d, st.Retransmits)
		}
	})
}

func TestFakeTimeServerGivesUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		writeFile(t, dir, "f", patternBytes(5000))
		n := newMemNet()
		m, stop := memSetup(t, n, ServerConfig{Root: dir, MinTimeout: -1, SilenceLimit: -1})
		defer stop()
		// A client that asks and never answers (or a forged request): the
		// first packet goes FirstRetries+1 times, and no ERROR follows.
		conn := n.listen(0)
		defer conn.close()
		start := time.Now()
		conn.writeTo(AppendRequest(nil, Request{Op: OpRRQ, Filename: "f", Mode: ModeOctet}), m.addr())
		x := <-m.done
		if d := time.Since(start); d != 3*time.Second {
			t.Fatalf("server gave up after %v", d)
		}
		if x.snd.retransmits != 1 || !errors.Is(x.snd.err, ErrTimeout) {
			t.Fatalf("%d retransmissions, %v", x.snd.retransmits, x.snd.err)
		}
		if data, errs := countPackets(conn); data != 2 || errs != 0 {
			t.Fatalf("client got %d DATA and %d ERROR", data, errs)
		}

		// A client that answers the first block and falls silent: the
		// retries run out after 1+2+4+8+8+8 s, then an ERROR.
		conn2 := n.listen(0)
		defer conn2.close()
		conn2.writeTo(AppendRequest(nil, Request{Op: OpRRQ, Filename: "f", Mode: ModeOctet}), m.addr())
		p := <-conn2.in
		start = time.Now()
		conn2.writeTo(AppendAck(nil, 1), p.from)
		x = <-m.done
		if d := time.Since(start); d != 31*time.Second {
			t.Fatalf("server gave up after %v", d)
		}
		if x.snd.retransmits != 5 || !errors.Is(x.snd.err, ErrTimeout) {
			t.Fatalf("%d retransmissions, %v", x.snd.retransmits, x.snd.err)
		}
		if data, errs := countPackets(conn2); data != 6 || errs != 1 {
			t.Fatalf("client got %d DATA and %d ERROR", data, errs)
		}
	})
}

func TestFakeTimeSilenceLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		writeFile(t, dir, "f", patternBytes(5000))
		n := newMemNet()
		// The client asks for the longest timeout: the cap refuses it.
		m, stop := memSetup(t, n, ServerConfig{Root: dir, MinTimeout: -1, MaxTimeoutOption: 10 * time.Second, SilenceLimit: 20 * time.Second})
		defer stop()
		conn := n.listen(0)
		defer conn.close()
		conn.writeTo(AppendRequest(nil, Request{Op: OpRRQ, Filename: "f", Mode: ModeOctet, Options: []Option{{Name: "timeout", Value: "255"}, {Name: "blksize", Value: "1024"}}}), m.addr())
		p := <-conn.in
		if op, _ := PacketOpcode(p.data); op != OpOACK || bytes.Contains(p.data, []byte("timeout")) {
			t.Fatalf("first packet %q: want an OACK without timeout", p.data)
		}
		// Granted within the cap, and the client falls silent after ACK 0:
		// 10 s, doubling, would take 310 s; the silence limit ends it at 20.
		conn2 := n.listen(0)
		defer conn2.close()
		conn2.writeTo(AppendRequest(nil, Request{Op: OpRRQ, Filename: "f", Mode: ModeOctet, Options: []Option{{Name: "timeout", Value: "10"}}}), m.addr())
		p = <-conn2.in
		if op, _ := PacketOpcode(p.data); op != OpOACK || !bytes.Contains(p.data, []byte("timeout\x0010")) {
			t.Fatalf("first packet %q: want an OACK with timeout 10", p.data)
		}
		start := time.Now()
		conn2.writeTo(AppendAck(nil, 0), p.from)
		for range 2 {
			x := <-m.done
			if x.neg.Timeout == 10*time.Second {
				if d := time.Since(start); d != 20*time.Second || x.result != resultTimeout {
					t.Fatalf("silent transfer ended after %v: %s", d, x.result)
				}
			}
		}
	})
}

// countPackets drains conn and counts the DATA and ERROR packets.
func countPackets(conn *memConn) (data, errs int) {
	for len(conn.in) > 0 {
		p := <-conn.in
		switch op, _ := PacketOpcode(p.data); op {
		case OpDATA:
			data++
		case OpERROR:
			errs++
		}
	}
	return data, errs
}

func TestFakeTimeTransferDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		writeFile(t, dir, "f", patternBytes(1<<20))
		n := newMemNet()
		n.latency = 50 * time.Millisecond // 100 ms a block: 200 s for the file
		m, stop := memSetup(t, n, ServerConfig{Root: dir, TransferDeadline: 3 * time.Second})
		defer stop()
		start := time.Now()
		_, _, err := memGet(&Client{}, n, m.addr(), "f")
		var te *Error
		if !errors.As(err, &te) || te.Code != ErrUndefined || !strings.Contains(te.Message, "deadline") {
			t.Fatalf("err %v", err)
		}
		if d := time.Since(start); d < 3*time.Second || d > 3*time.Second+200*time.Millisecond {
			t.Fatalf("ended after %v", d)
		}
	})
}

// TestFakeTimeRollover crosses block 65535 with our client and the
// server's logic, at the smallest block size (512 KiB), with both rollover
// policies and a window.
func TestFakeTimeRollover(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		data := patternBytes(65536*8 + 5)
		writeFile(t, dir, "f", data)
		for _, roll := range []Rollover{RolloverZero, RolloverOne} {
			n := newMemNet()
			m, stop := memSetup(t, n, ServerConfig{Root: dir, Rollover: roll, AllowWrite: true, AllowOverwrite: true})
			c := &Client{BlockSize: 8, WindowSize: 16, Rollover: roll}
			got, _, err := memGet(c, n, m.addr(), "f")
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("%v: %v, %d bytes", roll, err, len(got))
			}
			if _, err := memPut(c, n, m.addr(), "up", data, -1); err != nil {
				t.Fatalf("%v put: %v", roll, err)
			}
			if up, _ := os.ReadFile(filepath.Join(dir, "up")); !bytes.Equal(up, data) {
				t.Fatalf("%v: upload differs", roll)
			}
			stop()
		}
		// Refused before the OACK when the size is known to be too large.
		n := newMemNet()
		m, stop := memSetup(t, n, ServerConfig{Root: dir, Rollover: RolloverRefuse})
		defer stop()
		_, _, err := memGet(&Client{BlockSize: 8, TSize: true}, n, m.addr(), "f")
		var te *Error
		if !errors.As(err, &te) || te.Code != ErrDiskFull {
			t.Fatalf("refuse: %v", err)
		}
	})
}

// scriptedServer answers a client's request with the given first reply
// from a fresh port, and returns what the client sends back.
func scriptedServer(t *testing.T, n *memNet, reply func(req Request) []byte) (netip.AddrPort, <-chan []byte) {
	t.Helper()
	l := n.listen(69)
	tid := n.listen(0)
	got := make(chan []byte, 10)
	go func() {
		defer l.close()
		defer tid.close()
		buf := make([]byte, 65536)
		k, from, err := l.readFrom(context.Background(), buf, time.Now().Add(time.Minute))
		if err != nil {
			return
		}
		req, err := ParseRequest(buf[:k])
		if err != nil {
			t.Errorf("request: %v", err)
			return
		}
		tid.writeTo(reply(req), from)
		k, _, err = tid.readFrom(context.Background(), buf, time.Now().Add(time.Minute))
		if err == nil {
			got <- bytes.Clone(buf[:k])
		}
		close(got)
	}()
	return l.addr, got
}

func TestFakeTimeClientRefusesBadOACK(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, oack := range [][]Option{
			{{Name: OptBlockSize, Value: "2000"}}, // more than asked
			{{Name: OptWindowSize, Value: "4"}},   // not asked
			{{Name: OptBlockSize, Value: "abc"}},  // bogus
			{{Name: OptBlockSize, Value: "4"}},    // too small
		} {
			n := newMemNet()
			addr, got := scriptedServer(t, n, func(Request) []byte { return AppendOACK(nil, oack) })
			_, _, err := memGet(&Client{BlockSize: 1024}, n, addr, "f")
			if !errors.Is(err, ErrBadOACK) {
				t.Fatalf("OACK %q: %v", oack, err)
			}
			code, _, perr := ParseError(<-got)
			if perr != nil || code != ErrOptionRefused {
				t.Fatalf("OACK %q: client answered code %v, %v", oack, code, perr)
			}
		}
	})
}

func TestFakeTimeClientForeignTID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		data := patternBytes(100_000)
		writeFile(t, dir, "f", data)
		n := newMemNet()
		n.latency = time.Millisecond
		m, stop := memSetup(t, n, ServerConfig{Root: dir})
		defer stop()
		client := n.listen(0)
		defer client.close()
		stranger := n.listen(0)
		defer stranger.close()
		// Once the transfer runs, a stranger sends the client a DATA for
		// the block it expects.
		go func() {
			time.Sleep(20 * time.Millisecond)
			stranger.writeTo(AppendData(nil, 12, []byte("evil")), client.addr)
		}()
		var buf bytes.Buffer
		_, err := (&Client{}).get(context.Background(), client, m.addr(), "f", &buf)
		if err != nil || !bytes.Equal(buf.Bytes(), data) {
			t.Fatalf("%v, %d bytes", err, buf.Len())
		}
		p := <-stranger.in
		if code, _, err := ParseError(p.data); err != nil || code != ErrUnknownTID || p.from != client.addr {
			t.Fatalf("stranger got %q from %v", p.data, p.from)
		}
	})
}

func TestFakeTimeServerForeignTID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		data := patternBytes(100_000)
		writeFile(t, dir, "f", data)
		n := newMemNet()
		n.latency = time.Millisecond
		var tid netip.AddrPort
		stranger := n.listen(0)
		defer stranger.close()
		n.dropFn = func(from, to netip.AddrPort, pkt []byte) bool {
			if op, _ := PacketOpcode(pkt); op == OpDATA && !tid.IsValid() {
				tid = from
				// The stranger sends the transfer an ACK for the block in
				// flight, and a garbage packet.
				go func() {
					stranger.writeTo(AppendAck(nil, 1), from)
					stranger.writeTo([]byte{0, 3}, from)
				}()
			}
			return false
		}
		m, stop := memSetup(t, n, ServerConfig{Root: dir})
		defer stop()
		got, st, err := memGet(&Client{}, n, m.addr(), "f")
		if err != nil || !bytes.Equal(got, data) || st.Retransmits != 0 {
			t.Fatalf("%v, %d bytes, %+v", err, len(got), st)
		}
		for range 2 {
			p := <-stranger.in
			if code, _, err := ParseError(p.data); err != nil || code != ErrUnknownTID || p.from != tid {
				t.Fatalf("stranger got %q from %v", p.data, p.from)
			}
		}
		x := <-m.done
		if x.snd.retransmits != 0 || x.shard.foreign.Load() != 2 {
			t.Fatalf("server: %d retransmissions, %d foreign", x.snd.retransmits, x.shard.foreign.Load())
		}
	})
}

// TestFakeTimeUEFIProbe: RRQ with tsize and blksize, OACK, the client's
// ERROR 8; the transfer ends at once and silently, and a new request
// works.
func TestFakeTimeUEFIProbe(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		data := patternBytes(10_000)
		writeFile(t, dir, "boot.efi", data)
		n := newMemNet()
		m, stop := memSetup(t, n, ServerConfig{Root: dir})
		defer stop()
		conn := n.listen(0)
		defer conn.close()
		conn.writeTo(AppendRequest(nil, Request{Op: OpRRQ, Filename: "boot.efi", Mode: ModeOctet,
			Options: []Option{{Name: "tsize", Value: "0"}, {Name: "blksize", Value: "1468"}}}), m.addr())
		p := <-conn.in
		opts, err := ParseOACK(p.data)
		if err != nil || len(opts) != 2 || opts[0] != (Option{Name: "tsize", Value: "10000"}) || opts[1] != (Option{Name: "blksize", Value: "1468"}) {
			t.Fatalf("OACK %q %v", opts, err)
		}
		start := time.Now()
		conn.writeTo(AppendError(nil, ErrOptionRefused, "User aborted the transfer"), p.from)
		x := <-m.done
		if time.Since(start) != 0 || x.snd.retransmits != 0 {
			t.Fatalf("ended after %v, %d retransmissions", time.Since(start), x.snd.retransmits)
		}
		time.Sleep(time.Minute)
		if len(conn.in) != 0 {
			t.Fatalf("the server sent %d more packets", len(conn.in))
		}
		got, _, err := memGet(&Client{BlockSize: 1468}, n, m.addr(), "boot.efi")
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("re-request: %v", err)
		}
	})
}

func TestFakeTimeCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		writeFile(t, dir, "f", patternBytes(1<<20))
		n := newMemNet()
		n.latency = 10 * time.Millisecond
		m, stop := memSetup(t, n, ServerConfig{Root: dir})
		defer stop()
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		conn := n.listen(0)
		defer conn.close()
		_, err := (&Client{}).get(ctx, conn, m.addr(), "f", &bytes.Buffer{})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err %v", err)
		}
		// The client told the server, which ends the transfer at once.
		x := <-m.done
		if x.result != resultPeerError {
			t.Fatal("the server did not get the client's ERROR")
		}
	})
}

func TestFakeTimeNetascii(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		text := []byte(strings.Repeat("line one\nline\rtwo\r\n\n", 300) + "end\r")
		writeFile(t, dir, "t.txt", text)
		n := newMemNet()
		m, stop := memSetup(t, n, ServerConfig{Root: dir, AllowWrite: true})
		defer stop()
		c := &Client{Netascii: true, BlockSize: 100, WindowSize: 3}
		got, st, err := memGet(c, n, m.addr(), "t.txt")
		if err != nil || !bytes.Equal(got, text) || st.Bytes != int64(len(text)) {
			t.Fatalf("get: %v %q", err, got[:min(len(got), 40)])
		}
		if _, err := memPut(c, n, m.addr(), "u.txt", text, -1); err != nil {
			t.Fatal(err)
		}
		if up, _ := os.ReadFile(filepath.Join(dir, "u.txt")); !bytes.Equal(up, text) {
			t.Fatalf("put: %q", up[:min(len(up), 40)])
		}
		// On the wire, octet: the netascii form.
		raw, _, err := memGet(&Client{}, n, m.addr(), "t.txt")
		if err != nil || !bytes.Equal(raw, text) {
			t.Fatal("octet changed the bytes")
		}
	})
}

// TestFakeTimeClientIgnoresStrayFirstAnswer: a single-port server answers
// every transfer from one port, so a block of an earlier transfer to the
// client's port (one a closed socket had) can arrive before the answer to
// the request. The client must not take it for the answer (it would go on
// at 512 bytes and fail on the first 1468-byte block).
func TestFakeTimeClientIgnoresStrayFirstAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := newMemNet()
		l := n.listen(69)
		defer l.close()
		data := patternBytes(1468 + 100)
		go func() {
			buf := make([]byte, 65536)
			_, from, err := l.readFrom(context.Background(), buf, time.Now().Add(time.Minute))
			if err != nil {
				return
			}
			l.writeTo(AppendData(nil, 9, patternBytes(1468)), from) // the earlier transfer's
			l.writeTo(AppendAck(nil, 3), from)                      // an upload's, too
			l.writeTo(AppendOACK(nil, []Option{{Name: OptBlockSize, Value: "1468"}}), from)
			for block, want := uint16(1), uint16(0); block <= 2; block++ {
				k, _, err := l.readFrom(context.Background(), buf, time.Now().Add(time.Minute))
				if err != nil {
					return
				}
				if got, err := ParseAck(buf[:k]); err != nil || got != want {
					t.Errorf("ACK %d, %v; want ACK %d", got, err, want)
					return
				}
				l.writeTo(AppendData(nil, block, data[int(block-1)*1468:min(len(data), int(block)*1468)]), from)
				want = block
			}
		}()
		got, st, err := memGet(&Client{BlockSize: 1468}, n, l.addr, "f")
		if err != nil || !bytes.Equal(got, data) || st.Negotiated.BlockSize != 1468 {
			t.Fatalf("%v, %d bytes, blksize %d", err, len(got), st.Negotiated.BlockSize)
		}
	})
}
