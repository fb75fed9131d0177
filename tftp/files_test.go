package tftp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
	"github.com/ioactor/ioactor/netio"
)

// pattern returns n bytes that differ block to block.
func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/512)
	}
	return b
}

// clients are the ways the tests fetch a file: lock-step, windowed with
// large blocks, and netascii.
var fileClients = map[string]*Client{
	"lockstep": {},
	"window":   {BlockSize: 1428, WindowSize: 8, TSize: true},
}

func errCode(t *testing.T, err error) ErrorCode {
	t.Helper()
	var te *Error
	if !errors.As(err, &te) {
		t.Fatalf("got %v, want an ERROR from the server", err)
	}
	return te.Code
}

func TestFilesFromFS(t *testing.T) {
	leakcheck.Check(t)
	big := pattern(300_000)
	text := "one\ntwo\r\nthree\r"
	mfs := fstest.MapFS{
		"boot/pxelinux.0": {Data: big},
		"empty":           {Data: nil},
		"text.txt":        {Data: []byte(text)},
		"dir/x":           {Data: []byte("x")},
	}
	srv := startServer(t, ServerConfig{FS: FromFS(mfs)})
	for name, c := range fileClients {
		t.Run(name, func(t *testing.T) {
			got, st := get(t, c, srv, "/boot/pxelinux.0")
			if !bytes.Equal(got, big) {
				t.Fatalf("got %d bytes, want %d", len(got), len(big))
			}
			if c.TSize && st.Negotiated.TSize != int64(len(big)) {
				t.Fatalf("tsize %d, want %d", st.Negotiated.TSize, len(big))
			}
			if got, _ := get(t, c, srv, "empty"); len(got) != 0 {
				t.Fatalf("empty: %q", got)
			}
		})
	}
	nc := &Client{Netascii: true}
	if got, _ := get(t, nc, srv, "text.txt"); string(got) != text {
		t.Fatalf("netascii: %q, want %q", got, text)
	}
	for name, want := range map[string]ErrorCode{
		"missing":          ErrFileNotFound,
		"dir":              ErrAccessViolation,
		"../boot/x":        ErrAccessViolation,
		"boot\\pxelinux.0": ErrAccessViolation,
	} {
		_, err := (&Client{}).Get(context.Background(), srv.Addr().String(), name, io.Discard)
		if got := errCode(t, err); got != want {
			t.Errorf("%q: ERROR %d, want %d (%v)", name, got, want, err)
		}
	}
	_, err := (&Client{}).Put(context.Background(), srv.Addr().String(), "up", strings.NewReader("x"), 1)
	if got := errCode(t, err); got != ErrAccessViolation {
		t.Fatalf("upload: ERROR %d, want 2 (%v)", got, err)
	}
}

// streamReader has Read and Close only: no ReadAt.
type streamReader struct {
	r      io.Reader
	closed *atomic.Int32
}

func (s *streamReader) Read(p []byte) (int, error) { return s.r.Read(p) }
func (s *streamReader) Close() error               { s.closed.Add(1); return nil }

// Content without ReadAt is read once, in order; with the size unknown, no
// tsize is answered; it is closed when the transfer ends, netascii too.
func TestFilesStream(t *testing.T) {
	leakcheck.Check(t)
	body := pattern(200_000)
	text := strings.Repeat("line\n", 3000) + "end\r"
	var closed, opened atomic.Int32
	files := ReadFunc(func(req FileRequest) (io.Reader, int64, error) {
		opened.Add(1)
		switch req.Name {
		case "known":
			return &streamReader{bytes.NewReader(body), &closed}, int64(len(body)), nil
		case "unknown":
			return &streamReader{bytes.NewReader(body), &closed}, -1, nil
		case "text":
			return &streamReader{strings.NewReader(text), &closed}, int64(len(text)), nil
		}
		return nil, 0, fs.ErrNotExist
	})
	srv := startServer(t, ServerConfig{FS: files})
	for name, c := range fileClients {
		t.Run(name, func(t *testing.T) {
			for _, f := range []string{"known", "unknown"} {
				got, st := get(t, c, srv, f)
				if !bytes.Equal(got, body) {
					t.Fatalf("%s: got %d bytes, want %d", f, len(got), len(body))
				}
				if c.TSize {
					want := int64(len(body))
					if f == "unknown" {
						want = -1 // not answered
					}
					if st.Negotiated.TSize != want {
						t.Fatalf("%s: tsize %d, want %d", f, st.Negotiated.TSize, want)
					}
				}
			}
		})
	}
	if got, _ := get(t, &Client{Netascii: true, BlockSize: 1000}, srv, "text"); string(got) != text {
		t.Fatalf("netascii: got %d bytes %q..., want %d", len(got), got[:min(20, len(got))], len(text))
	}
	testutil.WaitFor(t, "every content closed", func() bool { return closed.Load() == opened.Load() })
}

