package tftp

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Request
		wantErr string // substring; "" means success
	}{
		{
			name: "plain RRQ",
			in:   "\x00\x01boot/pxelinux.0\x00octet\x00",
			want: Request{Op: OpRRQ, Filename: "boot/pxelinux.0", Mode: ModeOctet},
		},
		{
			name: "WRQ netascii mixed case",
			in:   "\x00\x02a.txt\x00NetASCII\x00",
			want: Request{Op: OpWRQ, Filename: "a.txt", Mode: ModeNetascii},
		},
		{
			name: "mail is parsed",
			in:   "\x00\x02root\x00MAIL\x00",
			want: Request{Op: OpWRQ, Filename: "root", Mode: ModeMail},
		},
		{
			name: "options lowercased in order",
			in:   "\x00\x01f\x00octet\x00BlkSize\x001428\x00tsize\x000\x00X-Vendor\x00Yes\x00",
			want: Request{Op: OpRRQ, Filename: "f", Mode: ModeOctet, Options: []Option{
				{Name: "blksize", Value: "1428"},
				{Name: "tsize", Value: "0"},
				{Name: "x-vendor", Value: "Yes"},
			}},
		},
		{
			name: "duplicate option keeps first",
			in:   "\x00\x01f\x00octet\x00blksize\x001024\x00BLKSIZE\x008\x00",
			want: Request{Op: OpRRQ, Filename: "f", Mode: ModeOctet, Options: []Option{
				{Name: "blksize", Value: "1024"},
			}},
		},
		{
			name: "empty option value",
			in:   "\x00\x01f\x00octet\x00blksize\x00\x00",
			want: Request{Op: OpRRQ, Filename: "f", Mode: ModeOctet, Options: []Option{
				{Name: "blksize", Value: ""},
			}},
		},
		{
			name: "non-ASCII option name kept",
			in:   "\x00\x01f\x00octet\x00BLK\xc5\xbfIZE\x001\x00",
			want: Request{Op: OpRRQ, Filename: "f", Mode: ModeOctet, Options: []Option{
				{Name: "blk\xc5\xbfize", Value: "1"},
			}},
		},
		{
			name: "many duplicates",
			in:   "\x00\x01f\x00octet\x00" + strings.Repeat("a\x00b\x00", 1000),
			want: Request{Op: OpRRQ, Filename: "f", Mode: ModeOctet, Options: []Option{{Name: "a", Value: "b"}}},
		},
		{name: "empty", in: "", wantErr: "malformed packet: shorter than 2 bytes"},
		{name: "unknown opcode", in: "\x00\x09f\x00octet\x00", wantErr: "unknown opcode 9"},
		{name: "DATA opcode", in: "\x00\x03\x00\x01", wantErr: "malformed request: opcode is DATA"},
		{name: "no filename NUL", in: "\x00\x01file", wantErr: "malformed RRQ: filename not NUL-terminated"},
		{name: "empty filename", in: "\x00\x01\x00octet\x00", wantErr: "malformed RRQ: empty filename"},
		{name: "no mode NUL", in: "\x00\x02f\x00octet", wantErr: "malformed WRQ: mode not NUL-terminated"},
		{name: "no mode", in: "\x00\x01f\x00", wantErr: "mode not NUL-terminated"},
		{name: "bad mode", in: "\x00\x01f\x00binary\x00", wantErr: `unknown mode "binary"`},
		{name: "odd field", in: "\x00\x01f\x00octet\x00blksize\x00", wantErr: `option "blksize" has no NUL-terminated value`},
		{name: "value without NUL", in: "\x00\x01f\x00octet\x00blksize\x001024", wantErr: "no NUL-terminated value"},
		{name: "trailing garbage", in: "\x00\x01f\x00octet\x00blksize\x001024\x00xx", wantErr: "trailing bytes after the last option"},
		{name: "trailing NUL", in: "\x00\x01f\x00octet\x00\x00", wantErr: "empty option name"},
		{name: "too many options", in: "\x00\x01f\x00octet\x00" + manyOptions(maxOptions+1), wantErr: "more than 64 distinct options"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRequest([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRequest() error = %v, want one containing %q", err, tt.wantErr)
				}
				if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownOpcode) {
					t.Fatalf("ParseRequest() error = %v, want ErrMalformed or ErrUnknownOpcode", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRequest() error = %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseRequest() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func manyOptions(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "o%d\x00v\x00", i)
	}
	return b.String()
}

func TestAppendRequest(t *testing.T) {
	r := Request{Op: OpWRQ, Filename: "dir/f", Mode: ModeOctet, Options: []Option{
		{Name: OptTSize, Value: "1000"},
		{Name: OptWindowSize, Value: "8"},
	}}
	want := "\x00\x02dir/f\x00octet\x00tsize\x001000\x00windowsize\x008\x00"
	b := AppendRequest(nil, r)
	if string(b) != want {
		t.Fatalf("AppendRequest() = %q, want %q", b, want)
	}
	got, err := ParseRequest(b)
	if err != nil || !reflect.DeepEqual(got, r) {
		t.Fatalf("ParseRequest(AppendRequest(r)) = %+v, %v; want %+v", got, err, r)
	}
}

func TestDataAck(t *testing.T) {
	payload := []byte("hello")
	b := AppendData([]byte("prefix"), 0xABCD, payload)
	if want := "prefix\x00\x03\xab\xcdhello"; string(b) != want {
		t.Fatalf("AppendData() = %q, want %q", b, want)
	}
	block, got, err := ParseData(b[len("prefix"):])
	if err != nil || block != 0xABCD || string(got) != "hello" {
		t.Fatalf("ParseData() = %d, %q, %v", block, got, err)
	}
	if &got[0] != &b[len(b)-len(payload)] {
		t.Fatal("ParseData payload does not alias the packet")
	}

	b = AppendAck(nil, 65535)
	if want := "\x00\x04\xff\xff"; string(b) != want {
		t.Fatalf("AppendAck() = %q, want %q", b, want)
	}
	if block, err := ParseAck(b); err != nil || block != 65535 {
		t.Fatalf("ParseAck() = %d, %v", block, err)
	}
}

func TestFastPathErrors(t *testing.T) {
	long := AppendData(nil, 1, make([]byte, MaxBlockSize+1))
	tests := []struct {
		name  string
		parse func([]byte) error
		in    []byte
		want  string
	}{
		{name: "DATA empty", parse: parseDataErr, in: nil, want: "tftp: malformed DATA: wrong opcode"},
		{name: "DATA opcode ACK", parse: parseDataErr, in: []byte("\x00\x04\x00\x01"), want: "tftp: malformed DATA: wrong opcode"},
		{name: "DATA short", parse: parseDataErr, in: []byte("\x00\x03\x00"), want: "tftp: malformed DATA: shorter than 4 bytes"},
		{name: "DATA too long", parse: parseDataErr, in: long, want: "tftp: malformed DATA: payload longer than 65464 bytes"},
		{name: "ACK opcode DATA", parse: parseAckErr, in: []byte("\x00\x03\x00\x01"), want: "tftp: malformed ACK: wrong opcode"},
		{name: "ACK short", parse: parseAckErr, in: []byte("\x00\x04\x00"), want: "tftp: malformed ACK: length is not 4 bytes"},
		{name: "ACK long", parse: parseAckErr, in: []byte("\x00\x04\x00\x01\x00"), want: "tftp: malformed ACK: length is not 4 bytes"},
		{name: "ERROR short", parse: parseErrorErr, in: []byte("\x00\x05\x00"), want: "tftp: malformed ERROR: shorter than 4 bytes"},
		{name: "ERROR opcode", parse: parseErrorErr, in: []byte("\x00\x06\x00\x01"), want: "tftp: malformed ERROR: wrong opcode"},
		{name: "OACK opcode", parse: parseOACKErr, in: []byte("\x00\x05"), want: "tftp: malformed OACK: wrong opcode"},
		{name: "OACK odd", parse: parseOACKErr, in: []byte("\x00\x06blksize\x00"), want: `tftp: malformed OACK: option "blksize" has no NUL-terminated value`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.parse(tt.in)
			if err == nil || err.Error() != tt.want || !errors.Is(err, ErrMalformed) {
				t.Fatalf("error = %v, want %q wrapping ErrMalformed", err, tt.want)
			}
		})
	}
}

func parseDataErr(b []byte) error  { _, _, err := ParseData(b); return err }
func parseAckErr(b []byte) error   { _, err := ParseAck(b); return err }
func parseErrorErr(b []byte) error { _, _, err := ParseError(b); return err }
func parseOACKErr(b []byte) error  { _, err := ParseOACK(b); return err }

func TestPacketOpcode(t *testing.T) {
	for op := OpRRQ; op <= OpOACK; op++ {
		if got, err := PacketOpcode([]byte{0, byte(op), 'x'}); err != nil || got != op {
			t.Errorf("PacketOpcode(%v) = %v, %v", op, got, err)
		}
	}
	for _, in := range []string{"", "\x00", "\x00\x00", "\x00\x07", "\xff\xff"} {
		if _, err := PacketOpcode([]byte(in)); err == nil {
			t.Errorf("PacketOpcode(%q) succeeded", in)
		}
	}
	if _, err := PacketOpcode([]byte("\x01\x00")); !errors.Is(err, ErrUnknownOpcode) || err.Error() != "tftp: unknown opcode 256" {
		t.Errorf("PacketOpcode(256) error = %v", err)
	}
}

func TestErrorPacket(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		wantCode ErrorCode
		wantMsg  string
	}{
		{name: "normal", in: "\x00\x05\x00\x01no such file\x00", wantCode: ErrFileNotFound, wantMsg: "no such file"},
		{name: "empty message", in: "\x00\x05\x00\x08\x00", wantCode: ErrOptionRefused},
		{name: "no message, no NUL", in: "\x00\x05\x00\x00", wantCode: ErrUndefined},
		{name: "missing NUL", in: "\x00\x05\x00\x02denied", wantCode: ErrAccessViolation, wantMsg: "denied"},
		{name: "bytes after NUL", in: "\x00\x05\x00\x03full\x00junk", wantCode: ErrDiskFull, wantMsg: "full"},
		{name: "unknown code", in: "\x00\x05\x12\x34x\x00", wantCode: 0x1234, wantMsg: "x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, msg, err := ParseError([]byte(tt.in))
			if err != nil || code != tt.wantCode || msg != tt.wantMsg {
				t.Fatalf("ParseError() = %v, %q, %v; want %v, %q", code, msg, err, tt.wantCode, tt.wantMsg)
			}
		})
	}
	if b := AppendError(nil, ErrAccessViolation, "bad\x00rest"); string(b) != "\x00\x05\x00\x02bad\x00" {
		t.Fatalf("AppendError() = %q", b)
	}
}

