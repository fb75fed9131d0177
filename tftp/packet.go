package tftp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// Opcode is the first field of every TFTP packet.
type Opcode uint16

// Opcodes of RFC 1350 and RFC 2347.
const (
	OpRRQ   Opcode = 1 // read request
	OpWRQ   Opcode = 2 // write request
	OpDATA  Opcode = 3
	OpACK   Opcode = 4
	OpERROR Opcode = 5
	OpOACK  Opcode = 6 // option acknowledgment (RFC 2347)
)

var opcodeNames = [...]string{
	OpRRQ:   "RRQ",
	OpWRQ:   "WRQ",
	OpDATA:  "DATA",
	OpACK:   "ACK",
	OpERROR: "ERROR",
	OpOACK:  "OACK",
}

func (op Opcode) String() string {
	if op >= OpRRQ && op <= OpOACK {
		return opcodeNames[op]
	}
	return "Opcode(" + strconv.Itoa(int(op)) + ")"
}

// ErrorCode is the code carried by an ERROR packet.
type ErrorCode uint16

// Error codes of RFC 1350 and RFC 2347.
const (
	ErrUndefined        ErrorCode = 0 // see the message
	ErrFileNotFound     ErrorCode = 1
	ErrAccessViolation  ErrorCode = 2
	ErrDiskFull         ErrorCode = 3 // disk full or allocation exceeded
	ErrIllegalOperation ErrorCode = 4
	ErrUnknownTID       ErrorCode = 5 // packet from an unknown transfer ID (port)
	ErrFileExists       ErrorCode = 6
	ErrNoSuchUser       ErrorCode = 7
	ErrOptionRefused    ErrorCode = 8 // option negotiation refused (RFC 2347)
)

var errorCodeNames = [...]string{
	ErrUndefined:        "not defined",
	ErrFileNotFound:     "file not found",
	ErrAccessViolation:  "access violation",
	ErrDiskFull:         "disk full or allocation exceeded",
	ErrIllegalOperation: "illegal TFTP operation",
	ErrUnknownTID:       "unknown transfer ID",
	ErrFileExists:       "file already exists",
	ErrNoSuchUser:       "no such user",
	ErrOptionRefused:    "option negotiation refused",
}

func (c ErrorCode) String() string {
	if int(c) < len(errorCodeNames) {
		return errorCodeNames[c]
	}
	return "ErrorCode(" + strconv.Itoa(int(c)) + ")"
}

// Transfer modes. [ParseRequest] returns them in this canonical form
// whatever the case on the wire.
const (
	ModeOctet    = "octet"
	ModeNetascii = "netascii"
	ModeMail     = "mail" // obsolete; parsed so that a server can refuse it
)

// Sizes of DATA packets.
const (
	DefaultBlockSize = 512   // RFC 1350
	MinBlockSize     = 8     // RFC 2348
	MaxBlockSize     = 65464 // RFC 2348
)

// maxOptions bounds the distinct options in one packet, so that finding
// duplicates stays cheap on a hostile packet. Real clients send a handful.
const maxOptions = 64

// Option is one RFC 2347 option. The parsers lowercase Name: option names
// are case-insensitive.
type Option struct {
	Name, Value string
}

// Request is an RRQ or WRQ packet.
type Request struct {
	Op       Opcode // OpRRQ or OpWRQ
	Filename string
	Mode     string // ModeOctet, ModeNetascii or ModeMail
	Options  []Option
}

// Preallocated errors of the fast paths.
var (
	errShort     = malformed("packet", "shorter than 2 bytes")
	errNotData   = malformed("DATA", "wrong opcode")
	errDataShort = malformed("DATA", "shorter than 4 bytes")
	errDataLong  = malformed("DATA", "payload longer than 65464 bytes")
	errNotAck    = malformed("ACK", "wrong opcode")
	errAckLength = malformed("ACK", "length is not 4 bytes")
	errNotError  = malformed("ERROR", "wrong opcode")
	errErrShort  = malformed("ERROR", "shorter than 4 bytes")
	errNotOACK   = malformed("OACK", "wrong opcode")
)