// The errors of Files reach the client as their codes, and only the
// messages meant for it.
func TestFilesErrors(t *testing.T) {
	leakcheck.Check(t)
	files := ReadFunc(func(req FileRequest) (io.Reader, int64, error) {
		switch req.Name {
		case "coded":
			return nil, 0, &Error{Code: ErrFileNotFound, Message: "no boot file for you"}
		case "perm":
			return nil, 0, fmt.Errorf("wrapped: %w", fs.ErrPermission)
		case "nil":
			return nil, 0, nil
		}
		return nil, 0, errors.New("open /secret/host/path: disk on fire")
	})
	srv := startServer(t, ServerConfig{FS: files})
	for name, want := range map[string]struct {
		code ErrorCode
		msg  string
	}{
		"coded": {ErrFileNotFound, "no boot file for you"},
		"perm":  {ErrAccessViolation, ""},
		"nil":   {ErrUndefined, "server error"},
		"other": {ErrUndefined, "server error"},
	} {
		_, err := (&Client{}).Get(context.Background(), srv.Addr().String(), name, io.Discard)
		var te *Error
		if !errors.As(err, &te) || te.Code != want.code || want.msg != "" && te.Message != want.msg {
			t.Errorf("%s: %v, want ERROR %d %q", name, err, want.code, want.msg)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the host path reached the client: %v", name, err)
		}
	}
}

// rawOSFile wraps an *os.File: ReadAt and SyscallConn, but not an
// *os.File.
type rawOSFile struct{ f *os.File }

func (r rawOSFile) Read(p []byte) (int, error)              { return r.f.Read(p) }
func (r rawOSFile) ReadAt(p []byte, off int64) (int, error) { return r.f.ReadAt(p, off) }
func (r rawOSFile) SyscallConn() (syscall.RawConn, error)   { return r.f.SyscallConn() }
func (r rawOSFile) Close() error                            { return r.f.Close() }

// The source follows the content: preadv for a file or a type with ReadAt
// and a descriptor, ReadAt for other ReaderAts, Read for the rest.
func TestContentSource(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	os.WriteFile(path, pattern(5000), 0o644)
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range []struct {
		content io.Reader
		want    string
	}{
		{f, "*tftp.fileSource"},
		{rawOSFile{f}, "*tftp.fileSource"},
		{bytes.NewReader(nil), "*tftp.octetSource"},
		{strings.NewReader(""), "*tftp.octetSource"},
		{io.MultiReader(), "*tftp.readerSource"},
	} {
		src, err := contentSource(c.content, false, sourcePos{})
		if err != nil || fmt.Sprintf("%T", src) != c.want {
			t.Errorf("%T: %T %v, want %s", c.content, src, err, c.want)
		}
	}
	if src, err := contentSource(f, true, sourcePos{}); err != nil || fmt.Sprintf("%T", src) != "*tftp.netasciiSource" {
		t.Errorf("netascii file: %T %v", src, err)
	}
	if _, err := contentSource(io.MultiReader(), false, sourcePos{Offset: 512}); err == nil {
		t.Error("a stream resumed past its start")
	}
}

// memUpload is an upload into memory.
type memUpload struct {
	files *memFiles
	name  string
	buf   bytes.Buffer
}

func (u *memUpload) Write(p []byte) (int, error) { return u.buf.Write(p) }
func (u *memUpload) Commit() error {
	u.files.mu.Lock()
	defer u.files.mu.Unlock()
	u.files.m[u.name] = bytes.Clone(u.buf.Bytes())
	return nil
}
func (u *memUpload) Abort() error { u.files.aborts.Add(1); return nil }

// memFiles is Files in memory, uploads included.
type memFiles struct {
	mu     sync.Mutex
	m      map[string][]byte
	aborts atomic.Int32
}

func (f *memFiles) OpenRead(req FileRequest) (io.Reader, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.m[req.Name]
	if !ok {
		return nil, 0, fs.ErrNotExist
	}
	return bytes.NewReader(b), int64(len(b)), nil
}

func (f *memFiles) OpenWrite(req FileRequest) (WriteFile, error) {
	return &memUpload{files: f, name: req.Name}, nil
}