func TestOACK(t *testing.T) {
	opts := []Option{{Name: OptBlockSize, Value: "1428"}, {Name: OptTSize, Value: "0"}}
	b := AppendOACK(nil, opts)
	if want := "\x00\x06blksize\x001428\x00tsize\x000\x00"; string(b) != want {
		t.Fatalf("AppendOACK() = %q, want %q", b, want)
	}
	got, err := ParseOACK(b)
	if err != nil || !reflect.DeepEqual(got, opts) {
		t.Fatalf("ParseOACK() = %v, %v; want %v", got, err, opts)
	}
	if got, err := ParseOACK([]byte("\x00\x06")); err != nil || got != nil {
		t.Fatalf("ParseOACK(empty) = %v, %v", got, err)
	}
}

func TestStrings(t *testing.T) {
	tests := []struct {
		name string
		got  fmt.Stringer
		want string
	}{
		{name: "RRQ", got: OpRRQ, want: "RRQ"},
		{name: "OACK", got: OpOACK, want: "OACK"},
		{name: "opcode 0", got: Opcode(0), want: "Opcode(0)"},
		{name: "opcode 7", got: Opcode(7), want: "Opcode(7)"},
		{name: "code 0", got: ErrUndefined, want: "not defined"},
		{name: "code 8", got: ErrOptionRefused, want: "option negotiation refused"},
		{name: "code 9", got: ErrorCode(9), want: "ErrorCode(9)"},
	}
	for _, tt := range tests {
		if s := tt.got.String(); s != tt.want {
			t.Errorf("%s: String() = %q, want %q", tt.name, s, tt.want)
		}
	}
}

