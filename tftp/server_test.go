package tftp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

var sizes = []int64{0, 511, 512, 513, 1 << 20}

// TestServerDownloads fetches every size with each option our client
// offers, in both port modes.
func TestServerDownloads(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	hashes := map[int64]string{}
	for _, size := range sizes {
		hashes[size] = writePattern(t, dir, fmt.Sprint(size), size)
	}
	clients := []*Client{
		{},
		{BlockSize: 8},
		{BlockSize: 1428, TSize: true},
		{BlockSize: 65464},
		{BlockSize: 1428, WindowSize: 16},
		{BlockSize: 512, WindowSize: 7, TSize: true, RequestTimeout: true, Timeout: 2 * time.Second},
		{BlockSize: 9000, WindowSize: 64},
	}
	for _, single := range []bool{false, true} {
		srv := startServer(t, ServerConfig{Root: dir, SinglePort: single, MaxWindowSize: 64})
		for _, c := range clients {
			for _, size := range sizes {
				if c.BlockSize == 8 && size > 1000 {
					continue
				}
				got, st := get(t, c, srv, fmt.Sprint(size))
				if sha(got) != hashes[size] {
					t.Fatalf("single %v, %+v, size %d: %d bytes differ", single, *c, size, len(got))
				}
				if single != (st.Server == srv.Addr()) {
					t.Fatalf("single %v: replies from %v, server port %v", single, st.Server, srv.Addr())
				}
				want := Negotiated{BlockSize: 512, WindowSize: 1, TSize: -1}
				if c.BlockSize != 0 {
					want.BlockSize = c.BlockSize
				}
				if c.WindowSize != 0 {
					want.WindowSize = c.WindowSize
				}
				if c.TSize {
					want.TSize = size
				}
				if c.RequestTimeout {
					want.Timeout = c.Timeout
				}
				if st.Negotiated != want {
					t.Fatalf("%+v: negotiated %+v, want %+v", *c, st.Negotiated, want)
				}
			}
		}
	}
}

func TestServerUploads(t *testing.T) {
	leakcheck.Check(t)
	src := t.TempDir()
	for _, single := range []bool{false, true} {
		dir := t.TempDir()
		srv := startServer(t, ServerConfig{Root: dir, AllowWrite: true, SinglePort: single, MaxUploadSize: 2 << 20})
		for i, c := range []*Client{{}, {BlockSize: 1428, TSize: true}, {BlockSize: 1000, WindowSize: 16, TSize: true}} {
			for _, size := range sizes {
				name := fmt.Sprintf("u%d-%d", i, size)
				h := writePattern(t, src, name, size)
				f, _ := os.Open(filepath.Join(src, name))
				st, err := c.Put(context.Background(), srv.Addr().String(), "sub/../"+name, f, size)
				f.Close()
				if err != nil {
					t.Fatalf("put %s with %+v: %v", name, *c, err)
				}
				if c.TSize && st.Negotiated.TSize != size {
					t.Fatalf("tsize on upload: %+v", st.Negotiated)
				}
				if got := fileSHA(t, filepath.Join(dir, name)); got != h {
					t.Fatalf("put %s: content differs", name)
				}
			}
		}
		// No overwrite without AllowOverwrite; an upload too big by its
		// tsize, or by its content.
		_, err := (&Client{}).Put(context.Background(), srv.Addr().String(), "u0-0", bytes.NewReader(nil), 0)
		if te := (*Error)(nil); !errors.As(err, &te) || te.Code != ErrFileExists {
			t.Fatalf("overwrite: %v", err)
		}
		big := patternBytes(3 << 20)
		_, err = (&Client{TSize: true}).Put(context.Background(), srv.Addr().String(), "big", bytes.NewReader(big), int64(len(big)))
		if te := (*Error)(nil); !errors.As(err, &te) || te.Code != ErrDiskFull {
			t.Fatalf("too big by tsize: %v", err)
		}
		_, err = (&Client{BlockSize: 65464}).Put(context.Background(), srv.Addr().String(), "big", bytes.NewReader(big), -1)
		if te := (*Error)(nil); !errors.As(err, &te) || te.Code != ErrDiskFull {
			t.Fatalf("too big by content: %v", err)
		}
		waitNoTemp(t, dir)
		if _, err := os.Stat(filepath.Join(dir, "big")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("refused upload left a file: %v", err)
		}
	}
	// Uploads off by default.
	dir := t.TempDir()
	srv := startServer(t, ServerConfig{Root: dir})
	_, err := (&Client{}).Put(context.Background(), srv.Addr().String(), "x", bytes.NewReader([]byte("x")), 1)
	if te := (*Error)(nil); !errors.As(err, &te) || te.Code != ErrAccessViolation {
		t.Fatalf("read-only server: %v", err)
	}
}