// A custom upload is committed once complete, aborted otherwise.
func TestFilesUpload(t *testing.T) {
	leakcheck.Check(t)
	files := &memFiles{m: map[string][]byte{}}
	srv := startServer(t, ServerConfig{FS: files, Timeout: 200 * time.Millisecond, MinTimeout: -1, Retries: 2})
	body := pattern(100_000)
	text := "a\nb\r\n"
	if _, err := (&Client{BlockSize: 1400, WindowSize: 4}).Put(context.Background(), srv.Addr().String(), "up", bytes.NewReader(body), int64(len(body))); err != nil {
		t.Fatal(err)
	}
	if _, err := (&Client{Netascii: true}).Put(context.Background(), srv.Addr().String(), "text", strings.NewReader(text), -1); err != nil {
		t.Fatal(err)
	}
	got, _ := get(t, &Client{}, srv, "up")
	if !bytes.Equal(got, body) {
		t.Fatalf("read back %d bytes, want %d", len(got), len(body))
	}
	if got, _ := get(t, &Client{Netascii: true}, srv, "text"); string(got) != text {
		t.Fatalf("netascii read back %q, want %q", got, text)
	}
	// A client that gives up mid-way: the upload is aborted.
	raw := newRaw(t, "udp4")
	raw.send(srv.Addr(), request(OpWRQ, "half", ModeOctet))
	pkt, tid := raw.mustRecv("ACK 0")
	if b, err := ParseAck(pkt); err != nil || b != 0 {
		t.Fatalf("got %q, want ACK 0", pkt)
	}
	raw.send(tid, AppendData(nil, 1, make([]byte, 512)))
	raw.mustRecv("ACK 1")
	raw.send(tid, AppendError(nil, ErrUndefined, "bye"))
	testutil.WaitFor(t, "the abort", func() bool { return files.aborts.Load() == 1 })
	if _, _, err := files.OpenRead(FileRequest{Name: "half"}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("an aborted upload was published: %v", err)
	}
}

// nopReplicator accepts everything.
type nopReplicator struct{ begun chan TransferState }

func (r *nopReplicator) Begin(st TransferState) error {
	if r.begun != nil {
		r.begun <- st
	}
	return nil
}
func (r *nopReplicator) Progress(TransferState)                      {}
func (r *nopReplicator) End(TransferState)                           {}
func (r *nopReplicator) Stalled(time.Time) bool                      { return false }
func (r *nopReplicator) CommitUpload(TransferState, io.Reader) error { return nil }

// A replicated server takes an *FS only, and says so when it starts.
func TestFilesReplicatedNeedsFS(t *testing.T) {
	sys, err := netio.NewSystem(netio.Config{Loops: 1, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Shutdown(context.Background())
	listen := netip.MustParseAddrPort("127.0.0.1:0")
	for name, cfg := range map[string]ServerConfig{
		"fromfs":   {FS: FromFS(fstest.MapFS{}), SinglePort: true, Replicator: &nopReplicator{}},
		"readfunc": {FS: ReadFunc(nil), SinglePort: true, Resume: []TransferState{}},
		"mem":      {FS: &memFiles{}, SinglePort: true, Replicator: &nopReplicator{}},
	} {
		cfg.Listen = listen
		srv, err := NewServer(sys, cfg)
		if !errors.Is(err, ErrNotReplicable) {
			if srv != nil {
				srv.Close()
			}
			t.Errorf("%s: %v, want ErrNotReplicable", name, err)
		}
	}
	// A nil *FS is no FS: Root is opened.
	var nilFS *FS
	srv, err := NewServer(sys, ServerConfig{FS: nilFS, Root: t.TempDir(), Listen: listen, SinglePort: true, Replicator: &nopReplicator{}})
	if err != nil {
		t.Fatal(err)
	}
	srv.Close()
}

// A replicated transfer records the rewritten name: every node opens and
// digests the file the client is served.
func TestRewriteRecorded(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "boot"), 0o755)
	os.WriteFile(filepath.Join(dir, "boot", "pxelinux.0"), []byte("pxe"), 0o644)
	m, err := ParseRemap(strings.NewReader(`rg \\ /`))
	if err != nil {
		t.Fatal(err)
	}
	rep := &nopReplicator{begun: make(chan TransferState, 1)}
	srv := startServer(t, ServerConfig{Root: dir, SinglePort: true, Replicator: rep, Rewrite: m.Rewrite})
	if got, _ := get(t, &Client{}, srv, `boot\pxelinux.0`); string(got) != "pxe" {
		t.Fatalf("got %q", got)
	}
	if st := <-rep.begun; st.Filename != "boot/pxelinux.0" {
		t.Fatalf("recorded %q, want the rewritten name", st.Filename)
	}
}

