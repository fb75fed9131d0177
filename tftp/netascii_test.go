package tftp

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

func TestNetasciiEncode(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		block int
		want  []string // blocks
	}{
		{name: "plain", in: "abc", block: 8, want: []string{"abc"}},
		{name: "LF", in: "a\nb", block: 8, want: []string{"a\r\nb"}},
		{name: "CR", in: "a\rb", block: 8, want: []string{"a\r\x00b"}},
		{name: "CR LF", in: "\r\n", block: 8, want: []string{"\r\x00\r\n"}},
		{name: "NUL untouched", in: "\x00", block: 8, want: []string{"\x00"}},
		{name: "LF split", in: "a\nb", block: 2, want: []string{"a\r", "\nb", ""}},
		{name: "CR split", in: "a\rb", block: 2, want: []string{"a\r", "\x00b", ""}},
		{name: "owed byte at end", in: "a\n", block: 2, want: []string{"a\r", "\n"}},
		{name: "one-byte blocks", in: "\n\r", block: 1, want: []string{"\r", "\n", "\r", "\x00", ""}},
		{name: "exact fit ends with an empty block", in: "a\n", block: 3, want: []string{"a\r\n", ""}},
		{name: "empty", in: "", block: 3, want: []string{""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := encodeBlocks([]byte(tt.in), tt.block, 1)
			if !slices.Equal(got, tt.want) {
				t.Fatalf("blocks = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNetasciiDecode(t *testing.T) {
	tests := []struct {
		name string
		in   []string // src chunks
		want string
	}{
		{name: "CR LF", in: []string{"a\r\nb"}, want: "a\nb"},
		{name: "CR NUL", in: []string{"a\r\x00b"}, want: "a\rb"},
		{name: "bare CR kept", in: []string{"a\rb"}, want: "a\rb"},
		{name: "CR CR LF", in: []string{"\r\r\n"}, want: "\r\n"},
		{name: "bare LF kept", in: []string{"a\nb"}, want: "a\nb"},
		{name: "NUL kept", in: []string{"\x00"}, want: "\x00"},
		{name: "CR LF across chunks", in: []string{"a\r", "\nb"}, want: "a\nb"},
		{name: "CR NUL across chunks", in: []string{"a\r", "\x00b"}, want: "a\rb"},
		{name: "CR across an empty chunk", in: []string{"a\r", "", "\n"}, want: "a\n"},
		{name: "trailing CR flushed", in: []string{"a\r"}, want: "a\r"},
		{name: "bare CR before chunk", in: []string{"\r", "x"}, want: "\rx"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d NetasciiDecoder
			var out []byte
			dst := make([]byte, 64)
			for _, chunk := range tt.in {
				n, m := d.Decode(dst, []byte(chunk))
				if m != len(chunk) {
					t.Fatalf("Decode(%q) consumed %d bytes, want all", chunk, m)
				}
				out = append(out, dst[:n]...)
			}
			out = append(out, dst[:d.Flush(dst)]...)
			if string(out) != tt.want {
				t.Fatalf("decoded %q, want %q", out, tt.want)
			}
		})
	}
}

func TestNetasciiFullDst(t *testing.T) {
	var e NetasciiEncoder
	if n, m := e.Encode(nil, []byte("\n")); n != 0 || m != 0 {
		t.Fatalf("Encode(nil dst) = %d, %d", n, m)
	}
	e.Encode(make([]byte, 1), []byte("\n")) // owes LF
	if n, m := e.Encode(nil, nil); n != 0 || m != 0 {
		t.Fatalf("Encode(nil dst) with a byte owed = %d, %d", n, m)
	}
	var d NetasciiDecoder
	if n, m := d.Decode(nil, []byte("\r\n")); n != 0 || m != 0 {
		t.Fatalf("Decode(nil dst) = %d, %d", n, m)
	}
	d.Decode(make([]byte, 1), []byte("\r")) // holds CR
	if n := d.Flush(nil); n != 0 {
		t.Fatalf("Flush(nil) = %d", n)
	}
	if dst := make([]byte, 1); d.Flush(dst) != 1 || dst[0] != '\r' || d.Flush(dst) != 0 {
		t.Fatal("Flush did not write the held CR exactly once")
	}
}

// randomText returns n bytes that are mostly CR, LF and NUL.
func randomText(rng *rand.Rand, n int) []byte {
	const alphabet = "\r\n\x00a\r\n"
	b := make([]byte, n)
	for i := range b {
		if rng.IntN(8) == 0 {
			b[i] = byte(rng.IntN(256))
		} else {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
	}
	return b
}

// encodeBlocks encodes src into blocks of size block, reading src in
// chunks of up to chunk bytes, as a sender fills DATA packets.
func encodeBlocks(src []byte, block, chunk int) []string {
	var e NetasciiEncoder
	var blocks []string
	dst := make([]byte, block)
	n := 0
	for {
		c := src[:min(chunk, len(src))]
		d, s := e.Encode(dst[n:], c)
		n += d
		src = src[s:]
		if len(src) == 0 {
			d, _ := e.Encode(dst[n:], nil)
			n += d
		}
		if n == block || len(src) == 0 {
			blocks = append(blocks, string(dst[:n]))
			if n < block {
				return blocks
			}
			n = 0
		}
	}
}

func checkNetascii(t *testing.T, enc []byte) {
	t.Helper()
	for i, c := range enc {
		switch {
		case c == '\r' && (i+1 == len(enc) || enc[i+1] != '\n' && enc[i+1] != 0):
			t.Fatalf("CR at %d not followed by LF or NUL in %q", i, enc)
		case c == '\n' && (i == 0 || enc[i-1] != '\r'):
			t.Fatalf("LF at %d not preceded by CR in %q", i, enc)
		}
	}
}

func TestNetasciiRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		src := randomText(rng, rng.IntN(2000))
		block := 1 + rng.IntN(600)
		blocks := encodeBlocks(src, block, 1+rng.IntN(700))
		for j, b := range blocks[:len(blocks)-1] {
			if len(b) != block {
				t.Fatalf("case %d: block %d has %d bytes, want %d", i, j, len(b), block)
			}
		}
		if last := blocks[len(blocks)-1]; len(last) == block {
			t.Fatalf("case %d: last block is full; a transfer must end with a short block", i)
		}
		enc := []byte(strings.Join(blocks, ""))
		checkNetascii(t, enc)

		var d NetasciiDecoder
		var out []byte
		dst := make([]byte, 1+rng.IntN(600))
		for rest := enc; len(rest) > 0; {
			c := rest[:min(len(rest), 1+rng.IntN(700))]
			n, m := d.Decode(dst, c)
			out = append(out, dst[:n]...)
			rest = rest[m:]
		}
		out = append(out, dst[:d.Flush(dst)]...)
		if !bytes.Equal(out, src) {
			t.Fatalf("case %d: round trip\n got %q\nwant %q", i, out, src)
		}
	}
}

func TestNetasciiReader(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	src := randomText(rng, 20000)
	var want bytes.Buffer
	var e NetasciiEncoder
	dst := make([]byte, 3*len(src))
	n, _ := e.Encode(dst, src)
	want.Write(dst[:n])

	wrappers := []struct {
		name string
		wrap func(io.Reader) io.Reader
	}{
		{name: "plain", wrap: func(r io.Reader) io.Reader { return r }},
		{name: "one byte", wrap: iotest.OneByteReader},
		{name: "half", wrap: iotest.HalfReader},
		{name: "data and EOF", wrap: iotest.DataErrReader},
	}
	for _, w := range wrappers {
		t.Run(w.name, func(t *testing.T) {
			if err := iotest.TestReader(NewNetasciiReader(w.wrap(bytes.NewReader(src))), want.Bytes()); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("source error after owed byte", func(t *testing.T) {
		boom := errors.New("boom")
		r := NewNetasciiReader(io.MultiReader(bytes.NewReader([]byte("a\n")), iotest.ErrReader(boom)))
		p := make([]byte, 2)
		if n, err := io.ReadFull(r, p); n != 2 || err != nil || string(p) != "a\r" {
			t.Fatalf("ReadFull = %d, %v, %q", n, err, p)
		}
		if n, err := r.Read(p); n != 1 || err != nil || p[0] != '\n' {
			t.Fatalf("Read = %d, %v, %q; want the owed LF", n, err, p[:n])
		}
		if _, err := r.Read(p); err != boom {
			t.Fatalf("Read error = %v, want %v", err, boom)
		}
	})
}

func TestNetasciiWriter(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	src := randomText(rng, 20000)
	enc := []byte(strings.Join(encodeBlocks(src, 512, 512), ""))
	var out bytes.Buffer
	w := NewNetasciiWriter(&out)
	for rest := enc; len(rest) > 0; {
		c := rest[:min(len(rest), 1+rng.IntN(9000))]
		if n, err := w.Write(c); n != len(c) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
		rest = rest[len(c):]
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), src) {
		t.Fatal("NetasciiWriter output differs from the original")
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, fs.ErrClosed) {
		t.Fatalf("Write after Close: error = %v, want fs.ErrClosed", err)
	}

	t.Run("trailing CR", func(t *testing.T) {
		var out bytes.Buffer
		w := NewNetasciiWriter(&out)
		w.Write([]byte("a\r"))
		if out.String() != "a" {
			t.Fatalf("before Close: %q, want the CR held back", out.String())
		}
		if err := w.Close(); err != nil || out.String() != "a\r" {
			t.Fatalf("Close = %v, output %q", err, out.String())
		}
	})

	t.Run("error is sticky", func(t *testing.T) {
		boom := errors.New("boom")
		w := NewNetasciiWriter(failWriter{boom})
		if n, err := w.Write([]byte("abc")); n != 0 || err != boom {
			t.Fatalf("Write = %d, %v", n, err)
		}
		if err := w.Close(); err != boom {
			t.Fatalf("Close = %v, want %v", err, boom)
		}
	})
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

// TestNetasciiCheckpoint restores the coder state from MarshalBinary before
// every block, as a replicated server resuming on another node would.
func TestNetasciiCheckpoint(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	src := randomText(rng, 5000)
	want := strings.Join(encodeBlocks(src, 7, len(src)), "")

	var enc []byte
	var state []byte
	dst := make([]byte, 7)
	for rest := src; ; {
		var e NetasciiEncoder
		if state != nil {
			if err := e.UnmarshalBinary(state); err != nil {
				t.Fatal(err)
			}
		}
		n, m := e.Encode(dst, rest)
		enc = append(enc, dst[:n]...)
		rest = rest[m:]
		state, _ = e.MarshalBinary()
		if len(rest) == 0 && n < len(dst) {
			break
		}
	}
	if string(enc) != want {
		t.Fatal("encoding with checkpoints differs")
	}

	var out []byte
	state = nil
	for rest := enc; len(rest) > 0; {
		var d NetasciiDecoder
		if state != nil {
			if err := d.UnmarshalBinary(state); err != nil {
				t.Fatal(err)
			}
		}
		n, m := d.Decode(dst, rest[:min(len(rest), 5)])
		out = append(out, dst[:n]...)
		rest = rest[m:]
		if len(rest) == 0 {
			out = append(out, dst[:d.Flush(dst)]...)
		}
		state, _ = d.MarshalBinary()
	}
	if !bytes.Equal(out, src) {
		t.Fatal("decoding with checkpoints differs")
	}

	for _, bad := range [][]byte{nil, {3}, {0, 0}} {
		if (&NetasciiEncoder{}).UnmarshalBinary(bad) == nil {
			t.Errorf("NetasciiEncoder.UnmarshalBinary(%v) succeeded", bad)
		}
	}
	for _, bad := range [][]byte{nil, {2}, {0, 0}} {
		if (&NetasciiDecoder{}).UnmarshalBinary(bad) == nil {
			t.Errorf("NetasciiDecoder.UnmarshalBinary(%v) succeeded", bad)
		}
	}
}

func BenchmarkNetascii(b *testing.B) {
	src := bytes.Repeat([]byte("a line of ordinary text, about as long as most\n"), 1<<10)
	dst := make([]byte, 2*len(src))
	b.Run("encode", func(b *testing.B) {
		b.SetBytes(int64(len(src)))
		b.ReportAllocs()
		for b.Loop() {
			var e NetasciiEncoder
			e.Encode(dst, src)
		}
	})
	var e NetasciiEncoder
	n, _ := e.Encode(dst, src)
	enc := dst[:n]
	out := make([]byte, len(src))
	b.Run("decode", func(b *testing.B) {
		b.SetBytes(int64(len(enc)))
		b.ReportAllocs()
		for b.Loop() {
			var d NetasciiDecoder
			d.Decode(out, enc)
		}
	})
}