// waitNoTemp waits until dir holds no temporary upload file.
func waitNoTemp(t testing.TB, dir string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var temps []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && strings.Contains(d.Name(), uploadMarker) {
				temps = append(temps, p)
			}
			return nil
		})
		if len(temps) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("temporary files left: %v", temps)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServerOverwrite(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	writeFile(t, dir, "f", []byte("old"))
	srv := startServer(t, ServerConfig{Root: dir, AllowWrite: true, AllowOverwrite: true})
	if _, err := (&Client{}).Put(context.Background(), srv.Addr().String(), "/f", bytes.NewReader([]byte("new")), 3); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "f")); string(b) != "new" {
		t.Fatalf("content %q", b)
	}
}

func TestServerNetascii(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	text := []byte(strings.Repeat("a line\nbare\rcr\r\n", 500) + "\r")
	writeFile(t, dir, "t.txt", text)
	srv := startServer(t, ServerConfig{Root: dir, AllowWrite: true})
	for _, c := range []*Client{{Netascii: true}, {Netascii: true, BlockSize: 10, WindowSize: 4}} {
		got, _ := get(t, c, srv, "t.txt")
		if !bytes.Equal(got, text) {
			t.Fatalf("%+v: got %q", *c, got[:40])
		}
		name := fmt.Sprintf("up%d.txt", c.BlockSize)
		if _, err := c.Put(context.Background(), srv.Addr().String(), name, bytes.NewReader(text), -1); err != nil {
			t.Fatal(err)
		}
		if up, _ := os.ReadFile(filepath.Join(dir, name)); !bytes.Equal(up, text) {
			t.Fatalf("%+v: uploaded %q", *c, up[:40])
		}
	}
	// The wire form: LF as CR LF, CR as CR NUL.
	raw, _ := get(t, &Client{}, srv, "t.txt")
	if !bytes.Equal(raw, text) {
		t.Fatal("octet changed the file")
	}
	r := newRaw(t, "udp4")
	r.send(srv.Addr(), request(OpRRQ, "t.txt", "NetASCII"))
	pkt, _ := r.mustRecv("DATA 1")
	_, payload, err := ParseData(pkt)
	if err != nil || !bytes.HasPrefix(payload, []byte("a line\r\nbare\r\x00cr\r\x00\r\n")) {
		t.Fatalf("netascii DATA 1: %q, %v", payload, err)
	}
}

// TestServerRefusals: missing files, every traversal shape, odd names.
func TestServerRefusals(t *testing.T) {
	leakcheck.Check(t)
	root, _ := newTree(t)
	srv := startServer(t, ServerConfig{Root: root, AllowWrite: true})
	r := newRaw(t, "udp4")
	cases := []struct {
		name string
		code ErrorCode
	}{
		{"missing", ErrFileNotFound},
		{"/etc/shadow", ErrFileNotFound}, // absolute names resolve inside the root
		{"%2e%2e/secret", ErrFileNotFound},
		{"../outside/secret", ErrAccessViolation},
		{"..", ErrAccessViolation},
		{"/../outside/secret", ErrAccessViolation},
		{"//../../outside/secret", ErrAccessViolation},
		{"sub/../../outside/secret", ErrAccessViolation},
		{"./../outside/secret", ErrAccessViolation},
		{`..\outside\secret`, ErrAccessViolation},
		{"link-out", ErrAccessViolation},
		{"link-abs", ErrAccessViolation},
		{"link-dir-out/secret", ErrAccessViolation},
		{"dir", ErrAccessViolation},
		{"dir/", ErrAccessViolation},
		{".hello.txt.tftp-upload-X", ErrAccessViolation},
	}
	for _, c := range cases {
		for _, op := range []Opcode{OpRRQ, OpWRQ} {
			r.send(srv.Addr(), request(op, c.name, ModeOctet, "blksize", "1024", "tsize", "0"))
			pkt, _ := r.mustRecv("an answer to " + c.name)
			want := c.code
			if op == OpWRQ && want == ErrFileNotFound {
				continue // an upload creates it: a valid request
			}
			if op == OpWRQ && want == ErrAccessViolation {
				if code, _, _ := ParseError(pkt); code == ErrFileExists {
					want = ErrFileExists // the name exists in the root: no overwrite
				}
			}
			expectError(t, pkt, want, fmt.Sprintf("%v %q", op, c.name))
			if strings.Contains(string(pkt), root) {
				t.Fatalf("%q: the error reveals the root: %q", c.name, pkt)
			}
		}
	}
	// The WRQs that were accepted ("missing", "/etc/shadow",
	// "%2e%2e/secret"): their OACKs came, then nothing; the uploads time
	// out. Mail mode and unknown modes:
	for _, mode := range []string{"mail", "MAIL", "binary"} {
		r2 := newRaw(t, "udp4")
		r2.send(srv.Addr(), request(OpRRQ, "hello.txt", mode))
		pkt, _ := r2.mustRecv("an answer to mode " + mode)
		expectError(t, pkt, ErrIllegalOperation, "mode "+mode)
	}
}

