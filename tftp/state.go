package tftp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
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
	d := stateDecoder{b: data}
	if len(data) < 4 || data[0] != stateVersion {
		return errBadState
	}
	var s TransferState
	s.Op, s.Rollover, s.Netascii = Opcode(data[1]), Rollover(data[2]), data[3]
	d.b = data[4:]
	s.ID = d.uvarint()
	for _, ap := range []*netip.AddrPort{&s.Client, &s.Server} {
		if err := ap.UnmarshalBinary(d.bytes()); err != nil && d.err == nil {
			d.err = err
		}
	}
	s.Filename = string(d.bytes())
	s.Mode = string(d.bytes())
	s.Negotiated.BlockSize = int(d.uvarint())
	s.Negotiated.WindowSize = int(d.uvarint())
	s.Negotiated.Timeout = time.Duration(d.varint())
	s.Negotiated.TSize = d.varint()
	if o := d.bytes(); len(o) > 0 {
		s.Options = append([]byte(nil), o...)
	}
	s.Size = d.varint()
	s.Block = d.uvarint()
	s.Offset = d.varint()
	if ns := d.varint(); ns != 0 {
		s.Started = time.Unix(0, ns)
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = errBadState
	}
	if d.err != nil {
		return fmt.Errorf("%w: %w", errBadState, d.err)
	}
	if s.Op != OpRRQ && s.Op != OpWRQ || s.Rollover > RolloverRefuse || s.Netascii > 2 {
		return errBadState
	}
	*st = s
	return nil
}

type stateDecoder struct {
	b   []byte
	err error
}

func (d *stateDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errBadState
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *stateDecoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errBadState
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *stateDecoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errBadState
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}
