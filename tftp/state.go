package tftp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/ioactor/ioactor/internal/wire"
)

// TransferState is what identifies a server transfer and how far it got:
// small, plain, and serialisable with MarshalBinary, so that a replicated
// server can record it and another node can resume the transfer from it.
//
// A download resumes by reading the file from Offset (with the netascii
// encoder state Netascii) and sending block Block+1; the client's
// retransmitted ACK names the block it needs, which is Block or later. The
// block index counts past 65535 without wrapping, so it also fixes the
// rollover epoch: the wire number of block i is i mod 65536 (RolloverZero).
type TransferState struct {
	ID       uint64
	Op       Opcode         // OpRRQ or OpWRQ
	Client   netip.AddrPort // the client's TID
	Server   netip.AddrPort // the server's TID: where replies come from
	Filename string         // after ServerConfig.Rewrite: the name the Files opened
	Mode     string
	// Negotiated holds the transfer parameters; Options the OACK packet
	// sent, if any (nil: the transfer started without options).
	Negotiated Negotiated
	Options    []byte
	Rollover   Rollover
	// Size is the file's size when a download started.
	Size int64
	// Block is the last block acknowledged by the client (download) or
	// received (upload); 0 before the first.
	Block uint64
	// Offset is the file offset after Block: bytes read for a download,
	// payload bytes received for an upload.
	Offset int64
	// Netascii is the converter's state after Block: for a download, the
	// byte the encoder owes (0 none, 1 LF, 2 NUL); for an upload, 1 if a
	// CR is held back.
	Netascii uint8
	Started  time.Time
}

const stateVersion = 1

// MarshalBinary encodes the state compactly (a few dozen bytes plus the
// file name and the OACK).
func (st TransferState) MarshalBinary() ([]byte, error) {
	b := make([]byte, 0, 64+len(st.Filename)+len(st.Options))
	b = append(b, stateVersion, byte(st.Op), byte(st.Rollover), st.Netascii)
	b = binary.AppendUvarint(b, st.ID)
	for _, ap := range []netip.AddrPort{st.Client, st.Server} {
		a, err := ap.MarshalBinary()
		if err != nil {
			return nil, err
		}
		b = appendBytes(b, a)
	}
	b = appendBytes(b, []byte(st.Filename))
	b = appendBytes(b, []byte(st.Mode))
	b = binary.AppendUvarint(b, uint64(st.Negotiated.BlockSize))
	b = binary.AppendUvarint(b, uint64(st.Negotiated.WindowSize))
	b = binary.AppendVarint(b, int64(st.Negotiated.Timeout))
	b = binary.AppendVarint(b, st.Negotiated.TSize)
	b = appendBytes(b, st.Options)
	b = binary.AppendVarint(b, st.Size)
	b = binary.AppendUvarint(b, st.Block)
	b = binary.AppendVarint(b, st.Offset)
	var started int64
	if !st.Started.IsZero() {
		started = st.Started.UnixNano()
	}
	b = binary.AppendVarint(b, started)
	return b, nil
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

var errBadState = errors.New("tftp: invalid TransferState encoding")

// UnmarshalBinary decodes what MarshalBinary encoded.
func (st *TransferState) UnmarshalBinary(data []byte) error {
	if len(data) < 4 || data[0] != stateVersion {
		return errBadState
	}
	var s TransferState
	s.Op, s.Rollover, s.Netascii = Opcode(data[1]), Rollover(data[2]), data[3]
	d := wire.Reader{B: data[4:]}
	s.ID = d.Uvarint()
	var addrErr error
	for _, ap := range []*netip.AddrPort{&s.Client, &s.Server} {
		if err := ap.UnmarshalBinary(d.Bytes()); err != nil && addrErr == nil && !d.Bad {
			addrErr = err
		}
	}
	s.Filename = string(d.Bytes())
	s.Mode = string(d.Bytes())
	s.Negotiated.BlockSize = int(d.Uvarint())
	s.Negotiated.WindowSize = int(d.Uvarint())
	s.Negotiated.Timeout = time.Duration(d.Varint())
	s.Negotiated.TSize = d.Varint()
	if o := d.Bytes(); len(o) > 0 {
		s.Options = append([]byte(nil), o...)
	}
	s.Size = d.Varint()
	s.Block = d.Uvarint()
	s.Offset = d.Varint()
	if ns := d.Varint(); ns != 0 {
		s.Started = time.Unix(0, ns)
	}
	switch {
	case addrErr != nil:
		return fmt.Errorf("%w: %w", errBadState, addrErr)
	case d.Bad || len(d.B) != 0:
		return errBadState
	}
	if s.Op != OpRRQ && s.Op != OpWRQ || s.Rollover > RolloverRefuse || s.Netascii > 2 {
		return errBadState
	}
	*st = s
	return nil
}