// TestServerGarbage: datagrams that are no request get ERROR 4 (or 5, or
// nothing), and the server keeps serving.
func TestServerGarbage(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	h := writePattern(t, dir, "f", 5000)
	for _, single := range []bool{false, true} {
		srv := startServer(t, ServerConfig{Root: dir, SinglePort: single})
		r := newRaw(t, "udp4")
		cases := []struct {
			pkt  []byte
			code ErrorCode // 0xffff: no answer
		}{
			{[]byte{}, 0xffff},
			{[]byte{0}, 0xffff},
			{[]byte{0, 0}, ErrIllegalOperation},
			{[]byte{0, 9, 1, 2, 3}, ErrIllegalOperation},
			{[]byte{0xff, 0xff}, ErrIllegalOperation},
			{[]byte("\x00\x01f"), ErrIllegalOperation},             // no NUL after the name
			{[]byte("\x00\x01f\x00octet"), ErrIllegalOperation},    // no NUL after the mode
			{[]byte("\x00\x01\x00octet\x00"), ErrIllegalOperation}, // empty name
			{[]byte("\x00\x01f\x00octet\x00blksize"), ErrIllegalOperation},
			{[]byte("\x00\x02f\x00octet\x00\x00"), ErrIllegalOperation},
			{bytes.Repeat([]byte{0, 1, 'a'}, 20000), ErrIllegalOperation},
			{AppendData(nil, 1, []byte("x")), ErrUnknownTID},
			{AppendAck(nil, 1), ErrUnknownTID},
			{AppendOACK(nil, nil), ErrUnknownTID},
			{AppendError(nil, ErrUndefined, "x"), 0xffff},
		}
		for _, c := range cases {
			r.send(srv.Addr(), c.pkt)
			pkt, _, ok := r.recv(300 * time.Millisecond)
			if c.code == 0xffff {
				if ok {
					t.Fatalf("%q: answered %q", c.pkt[:min(len(c.pkt), 20)], pkt)
				}
				continue
			}
			if !ok {
				t.Fatalf("%q: no answer", c.pkt[:min(len(c.pkt), 20)])
			}
			expectError(t, pkt, c.code, fmt.Sprintf("%q", c.pkt[:min(len(c.pkt), 20)]))
		}
		got, _ := get(t, &Client{}, srv, "f")
		if sha(got) != h {
			t.Fatal("the server does not serve after garbage")
		}
	}
}

