package wire

import (
	"encoding/binary"
	"testing"
)

func TestReaderRoundTrip(t *testing.T) {
	var b []byte
	b = binary.AppendUvarint(b, 300)
	b = binary.AppendVarint(b, -5)
	b = binary.AppendUvarint(b, 3)
	b = append(b, "abc"...)
	b = append(b, 2, 'h', 'i', 7)
	r := Reader{B: b}
	u, v, s, k, c := r.Uvarint(), r.Varint(), string(r.Bytes()), r.Short(), r.Byte()
	if r.Bad || len(r.B) != 0 || u != 300 || v != -5 || s != "abc" || k != "hi" || c != 7 {
		t.Fatalf("got %d %d %q %q %d, bad %v, %d left", u, v, s, k, c, r.Bad, len(r.B))
	}
}

// Every kind of short or malformed input sets Bad, and every later read
// returns zero without moving.
func TestReaderBadIsSticky(t *testing.T) {
	for name, read := range map[string]func(*Reader){
		"uvarint empty": func(r *Reader) { r.Uvarint() },
		"uvarint overflow": func(r *Reader) {
			r.B = []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}
			r.Uvarint()
		},
		"varint truncated":   func(r *Reader) { r.B = []byte{0x80}; r.Varint() },
		"bytes past the end": func(r *Reader) { r.B = []byte{5, 'a'}; r.Bytes() },
		"bytes huge length":  func(r *Reader) { r.B = binary.AppendUvarint(nil, 1<<63); r.Bytes() },
		"short past the end": func(r *Reader) { r.B = []byte{255, 'a'}; r.Short() },
		"byte empty":         func(r *Reader) { r.Byte() },
	} {
		r := &Reader{}
		read(r)
		if !r.Bad {
			t.Errorf("%s: not bad", name)
			continue
		}
		r.B = []byte{1, 1, 1}
		if r.Uvarint() != 0 || r.Varint() != 0 || r.Bytes() != nil || r.Short() != "" || r.Byte() != 0 || len(r.B) != 3 {
			t.Errorf("%s: a read after Bad returned something or moved", name)
		}
	}
}
