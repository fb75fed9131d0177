package tftp_test

import (
	"fmt"
	"io"
	"strings"

	"github.com/ioactor/ioactor/tftp"
)

// A server parses a read request and answers its options.
func ExampleNegotiate() {
	pkt := []byte("\x00\x01boot/kernel\x00octet\x00BLKSIZE\x009000\x00tsize\x000\x00timeout\x00abc\x00")
	req, err := tftp.ParseRequest(pkt)
	if err != nil {
		fmt.Println(err)
		return
	}
	n, oack := tftp.Negotiate(req.Op, req.Options, tftp.Limits{MaxBlockSize: 1468}, 1<<20)
	fmt.Printf("%s %q, block size %d, size %d\n", req.Op, req.Filename, n.BlockSize, n.TSize)
	fmt.Printf("%q\n", tftp.AppendOACK(nil, oack))
	// Output:
	// RRQ "boot/kernel", block size 1468, size 1048576
	// "\x00\x06blksize\x001468\x00tsize\x001048576\x00"
}

// A sender reads netascii DATA payloads of exactly one block each.
func ExampleNewNetasciiReader() {
	r := tftp.NewNetasciiReader(strings.NewReader("one\ntwo\n"))
	block := make([]byte, 4)
	for {
		n, err := io.ReadFull(r, block)
		fmt.Printf("%q\n", block[:n])
		if err != nil {
			break
		}
	}
	// Output:
	// "one\r"
	// "\ntwo"
	// "\r\n"
}
