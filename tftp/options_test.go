package tftp

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func optionList(kv ...string) []Option {
	var o []Option
	for i := 0; i+1 < len(kv); i += 2 {
		o = append(o, Option{Name: kv[i], Value: kv[i+1]})
	}
	return o
}

func TestNegotiate(t *testing.T) {
	def := Negotiated{BlockSize: 512, WindowSize: 1, TSize: -1}
	type test struct {
		name     string
		op       Opcode
		opts     []Option
		lim      Limits
		fileSize int64
		want     Negotiated
		wantOACK []Option
	}
	tests := []test{
		{name: "no options", op: OpRRQ, want: def},
		{
			name:     "all accepted, request order, canonical names",
			op:       OpRRQ,
			opts:     optionList("TSIZE", "0", "blksize", "1428", "Timeout", "3", "windowsize", "8"),
			fileSize: 123456,
			want:     Negotiated{BlockSize: 1428, WindowSize: 8, Timeout: 3 * time.Second, TSize: 123456},
			wantOACK: optionList("tsize", "123456", "blksize", "1428", "timeout", "3", "windowsize", "8"),
		},
		{
			name:     "blksize above the RFC max gets the max",
			op:       OpRRQ,
			opts:     optionList("blksize", "70000"),
			want:     Negotiated{BlockSize: MaxBlockSize, WindowSize: 1, TSize: -1},
			wantOACK: optionList("blksize", "65464"),
		},
		{
			name:     "blksize clamped to the limit",
			op:       OpWRQ,
			opts:     optionList("blksize", "9000"),
			lim:      Limits{MaxBlockSize: 1468},
			want:     Negotiated{BlockSize: 1468, WindowSize: 1, TSize: -1},
			wantOACK: optionList("blksize", "1468"),
		},
		{
			name:     "blksize limit below 8 means 8",
			op:       OpRRQ,
			opts:     optionList("blksize", "100"),
			lim:      Limits{MaxBlockSize: 2},
			want:     Negotiated{BlockSize: 8, WindowSize: 1, TSize: -1},
			wantOACK: optionList("blksize", "8"),
		},
		{name: "blksize refused by limit", op: OpRRQ, opts: optionList("blksize", "1024"), lim: Limits{MaxBlockSize: -1}, want: def},
		{name: "blksize below 8", op: OpRRQ, opts: optionList("blksize", "7"), want: def},
		{
			name:     "blksize leading zeros canonicalized",
			op:       OpRRQ,
			opts:     optionList("blksize", "0001024"),
			want:     Negotiated{BlockSize: 1024, WindowSize: 1, TSize: -1},
			wantOACK: optionList("blksize", "1024"),
		},
		{name: "timeout 0", op: OpRRQ, opts: optionList("timeout", "0"), want: def},
		{name: "timeout 256", op: OpRRQ, opts: optionList("timeout", "256"), want: def},
		{name: "timeout below limit", op: OpRRQ, opts: optionList("timeout", "1"), lim: Limits{MinTimeout: 2 * time.Second}, want: def},
		{name: "timeout above limit", op: OpRRQ, opts: optionList("timeout", "10"), lim: Limits{MaxTimeout: 5 * time.Second}, want: def},
		{name: "timeout refused by limit", op: OpRRQ, opts: optionList("timeout", "1"), lim: Limits{MaxTimeout: -1}, want: def},
		{
			name:     "timeout 255",
			op:       OpWRQ,
			opts:     optionList("timeout", "255"),
			want:     Negotiated{BlockSize: 512, WindowSize: 1, Timeout: 255 * time.Second, TSize: -1},
			wantOACK: optionList("timeout", "255"),
		},
		{name: "RRQ tsize, size unknown", op: OpRRQ, opts: optionList("tsize", "0"), fileSize: -1, want: def},
		{
			name:     "RRQ empty file",
			op:       OpRRQ,
			opts:     optionList("tsize", "0"),
			want:     Negotiated{BlockSize: 512, WindowSize: 1, TSize: 0},
			wantOACK: optionList("tsize", "0"),
		},
		{
			name:     "WRQ tsize echoed",
			op:       OpWRQ,
			opts:     optionList("tsize", "9876543210"),
			fileSize: -1,
			want:     Negotiated{BlockSize: 512, WindowSize: 1, TSize: 9876543210},
			wantOACK: optionList("tsize", "9876543210"),
		},
		{name: "tsize overflow", op: OpWRQ, opts: optionList("tsize", "9223372036854775808"), want: def},
		{
			name:     "windowsize default limit",
			op:       OpRRQ,
			opts:     optionList("windowsize", "65535"),
			want:     Negotiated{BlockSize: 512, WindowSize: DefaultMaxWindowSize, TSize: -1},
			wantOACK: optionList("windowsize", "16"),
		},
		{
			name:     "windowsize limit above RFC max",
			op:       OpRRQ,
			opts:     optionList("windowsize", "70000"),
			lim:      Limits{MaxWindowSize: 100000},
			want:     Negotiated{BlockSize: 512, WindowSize: 65535, TSize: -1},
			wantOACK: optionList("windowsize", "65535"),
		},
		{name: "windowsize 0", op: OpRRQ, opts: optionList("windowsize", "0"), want: def},
		{name: "windowsize refused by limit", op: OpRRQ, opts: optionList("windowsize", "4"), lim: Limits{MaxWindowSize: -1}, want: def},
		{name: "unknown option", op: OpRRQ, opts: optionList("multicast", ""), want: def},
		{name: "not a request", op: OpDATA, opts: optionList("blksize", "1024"), want: def},
		{
			name:     "first of duplicates counts, even when bogus",
			op:       OpRRQ,
			opts:     optionList("blksize", "x", "BLKSIZE", "1024", "timeout", "2", "timeout", "3"),
			want:     Negotiated{BlockSize: 512, WindowSize: 1, Timeout: 2 * time.Second, TSize: -1},
			wantOACK: optionList("timeout", "2"),
		},
	}
	for _, bogus := range []string{"abc", "-1", "1e3", " 512", "512 ", "+512", "", "0x200", "５１２"} {
		for _, name := range knownOptions {
			tests = append(tests, test{name: name + " " + bogus, op: OpRRQ, opts: optionList(name, bogus), fileSize: 10, want: def})
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, oack := Negotiate(tt.op, tt.opts, tt.lim, tt.fileSize)
			if got != tt.want || !reflect.DeepEqual(oack, tt.wantOACK) {
				t.Fatalf("Negotiate() = %+v, %v; want %+v, %v", got, oack, tt.want, tt.wantOACK)
			}
		})
	}
}