// TestServerBogusOptions: option names and modes are case-insensitive;
// unknown options and bogus values are ignored, never echoed.
func TestServerBogusOptions(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	writePattern(t, dir, "f", 3000)
	srv := startServer(t, ServerConfig{Root: dir, MaxBlockSize: 1468})
	r := newRaw(t, "udp4")
	r.send(srv.Addr(), request(OpRRQ, "f", "OcTeT", "TSIZE", "-1", "BlkSize", "65464", "windowsize", "0", "foo", "bar", "timeout", "0", "multicast", ""))
	pkt, _ := r.mustRecv("OACK")
	opts, err := ParseOACK(pkt)
	if err != nil || !slices.Equal(opts, []Option{{Name: "blksize", Value: "1468"}}) {
		t.Fatalf("OACK %q, %v", opts, err)
	}
	// Nothing acceptable: no OACK, DATA 1 at once.
	r2 := newRaw(t, "udp4")
	r2.send(srv.Addr(), request(OpRRQ, "f", "octet", "blksize", "abc", "tsize", "1e3", "windowsize", "-4", "timeout", "256"))
	pkt, _ = r2.mustRecv("DATA 1")
	if b, p, err := ParseData(pkt); err != nil || b != 1 || len(p) != 512 {
		t.Fatalf("got %q", pkt[:min(len(pkt), 20)])
	}
}

// TestServerForeignTID: a datagram from a stranger to a transfer's port
// gets ERROR 5 and does not disturb the transfer.
func TestServerForeignTID(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	h := writePattern(t, dir, "f", 2000)
	srv := startServer(t, ServerConfig{Root: dir, MinTimeout: -1})
	c := newRaw(t, "udp4")
	stranger := newRaw(t, "udp4")
	c.send(srv.Addr(), rrq("f"))
	var got []byte
	for block := uint16(1); ; block++ {
		pkt, tid := c.mustRecv(fmt.Sprint("DATA ", block))
		b, payload, err := ParseData(pkt)
		if err != nil || b != block {
			t.Fatalf("got %q, want DATA %d", pkt[:min(len(pkt), 8)], block)
		}
		got = append(got, payload...)
		if block == 2 {
			// The stranger acknowledges the block in flight, sends a DATA
			// and garbage; the client hears nothing more than usual.
			stranger.send(tid, AppendAck(nil, 2))
			stranger.send(tid, AppendData(nil, 2, []byte("x")))
			stranger.send(tid, []byte{0})
			for i := range 3 {
				p, from := stranger.mustRecv(fmt.Sprint("ERROR 5 #", i))
				expectError(t, p, ErrUnknownTID, "stranger")
				if from != tid {
					t.Fatalf("ERROR 5 from %v, want the TID %v", from, tid)
				}
			}
			if p, _, ok := c.recv(50 * time.Millisecond); ok {
				t.Fatalf("the client got %q", p[:min(len(p), 8)])
			}
		}
		c.send(tid, AppendAck(nil, block))
		if len(payload) < 512 {
			break
		}
	}
	if sha(got) != h {
		t.Fatal("content differs")
	}
}

// TestServerUEFIProbe: RRQ with tsize and blksize, OACK, the client's
// ERROR 8: the transfer ends at once and silently, and a new request
// works: identical (the held request starts), or without tsize.
func TestServerUEFIProbe(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	h := writePattern(t, dir, "boot.efi", 100_000)
	for _, single := range []bool{false, true} {
		for _, again := range [][]byte{rrq("boot.efi", "tsize", "0", "blksize", "1468"), rrq("boot.efi", "blksize", "1468")} {
			srv := startServer(t, ServerConfig{Root: dir, SinglePort: single, MaxBlockSize: 1468})
			c := newRaw(t, "udp4")
			c.send(srv.Addr(), rrq("boot.efi", "tsize", "0", "blksize", "1468"))
			pkt, tid := c.mustRecv("OACK")
			opts, err := ParseOACK(pkt)
			if err != nil || !slices.Equal(opts, []Option{{Name: "tsize", Value: "100000"}, {Name: "blksize", Value: "1468"}}) {
				t.Fatalf("OACK %q %v", opts, err)
			}
			c.send(tid, AppendError(nil, ErrOptionRefused, "User aborted the transfer"))
			c.send(srv.Addr(), again) // at once, as the firmware does
			pkt, tid2 := c.mustRecv("an answer to the second request")
			if op, _ := PacketOpcode(pkt); op != OpOACK {
				t.Fatalf("second request: got %q", pkt)
			}
			if single != (tid2 == tid) {
				t.Fatalf("single %v: TIDs %v and %v", single, tid, tid2)
			}
			c.send(tid2, AppendAck(nil, 0))
			pkt, from := c.mustRecv("DATA 1")
			if from != tid2 {
				t.Fatalf("DATA 1 from %v, want %v", from, tid2)
			}
			got := c.download(tid2, pkt, 1468)
			if sha(got) != h {
				t.Fatal("content differs")
			}
			if p, from, ok := c.recv(300 * time.Millisecond); ok {
				t.Fatalf("after the transfer: %q from %v", p, from)
			}
		}
	}
}

