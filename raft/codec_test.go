//lint:file-ignore SA1019 the tests set the deprecated Leader and Candidate fields, which the wire carries

package raft

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

// message kinds for the codec tests and the fuzz target: the first byte of
// a fuzz input picks one.
var codecCases = []struct {
	name   string
	newMsg func() any
	encode func(b []byte, m any) []byte
	decode func(b []byte, m any) error
}{
	{"AppendEntriesRequest", func() any { return new(hraft.AppendEntriesRequest) },
		func(b []byte, m any) []byte { return appendAppendEntriesRequest(b, m.(*hraft.AppendEntriesRequest)) },
		func(b []byte, m any) error {
			return decodeAppendEntriesRequest(b, m.(*hraft.AppendEntriesRequest), true)
		}},
	{"AppendEntriesResponse", func() any { return new(hraft.AppendEntriesResponse) },
		func(b []byte, m any) []byte { return appendAppendEntriesResponse(b, m.(*hraft.AppendEntriesResponse)) },
		func(b []byte, m any) error { return decodeAppendEntriesResponse(b, m.(*hraft.AppendEntriesResponse)) }},
	{"RequestVoteRequest", func() any { return new(hraft.RequestVoteRequest) },
		func(b []byte, m any) []byte { return appendRequestVoteRequest(b, m.(*hraft.RequestVoteRequest)) },
		func(b []byte, m any) error { return decodeRequestVoteRequest(b, m.(*hraft.RequestVoteRequest), false) }},
	{"RequestVoteResponse", func() any { return new(hraft.RequestVoteResponse) },
		func(b []byte, m any) []byte { return appendRequestVoteResponse(b, m.(*hraft.RequestVoteResponse)) },
		func(b []byte, m any) error { return decodeRequestVoteResponse(b, m.(*hraft.RequestVoteResponse)) }},
	{"RequestPreVoteRequest", func() any { return new(hraft.RequestPreVoteRequest) },
		func(b []byte, m any) []byte { return appendRequestPreVoteRequest(b, m.(*hraft.RequestPreVoteRequest)) },
		func(b []byte, m any) error {
			return decodeRequestPreVoteRequest(b, m.(*hraft.RequestPreVoteRequest), true)
		}},
	{"RequestPreVoteResponse", func() any { return new(hraft.RequestPreVoteResponse) },
		func(b []byte, m any) []byte {
			return appendRequestPreVoteResponse(b, m.(*hraft.RequestPreVoteResponse))
		},
		func(b []byte, m any) error { return decodeRequestPreVoteResponse(b, m.(*hraft.RequestPreVoteResponse)) }},
	{"InstallSnapshotRequest", func() any { return new(hraft.InstallSnapshotRequest) },
		func(b []byte, m any) []byte {
			return appendInstallSnapshotRequest(b, m.(*hraft.InstallSnapshotRequest))
		},
		func(b []byte, m any) error {
			return decodeInstallSnapshotRequest(b, m.(*hraft.InstallSnapshotRequest), true)
		}},
	{"InstallSnapshotResponse", func() any { return new(hraft.InstallSnapshotResponse) },
		func(b []byte, m any) []byte {
			return appendInstallSnapshotResponse(b, m.(*hraft.InstallSnapshotResponse))
		},
		func(b []byte, m any) error {
			return decodeInstallSnapshotResponse(b, m.(*hraft.InstallSnapshotResponse))
		}},
	{"TimeoutNowRequest", func() any { return new(hraft.TimeoutNowRequest) },
		func(b []byte, m any) []byte { return appendTimeoutNowRequest(b, m.(*hraft.TimeoutNowRequest)) },
		func(b []byte, m any) error { return decodeTimeoutNowRequest(b, m.(*hraft.TimeoutNowRequest), false) }},
	{"TimeoutNowResponse", func() any { return new(hraft.TimeoutNowResponse) },
		func(b []byte, m any) []byte { return appendTimeoutNowResponse(b, m.(*hraft.TimeoutNowResponse)) },
		func(b []byte, m any) error { return decodeTimeoutNowResponse(b, m.(*hraft.TimeoutNowResponse)) }},
	{"Answer", func() any { return new(answer) },
		func(b []byte, m any) []byte { return m.(*answer).encode(b) },
		func(b []byte, m any) error { return m.(*answer).decode(b) }},
}

// answer wraps an answer body (flags, error, AppendEntries payload) so the
// fuzz target covers decodeAnswer too.
type answer struct {
	Err     string
	HasErr  bool
	Payload *hraft.AppendEntriesResponse
}

func (a *answer) encode(b []byte) []byte {
	var flags byte
	if a.HasErr {
		flags |= respError
	}
	if a.Payload != nil {
		flags |= respPayload
	}
	b = append(b, flags)
	if a.HasErr {
		b = putBytes(b, []byte(a.Err))
	}
	if a.Payload != nil {
		b = appendAppendEntriesResponse(b, a.Payload)
	}
	return b
}