// Remap rules on a server: a Windows name is served, a rule that maps out
// of the root is refused, an a rule refuses with its message, rules that
// do not end refuse with ERROR 0.
func TestRewriteServer(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "boot"), 0o755)
	os.WriteFile(filepath.Join(dir, "boot", "pxelinux.0"), []byte("pxe"), 0o644)
	m, err := ParseRemap(strings.NewReader(`
rg \\ /                    # Windows names
r ^escape$ ../../etc/passwd
a ^secret no\ secrets\ here
rs ^spin$ spin             # restarts for ever: bounded
`))
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, ServerConfig{Root: dir, Rewrite: m.Rewrite, AllowWrite: true})
	for _, c := range []*Client{{}, {BlockSize: 1400, WindowSize: 4}} {
		if got, _ := get(t, c, srv, `boot\pxelinux.0`); string(got) != "pxe" {
			t.Fatalf("got %q", got)
		}
	}
	for name, want := range map[string]struct {
		code ErrorCode
		msg  string
	}{
		"escape":  {ErrAccessViolation, "access violation: outside the root"},
		"secret1": {ErrAccessViolation, "no secrets here"},
		"spin":    {ErrUndefined, "server error"},
	} {
		_, err := (&Client{}).Get(context.Background(), srv.Addr().String(), name, io.Discard)
		var te *Error
		if !errors.As(err, &te) || te.Code != want.code || te.Message != want.msg {
			t.Errorf("%s: %v, want ERROR %d %q", name, err, want.code, want.msg)
		}
	}
	// Uploads are rewritten too.
	if _, err := (&Client{}).Put(context.Background(), srv.Addr().String(), `boot\new`, strings.NewReader("new"), 3); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "boot", "new")); err != nil || string(b) != "new" {
		t.Fatalf("upload: %q %v", b, err)
	}
}

// Each client gets its own directory when there is one.
func TestClientDir(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "127.0.0.1"), 0o755)
	os.WriteFile(filepath.Join(dir, "127.0.0.1", "cfg"), []byte("mine"), 0o644)
	os.WriteFile(filepath.Join(dir, "cfg"), []byte("shared"), 0o644)
	os.WriteFile(filepath.Join(dir, "other"), []byte("other"), 0o644)
	fsys, err := NewFS(FSConfig{Root: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	srv := startServer(t, ServerConfig{FS: fsys, Rewrite: fsys.ClientDir})
	if got, _ := get(t, &Client{}, srv, "/cfg"); string(got) != "mine" {
		t.Fatalf("got %q, want the client's own", got)
	}
	// Only the client's directory: no fallback per file, no way out.
	for _, name := range []string{"other", "../cfg", "a/../../cfg"} {
		_, err := (&Client{}).Get(context.Background(), srv.Addr().String(), name, io.Discard)
		if code := errCode(t, err); code != ErrFileNotFound && code != ErrAccessViolation {
			t.Errorf("%s: %v", name, err)
		}
	}
	for client, want := range map[string]string{
		"127.0.0.1:9":          "127.0.0.1/cfg",
		"[::ffff:127.0.0.1]:9": "127.0.0.1/cfg",
		"10.0.0.1:9":           "cfg",
		"[2001:db8::1]:9":      "cfg",
	} {
		got, err := fsys.ClientDir(FileRequest{Name: "/cfg", Client: netip.MustParseAddrPort(client)})
		if err != nil || got != want {
			t.Errorf("%s: %q %v, want %q", client, got, err, want)
		}
	}
	os.MkdirAll(filepath.Join(dir, "2001:db8::1"), 0o755)
	if got, _ := fsys.ClientDir(FileRequest{Name: "cfg", Client: netip.MustParseAddrPort("[2001:db8::1]:9")}); got != "2001:db8::1/cfg" {
		t.Errorf("IPv6: %q", got)
	}
	chain := ChainRewrite(func(r FileRequest) (string, error) { return strings.ToLower(r.Name), nil }, fsys.ClientDir)
	if got, err := chain(FileRequest{Name: "CFG", Client: netip.MustParseAddrPort("127.0.0.1:1")}); err != nil || got != "127.0.0.1/cfg" {
		t.Errorf("chain: %q %v", got, err)
	}
}
