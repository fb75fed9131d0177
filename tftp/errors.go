package tftp

import (
	"errors"
	"io/fs"
	"strconv"
	"strings"
	"syscall"
)

// Sentinel errors. Functions in this package wrap them with %w and add what
// went wrong and where; test for them with [errors.Is].
var (
	// ErrMalformed reports a packet that does not follow RFC 1350 or
	// RFC 2347, for example a filename without its terminating NUL.
	ErrMalformed = errors.New("tftp: malformed")
	// ErrUnknownOpcode reports a packet whose opcode is not 1 to 6.
	ErrUnknownOpcode = errors.New("tftp: unknown opcode")
	// ErrBadOACK reports an OACK that a client must refuse with
	// [ErrOptionRefused]: an option it did not request, or a value it did
	// not allow.
	ErrBadOACK = errors.New("tftp: bad OACK")

	// ErrInvalidName reports a file name that is empty, contains a NUL byte
	// or a backslash, or names a temporary upload file.
	ErrInvalidName = errors.New("tftp: invalid file name")
	// ErrOutsideRoot reports a file name that leaves the file system root,
	// through ".." or through a symbolic link.
	ErrOutsideRoot = errors.New("tftp: file name escapes the root")
	// ErrNotRegular reports a file name that names a directory, device,
	// FIFO or other file that is not a regular file.
	ErrNotRegular = errors.New("tftp: not a regular file")
	// ErrWriteDisabled reports an upload to an [FS] that does not allow
	// writes, or to read-only [Files] ([FromFS], [ReadFunc]).
	ErrWriteDisabled = errors.New("tftp: writes are disabled")
	// ErrExists reports an upload to a name that exists in an [FS] that
	// does not allow overwrites.
	ErrExists = errors.New("tftp: file exists")
)

// Error is an ERROR packet as a Go error: one received from the peer, or
// one to send. Use [errors.As] to tell a transfer refused by the peer from
// a local failure.
type Error struct {
	Code    ErrorCode
	Message string
}

func (e *Error) Error() string {
	s := "tftp: error " + strconv.Itoa(int(e.Code)) + " (" + e.Code.String() + ")"
	if e.Message != "" && !strings.EqualFold(e.Message, e.Code.String()) {
		s += ": " + e.Message
	}
	return s
}

// ErrorCodeOf returns the ERROR code that reports err to the peer:
//
//   - an [*Error] in err's chain: its Code;
//   - [ErrMalformed], [ErrUnknownOpcode]: [ErrIllegalOperation];
//   - [ErrBadOACK]: [ErrOptionRefused];
//   - [ErrInvalidName], [ErrOutsideRoot], [ErrNotRegular],
//     [ErrWriteDisabled], [fs.ErrPermission], EISDIR: [ErrAccessViolation];
//   - [ErrExists], [fs.ErrExist]: [ErrFileExists];
//   - [fs.ErrNotExist], ENOTDIR (a file used as a directory):
//     [ErrFileNotFound];
//   - ENOSPC, EDQUOT: [ErrDiskFull];
//   - anything else: [ErrUndefined], with the error's text as the message.
func ErrorCodeOf(err error) ErrorCode {
	var te *Error
	switch {
	case errors.As(err, &te):
		return te.Code
	case errors.Is(err, ErrMalformed), errors.Is(err, ErrUnknownOpcode):
		return ErrIllegalOperation
	case errors.Is(err, ErrBadOACK):
		return ErrOptionRefused
	case errors.Is(err, ErrInvalidName), errors.Is(err, ErrOutsideRoot),
		errors.Is(err, ErrNotRegular), errors.Is(err, ErrWriteDisabled),
		errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EISDIR):
		return ErrAccessViolation
	case errors.Is(err, ErrExists), errors.Is(err, fs.ErrExist):
		return ErrFileExists
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return ErrFileNotFound
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return ErrDiskFull
	}
	return ErrUndefined
}

// malformedError is an [ErrMalformed] with the packet kind and the reason.
// The fast-path parsers return preallocated ones, so a bad DATA or ACK
// costs no allocation.
type malformedError struct {
	kind   string // "RRQ", "DATA", ... or "request" when the opcode is wrong
	reason string
}

func (e *malformedError) Error() string {
	return ErrMalformed.Error() + " " + e.kind + ": " + e.reason
}

func (e *malformedError) Unwrap() error { return ErrMalformed }

func malformed(kind, reason string) error {
	return &malformedError{kind: kind, reason: reason}
}
