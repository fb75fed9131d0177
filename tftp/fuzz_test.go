package tftp

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Seed corpora are in testdata/fuzz/<FuzzName>.

func FuzzParseRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			return
		}
		if r.Op != OpRRQ && r.Op != OpWRQ || r.Filename == "" || strings.IndexByte(r.Filename, 0) >= 0 {
			t.Fatalf("bad request %+v", r)
		}
		if r.Mode != ModeOctet && r.Mode != ModeNetascii && r.Mode != ModeMail {
			t.Fatalf("mode %q is not canonical", r.Mode)
		}
		checkOptions(t, r.Options)
		r2, err := ParseRequest(AppendRequest(nil, r))
		if err != nil || !reflect.DeepEqual(r2, r) {
			t.Fatalf("round trip: %+v, %v; want %+v", r2, err, r)
		}
	})
}

// checkOptions checks the option invariants of the parsers: names are
// non-empty, free of uppercase ASCII and unique.
func checkOptions(t *testing.T, opts []Option) {
	t.Helper()
	if len(opts) > maxOptions {
		t.Fatalf("%d options, limit %d", len(opts), maxOptions)
	}
	seen := map[string]bool{}
	for _, o := range opts {
		if o.Name == "" || seen[o.Name] || strings.ContainsAny(o.Name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ\x00") || strings.IndexByte(o.Value, 0) >= 0 {
			t.Fatalf("bad option %q in %q", o, opts)
		}
		seen[o.Name] = true
	}
}

func FuzzParsePacket(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		op, opErr := PacketOpcode(b)

		if block, payload, err := ParseData(b); err == nil {
			if op != OpDATA || opErr != nil || len(payload) > MaxBlockSize {
				t.Fatalf("DATA parsed from opcode %v (%v), payload %d bytes", op, opErr, len(payload))
			}
			if got := AppendData(nil, block, payload); !bytes.Equal(got, b) {
				t.Fatalf("DATA round trip: %q, want %q", got, b)
			}
		}
		if block, err := ParseAck(b); err == nil {
			if op != OpACK {
				t.Fatalf("ACK parsed from opcode %v", op)
			}
			if got := AppendAck(nil, block); !bytes.Equal(got, b) {
				t.Fatalf("ACK round trip: %q, want %q", got, b)
			}
		}
		if code, msg, err := ParseError(b); err == nil {
			if op != OpERROR || strings.IndexByte(msg, 0) >= 0 {
				t.Fatalf("ERROR parsed from opcode %v, message %q", op, msg)
			}
			code2, msg2, err := ParseError(AppendError(nil, code, msg))
			if err != nil || code2 != code || msg2 != msg {
				t.Fatalf("ERROR round trip: %v, %q, %v; want %v, %q", code2, msg2, err, code, msg)
			}
		}
		if opts, err := ParseOACK(b); err == nil {
			if op != OpOACK {
				t.Fatalf("OACK parsed from opcode %v", op)
			}
			checkOptions(t, opts)
			opts2, err := ParseOACK(AppendOACK(nil, opts))
			if err != nil || !reflect.DeepEqual(opts2, opts) {
				t.Fatalf("OACK round trip: %q, %v; want %q", opts2, err, opts)
			}
		}
		if r, err := ParseRequest(b); err == nil && r.Op != op {
			t.Fatalf("request %v parsed from opcode %v", r.Op, op)
		}
	})
}