// TestServerRetransmittedRequest: a request sent twice starts one
// transfer.
func TestServerRetransmittedRequest(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	h := writePattern(t, dir, "f", 1500)
	srv := startServer(t, ServerConfig{Root: dir})
	c := newRaw(t, "udp4")
	c.send(srv.Addr(), rrq("f"))
	c.send(srv.Addr(), rrq("f"))
	pkt, tid := c.mustRecv("DATA 1")
	if got := c.download(tid, pkt, 512); sha(got) != h {
		t.Fatal("content differs")
	}
	if p, from, ok := c.recv(300 * time.Millisecond); ok {
		t.Fatalf("extra %q from %v", p, from)
	}
}

// TestServerUploadClientDies: an upload whose client stops halfway leaves
// no file under the target name, and no temporary file.
func TestServerUploadClientDies(t *testing.T) {
	leakcheck.Check(t)
	for _, single := range []bool{false, true} {
		dir := t.TempDir()
		srv := startServer(t, ServerConfig{Root: dir, AllowWrite: true, SinglePort: single, Timeout: 100 * time.Millisecond, Retries: 2})
		c := newRaw(t, "udp4")
		c.send(srv.Addr(), request(OpWRQ, "up.bin", ModeOctet, "blksize", "1024"))
		pkt, tid := c.mustRecv("OACK")
		if op, _ := PacketOpcode(pkt); op != OpOACK {
			t.Fatalf("got %q", pkt)
		}
		data := patternBytes(1024)
		for block := uint16(1); block <= 50; block++ {
			c.send(tid, AppendData(nil, block, data))
			if pkt, _ := c.mustRecv("ACK"); !bytes.Equal(pkt, AppendAck(nil, block)) {
				t.Fatalf("got %q, want ACK %d", pkt, block)
			}
		}
		// The client dies. The server gives up after 100+200+400 ms.
		time.Sleep(200 * time.Millisecond)
		if _, err := os.Stat(filepath.Join(dir, "up.bin")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the partial upload is visible: %v", err)
		}
		waitNoTemp(t, dir)
		if _, err := os.Stat(filepath.Join(dir, "up.bin")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the partial upload is visible: %v", err)
		}
		// The server answered with re-ACKs, then an ERROR.
		var acks int
		for {
			pkt, _, ok := c.recv(100 * time.Millisecond)
			if !ok {
				t.Fatal("no ERROR after the retries")
			}
			if op, _ := PacketOpcode(pkt); op == OpERROR {
				break
			}
			acks++
		}
		if acks != 2 {
			t.Fatalf("%d re-ACKs, want 2", acks)
		}
	}
}

// TestServerSinglePort: every reply comes from the server port; clients are
// told apart by address; strays get ERROR 5 and wedge nothing.
func TestServerSinglePort(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	h := writePattern(t, dir, "f", 300_000)
	srv := startServer(t, ServerConfig{Root: dir, SinglePort: true, AllowWrite: true})
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &Client{BlockSize: 512 * (i + 1), WindowSize: i%3 + 1, Timeout: 200 * time.Millisecond}
			var buf bytes.Buffer
			st, err := c.Get(context.Background(), srv.Addr().String(), "f", &buf)
			switch {
			case err != nil:
				errs <- err
			case sha(buf.Bytes()) != h:
				errs <- fmt.Errorf("client %d: content differs", i)
			case st.Server != srv.Addr():
				errs <- fmt.Errorf("client %d: replies from %v", i, st.Server)
			}
		}()
	}
	// Meanwhile, strays: a stranger's ACK gets ERROR 5.
	s := newRaw(t, "udp4")
	for range 20 {
		s.send(srv.Addr(), AppendAck(nil, 1))
		pkt, _ := s.mustRecv("ERROR 5")
		expectError(t, pkt, ErrUnknownTID, "stray ACK")
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// A client's own garbage and stray ACKs do not wedge its transfer.
	c := newRaw(t, "udp4")
	c.send(srv.Addr(), rrq("f"))
	var got []byte
	for block := uint16(1); ; {
		pkt, from := c.mustRecv("DATA")
		if from != srv.Addr() {
			t.Fatalf("DATA from %v", from)
		}
		b, payload, _ := ParseData(pkt)
		if b != block {
			continue // a retransmission
		}
		got = append(got, payload...)
		c.send(srv.Addr(), []byte{0, 4, 1})                   // truncated ACK
		c.send(srv.Addr(), AppendAck(nil, block+100))         // an ACK from the future
		c.send(srv.Addr(), AppendData(nil, 1, []byte("xyz"))) // a DATA in a download
		c.send(srv.Addr(), AppendAck(nil, block))
		if len(payload) < 512 {
			break
		}
		block++
	}
	if sha(got) != h {
		t.Fatal("content differs")
	}
}

