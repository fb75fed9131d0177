package tftp

import (
	"errors"
	"io"
)

// octetSource reads a file's blocks with pread: the position is just the
// offset, so a transfer can resume anywhere.
type octetSource struct {
	f   io.ReaderAt
	off int64
}

func (s *octetSource) readBlock(p []byte) (int, error) {
	n, err := s.readAt(p, s.off)
	s.off += int64(n)
	return n, err
}

func (s *octetSource) pos() sourcePos { return sourcePos{Offset: s.off} }

func (s *octetSource) readAt(p []byte, off int64) (int, error) {
	n, err := s.f.ReadAt(p, off)
	if err == io.EOF {
		err = nil
	}
	return n, err
}

func (s *octetSource) seek(at sourcePos) { s.off = at.Offset }

func (s *octetSource) skip(n uint64, bs int) (uint64, bool, error) {
	s.off += int64(n) * int64(bs)
	return n, false, nil
}

// netasciiSource reads a file's blocks converted to netascii. Its position
// is the offset of the next byte to convert and the encoder's state (a CR
// whose LF or NUL did not fit the previous block).
type netasciiSource struct {
	f          io.ReaderAt
	enc        NetasciiEncoder
	bufOff     int64 // file offset of buf[0]
	buf        []byte
	start, end int // unconverted bytes are buf[start:end]
	eof        bool
	scratch    []byte // the blocks skip converts and drops
}

func newNetasciiSource(f io.ReaderAt, at sourcePos) *netasciiSource {
	return &netasciiSource{f: f, enc: at.Enc, bufOff: at.Offset, buf: make([]byte, 4096)}
}

func (s *netasciiSource) readBlock(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if s.start == s.end {
			if s.eof {
				m, _ := s.enc.Encode(p[n:], nil) // a byte still owed
				n += m
				break
			}
			s.bufOff += int64(s.end)
			m, err := s.f.ReadAt(s.buf, s.bufOff)
			s.start, s.end = 0, m
			switch {
			case errors.Is(err, io.EOF), err == nil && m == 0:
				s.eof = true
			case err != nil:
				return n, err
			}
			continue
		}
		d, c := s.enc.Encode(p[n:], s.buf[s.start:s.end])
		n += d
		s.start += c
	}
	return n, nil
}

func (s *netasciiSource) pos() sourcePos {
	return sourcePos{Offset: s.bufOff + int64(s.start), Enc: s.enc}
}

func (s *netasciiSource) seek(at sourcePos) {
	s.enc, s.bufOff, s.start, s.end, s.eof = at.Enc, at.Offset, 0, 0, false
}

// skip converts the next n blocks and drops them: where a netascii block
// starts in the file is only known by converting what comes before it.
func (s *netasciiSource) skip(n uint64, bs int) (uint64, bool, error) {
	if len(s.scratch) != bs {
		s.scratch = make([]byte, bs)
	}
	for i := uint64(1); i <= n; i++ {
		m, err := s.readBlock(s.scratch)
		if err != nil {
			return i - 1, false, err
		}
		if m < bs {
			return i, true, nil
		}
	}
	return n, false, nil
}

// readerSource reads blocks from a stream (a client's upload).
type readerSource struct {
	r io.Reader
	n int64
}

func (s *readerSource) readBlock(p []byte) (int, error) {
	n, err := io.ReadFull(s.r, p)
	s.n += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
	}
	return n, err
}

func (s *readerSource) pos() sourcePos { return sourcePos{Offset: s.n} }