// FuzzNegotiate takes the options as NUL-separated names and values.
func FuzzNegotiate(f *testing.F) {
	f.Fuzz(func(t *testing.T, wrq bool, raw []byte, maxBlock, maxWindow int, minTimeoutNS, maxTimeoutNS, fileSize int64) {
		minTimeout, maxTimeout := time.Duration(minTimeoutNS), time.Duration(maxTimeoutNS)
		var opts []Option
		fields := strings.Split(string(raw), "\x00")
		for i := 0; i+1 < len(fields); i += 2 {
			opts = append(opts, Option{Name: fields[i], Value: fields[i+1]})
		}
		op := OpRRQ
		if wrq {
			op = OpWRQ
		}
		lim := Limits{MaxBlockSize: maxBlock, MaxWindowSize: maxWindow, MinTimeout: minTimeout, MaxTimeout: maxTimeout}
		n, oack := Negotiate(op, opts, lim, fileSize)

		want := defaultNegotiated()
		var names []string
		for _, o := range oack {
			v, err := strconv.ParseInt(o.Value, 10, 64)
			if err != nil || strconv.FormatInt(v, 10) != o.Value || v < 0 {
				t.Fatalf("OACK value %q of %q is not canonical", o.Value, o.Name)
			}
			req, ok := findOption(opts, o.Name)
			if _, valid := parseDecimal(req.Value); !ok || !valid {
				t.Fatalf("OACK option %q: requested %v, with value %q", o.Name, ok, req.Value)
			}
			switch o.Name {
			case OptBlockSize:
				limit := int64(MaxBlockSize)
				if maxBlock > 0 {
					limit = min(max(int64(maxBlock), MinBlockSize), MaxBlockSize)
				}
				if v < MinBlockSize || v > limit || maxBlock < 0 {
					t.Fatalf("blksize %d accepted with limit %d", v, maxBlock)
				}
				want.BlockSize = int(v)
			case OptWindowSize:
				limit := int64(maxWindow)
				if maxWindow == 0 {
					limit = DefaultMaxWindowSize
				}
				if v < 1 || v > 65535 || v > limit {
					t.Fatalf("windowsize %d accepted with limit %d", v, maxWindow)
				}
				want.WindowSize = int(v)
			case OptTimeout:
				if v < 1 || v > 255 || minTimeout > 0 && time.Duration(v)*time.Second < minTimeout ||
					maxTimeout != 0 && time.Duration(v)*time.Second > maxTimeout {
					t.Fatalf("timeout %d accepted within [%v, %v]", v, minTimeout, maxTimeout)
				}
				want.Timeout = time.Duration(v) * time.Second
			case OptTSize:
				if op == OpRRQ && v != fileSize {
					t.Fatalf("RRQ tsize %d, file size %d", v, fileSize)
				}
				want.TSize = v
			default:
				t.Fatalf("unknown option %q accepted", o.Name)
			}
			names = append(names, o.Name)
		}
		if n != want {
			t.Fatalf("Negotiated %+v disagrees with OACK %q", n, oack)
		}
		// The OACK follows the order of first occurrences in the request.
		var order []string
		for _, o := range opts {
			k := knownOption(o.Name)
			if k >= 0 && !slices.Contains(order, knownOptions[k]) {
				order = append(order, knownOptions[k])
			}
		}
		order = slices.DeleteFunc(order, func(name string) bool { return !slices.Contains(names, name) })
		if !slices.Equal(order, names) {
			t.Fatalf("OACK order %q, want %q", names, order)
		}
		// A client accepts what a server negotiated.
		got, err := ParseOACKReply(opts, oack)
		if err != nil || got != n {
			t.Fatalf("ParseOACKReply = %+v, %v; want %+v", got, err, n)
		}
	})
}

func FuzzNetascii(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, block, chunk uint16) {
		size := 1 + int(block)%1024
		blocks := encodeBlocks(data, size, 1+int(chunk)%2048)
		for i, b := range blocks[:len(blocks)-1] {
			if len(b) != size {
				t.Fatalf("block %d has %d bytes, want %d", i, len(b), size)
			}
		}
		enc := []byte(strings.Join(blocks, ""))
		checkNetascii(t, enc)

		var d NetasciiDecoder
		var out []byte
		dst := make([]byte, 1+int(chunk)%512)
		for rest := enc; len(rest) > 0; {
			n, m := d.Decode(dst, rest[:min(len(rest), size)])
			out = append(out, dst[:n]...)
			rest = rest[m:]
		}
		out = append(out, dst[:d.Flush(dst)]...)
		if !bytes.Equal(out, data) {
			t.Fatalf("decode(encode(%q)) = %q", data, out)
		}
	})
}

// FuzzParseOACKReply checks the client's side of negotiation: whatever the
// server's OACK, the result is an error or parameters within the RFC
// ranges that do not exceed what was asked.
func FuzzParseOACKReply(f *testing.F) {
	f.Fuzz(func(t *testing.T, reqRaw, oackRaw []byte) {
		split := func(raw []byte) []Option {
			var opts []Option
			fields := strings.Split(string(raw), "\x00")
			for i := 0; i+1 < len(fields); i += 2 {
				opts = append(opts, Option{Name: fields[i], Value: fields[i+1]})
			}
			return opts
		}
		req, oack := split(reqRaw), split(oackRaw)
		n, err := ParseOACKReply(req, oack)
		if err != nil {
			if !errors.Is(err, ErrBadOACK) {
				t.Fatalf("error %v does not wrap ErrBadOACK", err)
			}
			return
		}
		if n.BlockSize < MinBlockSize || n.BlockSize > MaxBlockSize || n.WindowSize < 1 || n.WindowSize > 65535 ||
			n.Timeout < 0 || n.Timeout > 255*time.Second {
			t.Fatalf("out of range: %+v", n)
		}
		if n.BlockSize != DefaultBlockSize {
			r, _ := findOption(req, OptBlockSize)
			if v, ok := parseDecimal(r.Value); !ok || int64(n.BlockSize) > v {
				t.Fatalf("blksize %d for a request of %q", n.BlockSize, r.Value)
			}
		}
	})
}

// FuzzTransferState: decoding never panics, and what decodes re-encodes to
// the same state.
func FuzzTransferState(f *testing.F) {
	st := TransferState{ID: 1, Op: OpRRQ, Client: netip.MustParseAddrPort("127.0.0.1:1000"), Filename: "f", Mode: ModeOctet,
		Negotiated: Negotiated{BlockSize: 512, WindowSize: 1, TSize: -1}, Block: 70000, Offset: 70000 * 512}
	b, _ := st.MarshalBinary()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var st TransferState
		if err := st.UnmarshalBinary(b); err != nil {
			return
		}
		b2, err := st.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var st2 TransferState
		if err := st2.UnmarshalBinary(b2); err != nil || fmt.Sprint(st2) != fmt.Sprint(st) {
			t.Fatalf("round trip: %+v, %v; want %+v", st2, err, st)
		}
	})
}

