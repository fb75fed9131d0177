package tftp

import (
	"io"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchSource is a blockSource that reads several consecutive blocks with
// one system call.
type batchSource interface {
	blockSource
	// readBlocks fills ps in order, as one stream, and sets ns[i] to the
	// bytes ps[i] got. All but the last buffer have the same length; a
	// block shorter than its buffer is the last of the input.
	readBlocks(ps [][]byte, ns []int) error
}

// fileSource reads a regular file's blocks with preadv(2): a window of
// blocks costs one system call. Its position, like octetSource's, is just
// the offset.
type fileSource struct {
	octetSource
	rc  syscall.RawConn
	iov []unix.Iovec
	fn  func(fd uintptr) bool // bound once: no allocation per read
	// The current call's arguments and results, for fn.
	off int64
	n   int
	err error
}

// rawFile is content with a file descriptor that preadv reads: an
// *os.File, or a type that wraps one.
type rawFile interface {
	io.ReaderAt
	SyscallConn() (syscall.RawConn, error)
}

// newOctetSource returns a source for f from offset off: vectored reads
// for an *os.File (or another rawFile), ReadAt otherwise.
func newOctetSource(f io.ReaderAt, off int64) blockSource {
	if file, ok := f.(rawFile); ok {
		if rc, err := file.SyscallConn(); err == nil {
			s := &fileSource{octetSource: octetSource{f: f, off: off}, rc: rc}
			s.fn = s.preadv
			return s
		}
	}
	return &octetSource{f: f, off: off}
}

func (s *fileSource) preadv(fd uintptr) bool {
	for {
		r, _, e := unix.Syscall6(unix.SYS_PREADV, fd, uintptr(unsafe.Pointer(&s.iov[0])), uintptr(len(s.iov)), uintptr(s.off), uintptr(s.off>>32>>32), 0)
		if e == unix.EINTR {
			continue
		}
		s.n, s.err = int(r), nil
		if e != 0 {
			s.n, s.err = 0, &os.PathError{Op: "preadv", Path: "", Err: e}
		}
		return true
	}
}

func (s *fileSource) readBlocks(ps [][]byte, ns []int) error {
	total := 0
	for _, p := range ps {
		total += len(p)
	}
	bs := len(ps[0])
	got := 0
	for got < total {
		// Point the iovecs at what is still empty.
		j, r := got/bs, got%bs
		s.iov = s.iov[:0]
		for k := j; k < len(ps); k++ {
			p := ps[k]
			if k == j {
				p = p[r:]
			}
			if len(p) == 0 {
				continue
			}
			var v unix.Iovec
			v.Base = &p[0]
			v.SetLen(len(p))
			s.iov = append(s.iov, v)
		}
		s.off = s.octetSource.off + int64(got)
		if err := s.rc.Read(s.fn); err != nil {
			return err
		}
		if s.err != nil {
			return s.err
		}
		if s.n == 0 {
			break // end of file
		}
		got += s.n
	}
	clear(s.iov) // keep no reference to the buffers
	for i, p := range ps {
		ns[i] = min(len(p), max(0, got-i*bs))
	}
	s.octetSource.off += int64(got)
	return nil
}