func TestServerIPv6(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	h := writePattern(t, dir, "f", 100_000)
	for _, single := range []bool{false, true} {
		for _, listen := range []string{"[::1]:0", "[::]:0"} {
			srv := startServer(t, ServerConfig{Root: dir, SinglePort: single, Listen: netip.MustParseAddrPort(listen), AllowWrite: true, AllowOverwrite: true})
			port := srv.Addr().Port()
			for _, host := range []string{"[::1]", "127.0.0.1"} {
				if listen == "[::1]:0" && host == "127.0.0.1" {
					continue
				}
				addr := fmt.Sprintf("%s:%d", host, port)
				var buf bytes.Buffer
				if _, err := (&Client{BlockSize: 1428, WindowSize: 4}).Get(context.Background(), addr, "f", &buf); err != nil || sha(buf.Bytes()) != h {
					t.Fatalf("%s via %s: %v", listen, addr, err)
				}
				if _, err := (&Client{}).Put(context.Background(), addr, "up", bytes.NewReader(buf.Bytes()), -1); err != nil {
					t.Fatalf("put %s via %s: %v", listen, addr, err)
				}
			}
		}
	}
}

func TestServerMaxTransfers(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	writePattern(t, dir, "f", 5000)
	srv := startServer(t, ServerConfig{Root: dir, MaxTransfers: 1})
	a := newRaw(t, "udp4")
	a.send(srv.Addr(), rrq("f"))
	a.mustRecv("DATA 1")
	b := newRaw(t, "udp4")
	b.send(srv.Addr(), rrq("f"))
	pkt, _ := b.mustRecv("ERROR")
	expectError(t, pkt, ErrUndefined, "second transfer")
}

// TestServerShutdown: Shutdown waits for transfers in progress and refuses
// new ones; past its context it cancels them.
func TestServerShutdown(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	h := writePattern(t, dir, "f", 1<<20)
	for _, single := range []bool{false, true} {
		srv := startServer(t, ServerConfig{Root: dir, SinglePort: single})
		// A slow download: the client waits 1 ms per block.
		res := make(chan error, 1)
		go func() {
			c := newRaw(t, "udp4")
			c.send(srv.Addr(), rrq("f", "blksize", "8192"))
			var got []byte
			for {
				pkt, from, ok := c.recv(5 * time.Second)
				if !ok {
					res <- errors.New("no DATA")
					return
				}
				if op, _ := PacketOpcode(pkt); op == OpOACK {
					c.c.WriteToUDPAddrPort(AppendAck(nil, 0), from)
					continue
				}
				b, payload, err := ParseData(pkt)
				if err != nil {
					res <- fmt.Errorf("got %q", pkt)
					return
				}
				if int(b) != len(got)/8192+1 {
					continue // a retransmission
				}
				got = append(got, payload...)
				time.Sleep(time.Millisecond)
				c.c.WriteToUDPAddrPort(AppendAck(nil, b), from)
				if len(payload) < 8192 {
					break
				}
			}
			if sha(got) != h {
				res <- errors.New("content differs")
			}
			res <- nil
		}()
		time.Sleep(20 * time.Millisecond)
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		done := make(chan error, 1)
		go func() { done <- srv.Shutdown(ctx) }()
		time.Sleep(10 * time.Millisecond)
		// New requests are refused while draining.
		r := newRaw(t, "udp4")
		r.send(srv.Addr(), rrq("f"))
		if pkt, _, ok := r.recv(300 * time.Millisecond); ok {
			if single {
				expectError(t, pkt, ErrUndefined, "request while draining")
			} else {
				t.Fatalf("answered %q while draining", pkt)
			}
		}
		if err := <-res; err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("shutdown: %v", err)
		}
		cancel()
		t.Logf("drained after %v", time.Since(start))
	}
	// A client that stops answering: Shutdown gives up at its deadline.
	srv := startServer(t, ServerConfig{Root: dir})
	c := newRaw(t, "udp4")
	c.send(srv.Addr(), rrq("f"))
	c.mustRecv("DATA 1")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("shutdown: %v", err)
	}
}