func (a *answer) decode(b []byte) error {
	var resp hraft.AppendEntriesResponse
	err := decodeAnswer(b, &resp)
	var re *RemoteError
	switch {
	case err == nil:
		*a = answer{Payload: &resp}
	case errors.As(err, &re):
		*a = answer{Err: re.Msg, HasErr: true}
		if b[0]&respPayload != 0 {
			a.Payload = &resp
		}
	default:
		return err
	}
	return nil
}

// normalize makes decoded messages comparable with reflect.DeepEqual: times
// keep their instant only.
func normalize(m any) any {
	if r, ok := m.(*hraft.AppendEntriesRequest); ok {
		c := *r
		if r.Entries != nil {
			c.Entries = make([]*hraft.Log, len(r.Entries))
			for i, e := range r.Entries {
				x := *e
				if !x.AppendedAt.IsZero() {
					x.AppendedAt = x.AppendedAt.Round(0).UTC()
				}
				c.Entries[i] = &x
			}
		}
		return &c
	}
	return m
}

func randBytes(r *rand.Rand) []byte {
	switch r.IntN(4) {
	case 0:
		return nil
	case 1:
		return []byte{}
	}
	b := make([]byte, r.IntN(40))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func randHeader(r *rand.Rand) hraft.RPCHeader {
	return hraft.RPCHeader{ProtocolVersion: hraft.ProtocolVersion(r.IntN(4) - 1), ID: randBytes(r), Addr: randBytes(r)}
}

func randU64(r *rand.Rand) uint64 {
	switch r.IntN(3) {
	case 0:
		return uint64(r.IntN(300))
	case 1:
		return math.MaxUint64 - uint64(r.IntN(3))
	}
	return r.Uint64()
}

func randTime(r *rand.Rand, prev time.Time) time.Time {
	switch r.IntN(5) {
	case 0:
		return time.Time{}
	case 1:
		return time.Now()
	case 2:
		if !prev.IsZero() {
			return prev.Add(time.Duration(r.IntN(1e6)))
		}
	case 3:
		return time.Unix(r.Int64N(1<<40)-1<<39, r.Int64N(1e9))
	}
	return time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC)
}

func randMessage(r *rand.Rand, i int) any {
	switch i {
	case 0:
		m := &hraft.AppendEntriesRequest{RPCHeader: randHeader(r), Term: randU64(r), Leader: randBytes(r),
			PrevLogEntry: randU64(r), PrevLogTerm: randU64(r), LeaderCommitIndex: randU64(r)}
		if r.IntN(4) > 0 {
			m.Entries = []*hraft.Log{}
			var prev time.Time
			for range r.IntN(6) {
				e := &hraft.Log{Index: randU64(r), Term: randU64(r), Type: hraft.LogType(r.IntN(256)),
					Data: randBytes(r), Extensions: randBytes(r), AppendedAt: randTime(r, prev)}
				prev = e.AppendedAt
				m.Entries = append(m.Entries, e)
			}
		}
		return m
	case 1:
		return &hraft.AppendEntriesResponse{RPCHeader: randHeader(r), Term: randU64(r), LastLog: randU64(r), Success: r.IntN(2) == 0, NoRetryBackoff: r.IntN(2) == 0}
	case 2:
		return &hraft.RequestVoteRequest{RPCHeader: randHeader(r), Term: randU64(r), Candidate: randBytes(r), LastLogIndex: randU64(r), LastLogTerm: randU64(r), LeadershipTransfer: r.IntN(2) == 0}
	case 3:
		return &hraft.RequestVoteResponse{RPCHeader: randHeader(r), Term: randU64(r), Peers: randBytes(r), Granted: r.IntN(2) == 0}
	case 4:
		return &hraft.RequestPreVoteRequest{RPCHeader: randHeader(r), Term: randU64(r), LastLogIndex: randU64(r), LastLogTerm: randU64(r)}
	case 5:
		return &hraft.RequestPreVoteResponse{RPCHeader: randHeader(r), Term: randU64(r), Granted: r.IntN(2) == 0}
	case 6:
		return &hraft.InstallSnapshotRequest{RPCHeader: randHeader(r), SnapshotVersion: hraft.SnapshotVersion(r.IntN(3)), Term: randU64(r),
			Leader: randBytes(r), LastLogIndex: randU64(r), LastLogTerm: randU64(r), Peers: randBytes(r),
			Configuration: randBytes(r), ConfigurationIndex: randU64(r), Size: r.Int64N(1 << 40)}
	case 7:
		return &hraft.InstallSnapshotResponse{RPCHeader: randHeader(r), Term: randU64(r), Success: r.IntN(2) == 0}
	case 8:
		return &hraft.TimeoutNowRequest{RPCHeader: randHeader(r)}
	case 9:
		return &hraft.TimeoutNowResponse{RPCHeader: randHeader(r)}
	default:
		a := &answer{}
		if r.IntN(2) == 0 {
			a.HasErr, a.Err = true, string(randBytes(r))
		}
		if !a.HasErr || r.IntN(2) == 0 {
			a.Payload = randMessage(r, 1).(*hraft.AppendEntriesResponse)
		}
		return a
	}
}

func TestCodecRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	for i, c := range codecCases {
		for n := range 300 {
			m := randMessage(r, i)
			b := c.encode(nil, m)
			got := c.newMsg()
			if err := c.decode(b, got); err != nil {
				t.Fatalf("%s #%d: decode: %v\n%#v", c.name, n, err, m)
			}
			if !reflect.DeepEqual(normalize(got), normalize(m)) {
				t.Fatalf("%s #%d: round trip\n got %#v\nwant %#v", c.name, n, normalize(got), normalize(m))
			}
			// Every strict prefix is an error, never a panic.
			for k := range b {
				if err := c.decode(b[:k], c.newMsg()); err == nil {
					t.Fatalf("%s #%d: a %d-byte prefix of %d decoded", c.name, n, k, len(b))
				}
			}
			// Trailing garbage is an error.
			if err := c.decode(append(b, 0), c.newMsg()); !errors.Is(err, ErrMalformed) {
				t.Fatalf("%s #%d: trailing byte: %v", c.name, n, err)
			}
		}
	}
}

func TestCodecDecodedEntriesAliasTheFrame(t *testing.T) {
	m := &hraft.AppendEntriesRequest{Term: 1, Entries: []*hraft.Log{{Index: 1, Data: []byte("abc")}}}
	b := appendAppendEntriesRequest(nil, m)
	var got hraft.AppendEntriesRequest
	if err := decodeAppendEntriesRequest(b, &got, true); err != nil {
		t.Fatal(err)
	}
	if cap(got.Entries[0].Data) != 3 {
		t.Fatalf("entry data capacity %d: appending to it could overwrite the next field", cap(got.Entries[0].Data))
	}
	allocs := testing.AllocsPerRun(100, func() {
		var r hraft.AppendEntriesRequest
		decodeAppendEntriesRequest(b, &r, true)
	})
	if allocs > 2 {
		t.Errorf("decoding one append costs %v allocations, want ≤ 2 (entries and their pointers)", allocs)
	}
	var buf []byte
	allocs = testing.AllocsPerRun(100, func() { buf = appendAppendEntriesRequest(buf[:0], m) })
	if allocs != 0 {
		t.Errorf("encoding into a reused buffer allocates %v times", allocs)
	}
}

func TestCodecRejectsHugeCounts(t *testing.T) {
	// An entry count far beyond the bytes present must fail before any
	// allocation of that size.
	b := appendAppendEntriesRequest(nil, &hraft.AppendEntriesRequest{})
	b = b[:len(b)-1]
	b = putUvarint(b, 1<<40)
	var r hraft.AppendEntriesRequest
	if err := decodeAppendEntriesRequest(b, &r, true); !errors.Is(err, ErrMalformed) {
		t.Fatalf("huge count: %v", err)
	}
}

// FuzzDecode feeds arbitrary bytes to every decoder: none may panic, and
// whatever decodes must survive a re-encode unchanged.
func FuzzDecode(f *testing.F) {
	r := rand.New(rand.NewPCG(1, 1))
	for i, c := range codecCases {
		for range 3 {
			f.Add(append([]byte{byte(i)}, c.encode(nil, randMessage(r, i))...))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		c := codecCases[int(data[0])%len(codecCases)]
		m := c.newMsg()
		if err := c.decode(data[1:], m); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("%s: error %v does not wrap ErrMalformed", c.name, err)
			}
			return
		}
		b := c.encode(nil, m)
		m2 := c.newMsg()
		if err := c.decode(b, m2); err != nil {
			t.Fatalf("%s: re-encoded message does not decode: %v", c.name, err)
		}
		if !reflect.DeepEqual(normalize(m), normalize(m2)) {
			t.Fatalf("%s: round trip changed the message\n%#v\n%#v", c.name, normalize(m), normalize(m2))
		}
	})
}

// TestWriteFuzzSeeds regenerates the seed corpus in testdata/fuzz when
// RAFT_WRITE_FUZZ_SEEDS is set.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("RAFT_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set RAFT_WRITE_FUZZ_SEEDS=1 to regenerate testdata/fuzz/FuzzDecode")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(42, 42))
	for i, c := range codecCases {
		for k := range 2 {
			b := append([]byte{byte(i)}, c.encode(nil, randMessage(r, i))...)
			content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			name := filepath.Join(dir, fmt.Sprintf("%s-%d", c.name, k))
			if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Hostile shapes: a huge entry count, a bad time tag, a negative size.
	hostile := [][]byte{
		append([]byte{0}, 0, 0, 0, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f),
		append([]byte{0}, appendAppendEntriesRequest(nil, &hraft.AppendEntriesRequest{Entries: []*hraft.Log{{Index: 1, AppendedAt: time.Unix(5, 5)}}})...),
		append([]byte{6}, appendInstallSnapshotRequest(nil, &hraft.InstallSnapshotRequest{Size: -1})...),
		{10, 3, 1, 'x'},
	}
	for k, b := range hostile {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("hostile-%d", k)), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