// PacketOpcode returns the opcode of packet b, or an error wrapping
// [ErrMalformed] or [ErrUnknownOpcode].
func PacketOpcode(b []byte) (Opcode, error) {
	if len(b) < 2 {
		return 0, errShort
	}
	op := Opcode(binary.BigEndian.Uint16(b))
	if op < OpRRQ || op > OpOACK {
		return op, fmt.Errorf("%w %d", ErrUnknownOpcode, uint16(op))
	}
	return op, nil
}

func opcodeIs(b []byte, op Opcode) bool {
	return len(b) >= 2 && Opcode(binary.BigEndian.Uint16(b)) == op
}

// ParseRequest parses an RRQ or WRQ packet. It lowercases the mode and the
// option names and, of options named more than once, keeps the first.
func ParseRequest(b []byte) (Request, error) {
	op, err := PacketOpcode(b)
	if err != nil {
		return Request{}, err
	}
	if op != OpRRQ && op != OpWRQ {
		return Request{}, malformed("request", "opcode is "+op.String())
	}
	kind := op.String()
	rest := b[2:]
	name, rest, ok := cutNUL(rest)
	if !ok {
		return Request{}, malformed(kind, "filename not NUL-terminated")
	}
	if len(name) == 0 {
		return Request{}, malformed(kind, "empty filename")
	}
	mode, rest, ok := cutNUL(rest)
	if !ok {
		return Request{}, malformed(kind, "mode not NUL-terminated")
	}
	r := Request{Op: op, Filename: string(name)}
	switch {
	case equalFold(mode, ModeOctet):
		r.Mode = ModeOctet
	case equalFold(mode, ModeNetascii):
		r.Mode = ModeNetascii
	case equalFold(mode, ModeMail):
		r.Mode = ModeMail
	default:
		return Request{}, malformed(kind, fmt.Sprintf("unknown mode %q", mode))
	}
	if r.Options, err = parseOptions(kind, rest); err != nil {
		return Request{}, err
	}
	return r, nil
}

// AppendRequest appends r as an RRQ or WRQ packet to dst. The fields must
// not contain NUL bytes.
func AppendRequest(dst []byte, r Request) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(r.Op))
	dst = appendString(dst, r.Filename)
	dst = appendString(dst, r.Mode)
	return appendOptions(dst, r.Options)
}

// ParseData parses a DATA packet. The payload aliases b. A payload longer
// than [MaxBlockSize] is malformed; checking it against the negotiated
// block size is the caller's job. ParseData does not allocate.
func ParseData(b []byte) (block uint16, payload []byte, err error) {
	switch {
	case !opcodeIs(b, OpDATA):
		return 0, nil, errNotData
	case len(b) < 4:
		return 0, nil, errDataShort
	case len(b)-4 > MaxBlockSize:
		return 0, nil, errDataLong
	}
	return binary.BigEndian.Uint16(b[2:]), b[4:], nil
}

// AppendData appends a DATA packet to dst. It does not allocate if dst has
// room for 4+len(payload) more bytes.
func AppendData(dst []byte, block uint16, payload []byte) []byte {
	dst = append(dst, 0, byte(OpDATA), byte(block>>8), byte(block))
	return append(dst, payload...)
}

// ParseAck parses an ACK packet, which is exactly 4 bytes long. It does
// not allocate.
func ParseAck(b []byte) (block uint16, err error) {
	switch {
	case !opcodeIs(b, OpACK):
		return 0, errNotAck
	case len(b) != 4:
		return 0, errAckLength
	}
	return binary.BigEndian.Uint16(b[2:]), nil
}