// fuzzIO records what a transfer asks for (xfer.out) after each event.
type fuzzIO struct {
	sent    [][]byte // to the client
	errs    []netip.AddrPort
	pending bool
	commits []WriteFile
	done    bool
}

func (f *fuzzIO) take(x *xfer) {
	o := &x.out
	for _, d := range o.send {
		f.sent = append(f.sent, bytes.Clone(d))
	}
	if o.send != nil {
		f.pending = true
	}
	for _, e := range o.errs {
		if e.to == x.client {
			f.sent = append(f.sent, bytes.Clone(e.pkt))
		} else {
			f.errs = append(f.errs, e.to)
		}
	}
	if o.commit != nil {
		f.commits = append(f.commits, o.commit)
	}
	if o.begin != nil {
		panic("begin: the fuzzed server has no Replicator")
	}
	if o.done {
		f.done = true
	}
	x.out = effects{errs: o.errs[:0]}
}

// FuzzServerTransfer feeds a server transfer a request and then a script of
// events: packets from the client or from a stranger, timer ticks, send
// completions, repeated requests. The transfer must not panic, must answer
// strangers with ERROR 5 only, never an ERROR and within the rate limit,
// must never send a DATA longer than the block size, and must release
// everything when cancelled.
func FuzzServerTransfer(f *testing.F) {
	dir := f.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), patternBytes(3000), 0o644)
	os.WriteFile(filepath.Join(dir, "t"), []byte("a\nb\rc\r\n"), 0o644)
	cfg := ServerConfig{Root: dir, AllowWrite: true, AllowOverwrite: true, MaxUploadSize: 1 << 20, Logger: slog.New(slog.DiscardHandler)}
	srv, err := newServerState(cfg.withDefaults(), 1)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(srv.release)
	client := netip.MustParseAddrPort("192.0.2.1:1000")
	stranger := netip.MustParseAddrPort("192.0.2.2:1000")
	f.Fuzz(func(t *testing.T, req, script []byte) {
		r, err := ParseRequest(req)
		if err != nil {
			return
		}
		io := &fuzzIO{}
		x := srv.newXfer(r, client, srv.m.shard(0))
		now := time.Unix(1000, 0)
		start := now
		x.start(now, netip.MustParseAddrPort("192.0.2.9:2000"))
		io.take(x)
		for len(script) >= 2 && !io.done {
			kind, n := script[0], int(script[1])
			script = script[2:]
			p := script[:min(n, len(script))]
			script = script[len(p):]
			switch kind % 5 {
			case 0:
				x.packet(now, client, p)
			case 1:
				before := len(io.errs)
				x.packet(now, stranger, p)
				io.take(x)
				if op, err := PacketOpcode(p); err == nil && op == OpERROR && len(io.errs) > before {
					t.Fatalf("an ERROR from a stranger was answered")
				}
				// Within the transfer port's allowance: a burst, then a
				// few a second.
				if max := strangerErrors + int(now.Sub(start)/time.Second)*strangerRate + 1; len(io.errs) > max {
					t.Fatalf("%d ERRORs to strangers in %v", len(io.errs), now.Sub(start))
				}
			case 2:
				now = now.Add(time.Duration(n) * 50 * time.Millisecond)
				x.timer(now)
			case 3:
				if io.pending {
					io.pending = false
					x.sent(now)
				}
			case 4:
				if len(io.commits) > 0 {
					u := io.commits[0]
					io.commits = io.commits[1:]
					x.committed(now, u.Commit())
				}
				if n%2 == 1 {
					io.take(x)
					x.requestAgain(now) // the listener saw the request again
				}
			}
			io.take(x)
		}
		x.cancel("end of the script")
		io.take(x)
		for _, u := range io.commits {
			u.Abort()
		}
		if !io.done || x.file != nil || x.up != nil {
			t.Fatalf("not released: done %v, file %v, upload %v", io.done, x.file != nil, x.up != nil)
		}
		for _, to := range io.errs {
			if to != stranger {
				t.Fatalf("ERROR to %v", to)
			}
		}
		for _, pkt := range io.sent {
			if _, payload, err := ParseData(pkt); err == nil && len(payload) > x.neg.BlockSize {
				t.Fatalf("DATA of %d bytes, block size %d", len(payload), x.neg.BlockSize)
			}
			if op, err := PacketOpcode(pkt); err != nil || op == OpRRQ || op == OpWRQ {
				t.Fatalf("sent %q", pkt)
			}
		}
		if srv.m.shard(0).active.Load() != 0 {
			t.Fatalf("%d transfers still counted active", srv.m.shard(0).active.Load())
		}
	})
}
