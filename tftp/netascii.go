package tftp

import (
	"errors"
	"io"
	"io/fs"
)

// Netascii (RFC 1350, after RFC 764) ends lines with CR LF and sends a CR
// that does not end a line as CR NUL.

// NetasciiEncoder converts local text to netascii: LF becomes CR LF and CR
// becomes CR NUL. When dst has room for the CR of a pair but not for the
// byte after it, the encoder writes the CR, keeps the other byte and writes
// it first on the next call, so a sender fills every DATA block exactly.
//
// The zero value is ready to use. An encoder is a small plain value: copy
// it, or use MarshalBinary, to checkpoint a transfer between blocks.
type NetasciiEncoder struct {
	owed owedByte
}

type owedByte uint8

const (
	owedNone owedByte = iota
	owedLF
	owedNUL
)

// Encode converts src into dst and returns the number of bytes written to
// dst and read from src. It stops when dst is full or src is used up;
// call it with an empty src at end of input to write a byte still owed.
func (e *NetasciiEncoder) Encode(dst, src []byte) (nDst, nSrc int) {
	if e.owed != owedNone {
		if len(dst) == 0 {
			return 0, 0
		}
		dst[0] = '\n'
		if e.owed == owedNUL {
			dst[0] = 0
		}
		nDst = 1
		e.owed = owedNone
	}
	for nSrc < len(src) && nDst < len(dst) {
		c := src[nSrc]
		nSrc++
		if c != '\n' && c != '\r' {
			dst[nDst] = c
			nDst++
			continue
		}
		dst[nDst] = '\r'
		nDst++
		second, owed := byte('\n'), owedLF
		if c == '\r' {
			second, owed = 0, owedNUL
		}
		if nDst == len(dst) {
			e.owed = owed
			break
		}
		dst[nDst] = second
		nDst++
	}
	return nDst, nSrc
}

// MarshalBinary returns the encoder's state in one byte.
func (e NetasciiEncoder) MarshalBinary() ([]byte, error) {
	return []byte{byte(e.owed)}, nil
}

// UnmarshalBinary restores a state returned by MarshalBinary.
func (e *NetasciiEncoder) UnmarshalBinary(b []byte) error {
	if len(b) != 1 || owedByte(b[0]) > owedNUL {
		return errors.New("tftp: invalid NetasciiEncoder state")
	}
	e.owed = owedByte(b[0])
	return nil
}

// NewNetasciiReader returns a reader of r's content converted to
// netascii. Reading it with [io.ReadFull] into a block-sized buffer
// yields exactly the DATA payloads of a netascii transfer.
func NewNetasciiReader(r io.Reader) io.Reader {
	return &netasciiReader{r: r}
}

type netasciiReader struct {
	r          io.Reader
	enc        NetasciiEncoder
	buf        [4096]byte
	start, end int   // unread source bytes are buf[start:end]
	err        error // from r; reported once buf is drained
}

func (r *netasciiReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if r.start == r.end {
			if r.err != nil {
				m, _ := r.enc.Encode(p[n:], nil) // a byte still owed
				n += m
				if n > 0 {
					return n, nil
				}
				return 0, r.err
			}
			if n > 0 {
				return n, nil // do not block for more while holding data
			}
			m, err := r.r.Read(r.buf[:])
			r.start, r.end, r.err = 0, m, err
			if m == 0 && err == nil {
				return 0, nil
			}
			continue
		}
		d, s := r.enc.Encode(p[n:], r.buf[r.start:r.end])
		n += d
		r.start += s
	}
	return n, nil
}

// NetasciiDecoder converts netascii to local text: CR LF becomes LF and
// CR NUL becomes CR. A CR followed by any other byte is kept, as is the
// byte (lenient decoding of a sloppy sender). A CR that ends src is held
// until the next call decides what it starts; at end of input,
// [NetasciiDecoder.Flush] writes it.
//
// The zero value is ready to use. A decoder is a small plain value: copy
// it, or use MarshalBinary, to checkpoint a transfer between blocks.
type NetasciiDecoder struct {
	cr bool // a CR ended the previous src
}

// Decode converts src into dst and returns the number of bytes written to
// dst and read from src. It stops when dst is full or src is used up.
func (d *NetasciiDecoder) Decode(dst, src []byte) (nDst, nSrc int) {
	for nDst < len(dst) {
		if d.cr {
			if nSrc == len(src) {
				break
			}
			d.cr = false
			switch src[nSrc] {
			case '\n':
				dst[nDst] = '\n'
				nSrc++
			case 0:
				dst[nDst] = '\r'
				nSrc++
			default:
				dst[nDst] = '\r' // bare CR; the byte after it is decoded next
			}
			nDst++
			continue
		}
		if nSrc == len(src) {
			break
		}
		c := src[nSrc]
		nSrc++
		if c == '\r' {
			d.cr = true
			continue
		}
		dst[nDst] = c
		nDst++
	}
	return nDst, nSrc
}

// Flush writes the CR held back by Decode, if any, to dst at end of input
// and returns the number of bytes written: 0 or 1. It writes nothing if dst
// is empty.
func (d *NetasciiDecoder) Flush(dst []byte) int {
	if !d.cr || len(dst) == 0 {
		return 0
	}
	dst[0] = '\r'
	d.cr = false
	return 1
}

// MarshalBinary returns the decoder's state in one byte.
func (d NetasciiDecoder) MarshalBinary() ([]byte, error) {
	if d.cr {
		return []byte{1}, nil
	}
	return []byte{0}, nil
}

// UnmarshalBinary restores a state returned by MarshalBinary.
func (d *NetasciiDecoder) UnmarshalBinary(b []byte) error {
	if len(b) != 1 || b[0] > 1 {
		return errors.New("tftp: invalid NetasciiDecoder state")
	}
	d.cr = b[0] == 1
	return nil
}

// NewNetasciiWriter returns a writer that converts netascii to local text
// and writes it to w. Close writes a CR held back at the end of the input;
// it does not close w. After an error from w, every call returns it; after
// Close, every call returns [fs.ErrClosed].
func NewNetasciiWriter(w io.Writer) io.WriteCloser {
	return &netasciiWriter{w: w}
}

type netasciiWriter struct {
	w   io.Writer
	dec NetasciiDecoder
	buf [4096]byte
	err error // sticky
}

func (w *netasciiWriter) Write(p []byte) (int, error) {
	n := 0
	for w.err == nil && n < len(p) {
		d, s := w.dec.Decode(w.buf[:], p[n:])
		if d > 0 {
			if _, err := w.w.Write(w.buf[:d]); err != nil {
				w.err = err
				break
			}
		}
		n += s
	}
	return n, w.err
}

func (w *netasciiWriter) Close() error {
	if w.err != nil {
		return w.err
	}
	if d := w.dec.Flush(w.buf[:]); d > 0 {
		if _, err := w.w.Write(w.buf[:d]); err != nil {
			w.err = err
			return err
		}
	}
	w.err = fs.ErrClosed
	return nil
}