// AppendAck appends an ACK packet to dst. It does not allocate if dst has
// room for 4 more bytes.
func AppendAck(dst []byte, block uint16) []byte {
	return append(dst, 0, byte(OpACK), byte(block>>8), byte(block))
}

// ParseError parses an ERROR packet. It is lenient, as the packet ends the
// transfer anyway: the message runs to the first NUL or, if the sender
// left out the terminating NUL, to the end of the packet.
func ParseError(b []byte) (code ErrorCode, msg string, err error) {
	switch {
	case !opcodeIs(b, OpERROR):
		return 0, "", errNotError
	case len(b) < 4:
		return 0, "", errErrShort
	}
	m := b[4:]
	if i := bytes.IndexByte(m, 0); i >= 0 {
		m = m[:i]
	}
	return ErrorCode(binary.BigEndian.Uint16(b[2:])), string(m), nil
}

// AppendError appends an ERROR packet to dst. A NUL byte would end the
// message early, so msg is cut at its first NUL.
func AppendError(dst []byte, code ErrorCode, msg string) []byte {
	if i := strings.IndexByte(msg, 0); i >= 0 {
		msg = msg[:i]
	}
	dst = append(dst, 0, byte(OpERROR), byte(code>>8), byte(code))
	return appendString(dst, msg)
}

// ParseOACK parses an OACK packet, with the option rules of
// [ParseRequest]. An OACK without options parses to nil.
func ParseOACK(b []byte) ([]Option, error) {
	if !opcodeIs(b, OpOACK) {
		return nil, errNotOACK
	}
	return parseOptions("OACK", b[2:])
}

// AppendOACK appends an OACK packet to dst. Names and values must not
// contain NUL bytes.
func AppendOACK(dst []byte, opts []Option) []byte {
	dst = append(dst, 0, byte(OpOACK))
	return appendOptions(dst, opts)
}

// parseOptions parses NUL-terminated name/value pairs filling all of b.
func parseOptions(kind string, b []byte) ([]Option, error) {
	var opts []Option
	for len(b) > 0 {
		name, rest, ok := cutNUL(b)
		if !ok {
			return nil, malformed(kind, "trailing bytes after the last option")
		}
		if len(name) == 0 {
			return nil, malformed(kind, "empty option name")
		}
		value, rest, ok := cutNUL(rest)
		if !ok {
			return nil, malformed(kind, fmt.Sprintf("option %q has no NUL-terminated value", name))
		}
		b = rest
		n := canonicalName(name)
		if hasOption(opts, n) {
			continue
		}
		if len(opts) == maxOptions {
			return nil, malformed(kind, "more than "+strconv.Itoa(maxOptions)+" distinct options")
		}
		opts = append(opts, Option{Name: n, Value: string(value)})
	}
	return opts, nil
}

// canonicalName returns name with ASCII letters lowercased (other bytes are
// kept as they are), without allocating for the options this package
// knows.
func canonicalName(name []byte) string {
	for _, known := range knownOptions {
		if equalFold(name, known) {
			return known
		}
	}
	lower := make([]byte, len(name))
	for i, c := range name {
		lower[i] = lowerASCII(c)
	}
	return string(lower)
}

func hasOption(opts []Option, name string) bool {
	for _, o := range opts {
		if o.Name == name {
			return true
		}
	}
	return false
}

func appendOptions(dst []byte, opts []Option) []byte {
	for _, o := range opts {
		dst = appendString(dst, o.Name)
		dst = appendString(dst, o.Value)
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = append(dst, s...)
	return append(dst, 0)
}

// cutNUL splits b at its first NUL; ok is false if there is none.
func cutNUL(b []byte) (field, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

// equalFold reports whether a and b are equal, ignoring ASCII case. Option
// and mode names are ASCII; other bytes must match exactly.
func equalFold[A, B string | []byte](a A, b B) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		if lowerASCII(a[i]) != lowerASCII(b[i]) {
			return false
		}
	}
	return true
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
