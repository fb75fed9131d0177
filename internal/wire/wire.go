// Package wire reads the varint encodings that package tftp's
// TransferState and package tftp/cluster's raft entries are written in
// (encoding/binary's AppendUvarint and AppendVarint, length-prefixed byte
// strings).
//
// A Reader remembers the first read that does not parse: every later read
// returns the zero value, so a decoder reads all its fields and checks
// once:
//
//	r := wire.Reader{B: data}
//	id, name := r.Uvarint(), r.Bytes()
//	if r.Bad || len(r.B) != 0 {
//		return errMalformed
//	}
package wire

import "encoding/binary"

// Reader reads from the front of B. Bad is set at the first read that
// does not parse; after that every read returns zero and B stays put.
type Reader struct {
	B   []byte
	Bad bool
}

// Uvarint reads an unsigned varint.
func (r *Reader) Uvarint() uint64 {
	if r.Bad {
		return 0
	}
	v, n := binary.Uvarint(r.B)
	if n <= 0 {
		r.Bad = true
		return 0
	}
	r.B = r.B[n:]
	return v
}

// Varint reads a signed (zig-zag) varint.
func (r *Reader) Varint() int64 {
	if r.Bad {
		return 0
	}
	v, n := binary.Varint(r.B)
	if n <= 0 {
		r.Bad = true
		return 0
	}
	r.B = r.B[n:]
	return v
}

// Bytes reads a uvarint length and that many bytes. The result shares B's
// memory.
func (r *Reader) Bytes() []byte {
	n := r.Uvarint()
	if r.Bad || n > uint64(len(r.B)) {
		r.Bad = true
		return nil
	}
	v := r.B[:n]
	r.B = r.B[n:]
	return v
}

// Short reads a one-byte length and that many bytes, as a string.
func (r *Reader) Short() string {
	if r.Bad || len(r.B) < 1 || len(r.B) < 1+int(r.B[0]) { // int: a byte sum would wrap
		r.Bad = true
		return ""
	}
	k := 1 + int(r.B[0])
	s := string(r.B[1:k])
	r.B = r.B[k:]
	return s
}

// Byte reads one byte.
func (r *Reader) Byte() byte {
	if r.Bad || len(r.B) < 1 {
		r.Bad = true
		return 0
	}
	v := r.B[0]
	r.B = r.B[1:]
	return v
}