func TestServerMetrics(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	writePattern(t, dir, "f", 10_000)
	reg := prometheus.NewRegistry()
	srv := startServer(t, ServerConfig{Root: dir, AllowWrite: true, Registerer: reg})
	for range 3 {
		get(t, &Client{BlockSize: 1000}, srv, "f")
	}
	(&Client{}).Get(context.Background(), srv.Addr().String(), "missing", &bytes.Buffer{})
	(&Client{}).Put(context.Background(), srv.Addr().String(), "up", bytes.NewReader(make([]byte, 700)), 700)
	s := newRaw(t, "udp4")
	s.send(srv.Addr(), AppendAck(nil, 3))
	s.mustRecv("ERROR 5")
	want := map[string]float64{
		`ioactor_tftp_transfers_total{op="read",result="ok"}`:      3,
		`ioactor_tftp_transfers_total{op="read",result="refused"}`: 1,
		`ioactor_tftp_transfers_total{op="write",result="ok"}`:     1,
		`ioactor_tftp_bytes_total{op="read"}`:                      30_000,
		`ioactor_tftp_bytes_total{op="write"}`:                     700,
		`ioactor_tftp_active_transfers`:                            1, // the upload dallies
		`ioactor_tftp_retransmits_total`:                           0,
		`ioactor_tftp_stray_packets_total{kind="foreign_tid"}`:     1,
		`ioactor_tftp_transfer_duration_seconds_count{op="read"}`:  3,
		`ioactor_tftp_transfer_duration_seconds_count{op="write"}`: 1,
	}
	got := gather(t, reg)
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	srv.Close()
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("metrics still registered after Close: %d families", len(mfs))
	}
}

// gather flattens a registry's metrics to "name{labels}" → value.
func gather(t testing.TB, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			name := mf.GetName()
			lab := ""
			if len(labels) > 0 {
				lab = "{" + strings.Join(labels, ",") + "}"
			}
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				out[name+lab] = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				out[name+lab] = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				out[name+"_count"+lab] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

func TestPathBlockSize(t *testing.T) {
	if got := pathBlockSize(netip.AddrPort{}, netip.MustParseAddrPort("127.0.0.1:69")); got != MaxBlockSize {
		t.Fatalf("loopback: %d", got)
	}
}

// TestServerNoAllocations: steady-state DATA/ACK exchanges allocate
// nothing, in the server or in our client: a transfer of a large file
// allocates no more than one of a small file.
func TestServerNoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	leakcheck.Check(t)
	dir := t.TempDir()
	const small, large = 1 << 20, 5 << 20
	writePattern(t, dir, "small", small)
	writePattern(t, dir, "large", large)
	allocs := func(f func()) uint64 {
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		f()
		runtime.ReadMemStats(&m1)
		return m1.Mallocs - m0.Mallocs
	}
	for _, single := range []bool{false, true} {
		srv := startServer(t, ServerConfig{Root: dir, SinglePort: single, AllowWrite: true, AllowOverwrite: true})
		for _, c := range []*Client{{BlockSize: 1024}, {BlockSize: 1428, WindowSize: 16}} {
			get(t, c, srv, "small") // warm up
			a1 := allocs(func() { get(t, c, srv, "small") })
			a2 := allocs(func() { get(t, c, srv, "large") })
			blocks := (large - small) / c.BlockSize
			if extra := int64(a2) - int64(a1); float64(extra)/float64(blocks) > 0.01 {
				t.Errorf("download, single %v, %+v: %d more allocations for %d more blocks", single, *c, extra, blocks)
			}
			put := func(size int) func() {
				return func() {
					if _, err := c.Put(context.Background(), srv.Addr().String(), "up", bytes.NewReader(make([]byte, size)), int64(size)); err != nil {
						t.Fatal(err)
					}
				}
			}
			put(small)()
			p1 := allocs(put(small))
			p2 := allocs(put(large))
			if extra := int64(p2) - int64(p1); float64(extra)/float64(blocks) > 0.01 {
				t.Errorf("upload, single %v, %+v: %d more allocations for %d more blocks", single, *c, extra, blocks)
			}
		}
	}
}