func TestErrorCodeOf(t *testing.T) {
	remote := &Error{Code: ErrNoSuchUser, Message: "who?"}
	if got, want := remote.Error(), "tftp: error 7 (no such user): who?"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got, want := (&Error{Code: ErrDiskFull}).Error(), "tftp: error 3 (disk full or allocation exceeded)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	tests := []struct {
		name string
		err  error
		want ErrorCode
	}{
		{name: "remote", err: fmt.Errorf("transfer: %w", remote), want: ErrNoSuchUser},
		{name: "malformed", err: malformed("RRQ", "x"), want: ErrIllegalOperation},
		{name: "unknown opcode", err: ErrUnknownOpcode, want: ErrIllegalOperation},
		{name: "bad OACK", err: ErrBadOACK, want: ErrOptionRefused},
		{name: "outside root", err: ErrOutsideRoot, want: ErrAccessViolation},
		{name: "invalid name", err: ErrInvalidName, want: ErrAccessViolation},
		{name: "not regular", err: ErrNotRegular, want: ErrAccessViolation},
		{name: "write disabled", err: ErrWriteDisabled, want: ErrAccessViolation},
		{name: "EACCES", err: &fs.PathError{Op: "open", Path: "f", Err: syscall.EACCES}, want: ErrAccessViolation},
		{name: "exists", err: ErrExists, want: ErrFileExists},
		{name: "EEXIST", err: &fs.PathError{Op: "link", Path: "f", Err: syscall.EEXIST}, want: ErrFileExists},
		{name: "not exist", err: &fs.PathError{Op: "open", Path: "f", Err: syscall.ENOENT}, want: ErrFileNotFound},
		{name: "ENOSPC", err: &fs.PathError{Op: "write", Path: "f", Err: syscall.ENOSPC}, want: ErrDiskFull},
		{name: "EDQUOT", err: &fs.PathError{Op: "write", Path: "f", Err: syscall.EDQUOT}, want: ErrDiskFull},
		{name: "EIO", err: &fs.PathError{Op: "read", Path: "f", Err: syscall.EIO}, want: ErrUndefined},
		{name: "closed", err: os.ErrClosed, want: ErrUndefined},
	}
	for _, tt := range tests {
		if got := ErrorCodeOf(tt.err); got != tt.want {
			t.Errorf("%s: ErrorCodeOf(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestHotPathDoesNotAllocate(t *testing.T) {
	buf := make([]byte, 0, 4+MaxBlockSize)
	payload := bytes.Repeat([]byte{'x'}, 1428)
	bad := []byte("\x00\x03\x00")
	allocs := testing.AllocsPerRun(100, func() {
		pkt := AppendData(buf[:0], 7, payload)
		if _, _, err := ParseData(pkt); err != nil {
			t.Fatal(err)
		}
		if _, err := PacketOpcode(pkt); err != nil {
			t.Fatal(err)
		}
		pkt = AppendAck(buf[:0], 7)
		if _, err := ParseAck(pkt); err != nil {
			t.Fatal(err)
		}
		if _, _, err := ParseData(bad); err == nil {
			t.Fatal("short DATA parsed")
		}
	})
	if allocs != 0 {
		t.Fatalf("DATA/ACK round trip: %v allocations, want 0", allocs)
	}
}

func BenchmarkData(b *testing.B) {
	for _, size := range []int{512, 1428, MaxBlockSize} {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			buf := make([]byte, 0, 4+size)
			payload := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				pkt := AppendData(buf[:0], 1, payload)
				if _, _, err := ParseData(pkt); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkAck(b *testing.B) {
	buf := make([]byte, 0, 4)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseAck(AppendAck(buf[:0], 1)); err != nil {
			b.Fatal(err)
		}
	}
}