func TestParseOACKReply(t *testing.T) {
	requested := optionList("blksize", "1428", "TIMEOUT", "3", "tsize", "0", "windowsize", "8", "x-vendor", "1")
	tests := []struct {
		name    string
		oack    []Option
		want    Negotiated
		wantErr bool
	}{
		{name: "nothing accepted", want: Negotiated{BlockSize: 512, WindowSize: 1, TSize: -1}},
		{
			name: "all accepted",
			oack: optionList("windowsize", "4", "tsize", "99", "timeout", "3", "BLKSIZE", "1024", "x-vendor", "whatever"),
			want: Negotiated{BlockSize: 1024, WindowSize: 4, Timeout: 3 * time.Second, TSize: 99},
		},
		{name: "not requested", oack: optionList("multicast", ""), wantErr: true},
		{name: "twice", oack: optionList("blksize", "512", "blksize", "512"), wantErr: true},
		{name: "blksize larger", oack: optionList("blksize", "1429"), wantErr: true},
		{name: "blksize below 8", oack: optionList("blksize", "7"), wantErr: true},
		{name: "windowsize larger", oack: optionList("windowsize", "9"), wantErr: true},
		{name: "windowsize 0", oack: optionList("windowsize", "0"), wantErr: true},
		{name: "timeout changed", oack: optionList("timeout", "2"), wantErr: true},
		{name: "tsize bogus", oack: optionList("tsize", "-1"), wantErr: true},
		{name: "blksize bogus", oack: optionList("blksize", " 512"), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseOACKReply(requested, tt.oack)
			if tt.wantErr {
				if !errors.Is(err, ErrBadOACK) || ErrorCodeOf(err) != ErrOptionRefused {
					t.Fatalf("ParseOACKReply() = %+v, %v; want ErrBadOACK", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseOACKReply() = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
	if _, err := ParseOACKReply(optionList("blksize", "big"), optionList("blksize", "512")); !errors.Is(err, ErrBadOACK) {
		t.Fatalf("OACK for a bogus request: error = %v, want ErrBadOACK", err)
	}
}