// TestServerTransfers: the live transfers' states, from their loops.
func TestServerTransfers(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	writePattern(t, dir, "f", 100_000)
	for _, single := range []bool{false, true} {
		srv := startServer(t, ServerConfig{Root: dir, SinglePort: single, MinTimeout: -1})
		c := newRaw(t, "udp4")
		c.send(srv.Addr(), rrq("f", "blksize", "1000"))
		_, tid := c.mustRecv("OACK")
		c.send(tid, AppendAck(nil, 0))
		c.mustRecv("DATA 1")
		c.send(tid, AppendAck(nil, 1))
		c.mustRecv("DATA 2")
		sts, err := srv.Transfers(context.Background())
		if err != nil || len(sts) != 1 {
			t.Fatalf("single %v: %d states, %v", single, len(sts), err)
		}
		st := sts[0]
		if st.Op != OpRRQ || st.Client != c.addr() || st.Server != tid || st.Filename != "f" || st.Mode != ModeOctet ||
			st.Negotiated.BlockSize != 1000 || st.Block != 1 || st.Offset != 1000 || st.Size != 100_000 || len(st.Options) == 0 {
			t.Fatalf("single %v: state %+v", single, st)
		}
		b, _ := st.MarshalBinary()
		var back TransferState
		if err := back.UnmarshalBinary(b); err != nil || back.Block != 1 || back.Client != st.Client {
			t.Fatalf("round trip: %+v %v", back, err)
		}
	}
}

// TestServerRollover crosses block 65535 on real sockets with our client,
// both ways, with both rollover policies: at the smallest block size, and
// at 512 bytes with a window (32 MiB).
func TestServerRollover(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	cases := []struct {
		c    Client
		size int64
	}{
		{Client{BlockSize: 8, WindowSize: 8}, 65536*8 + 5},
		{Client{BlockSize: 512, WindowSize: 16}, 65536*512 + 100},
	}
	for i, tc := range cases {
		h := writePattern(t, dir, fmt.Sprint("f", i), tc.size)
		for _, roll := range []Rollover{RolloverZero, RolloverOne} {
			srv := startServer(t, ServerConfig{Root: dir, Rollover: roll, AllowWrite: true, AllowOverwrite: true})
			c := tc.c
			c.Rollover, c.TSize = roll, true
			got, st := get(t, &c, srv, fmt.Sprint("f", i))
			if sha(got) != h || st.Negotiated.TSize != tc.size {
				t.Fatalf("%v %+v: download differs", roll, tc.c)
			}
			if _, err := c.Put(context.Background(), srv.Addr().String(), "up", bytes.NewReader(got), int64(len(got))); err != nil {
				t.Fatalf("%v %+v: upload: %v", roll, tc.c, err)
			}
			if fileSHA(t, filepath.Join(dir, "up")) != h {
				t.Fatalf("%v %+v: upload differs", roll, tc.c)
			}
			srv.Close()
		}
	}
	// RolloverRefuse: a file known to be too large is refused before it
	// starts; one that fits is served.
	srv := startServer(t, ServerConfig{Root: dir, Rollover: RolloverRefuse})
	_, err := (&Client{BlockSize: 8}).Get(context.Background(), srv.Addr().String(), "f0", &bytes.Buffer{})
	if te := (*Error)(nil); !errors.As(err, &te) || te.Code != ErrDiskFull {
		t.Fatalf("refuse: %v", err)
	}
	if _, err := (&Client{BlockSize: 16}).Get(context.Background(), srv.Addr().String(), "f0", &bytes.Buffer{}); err != nil {
		t.Fatalf("refuse, fits: %v", err)
	}
}
