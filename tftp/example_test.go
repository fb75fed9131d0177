package tftp_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tftp"
)

// A server serves a directory on an event loop; a client fetches a file
// from it with options.
func ExampleNewServer() {
	dir, err := os.MkdirTemp("", "tftp-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello, world\n"), 0o644)

	quiet := slog.New(slog.DiscardHandler)
	sys, err := netio.NewSystem(netio.Config{Loops: 1, Logger: quiet})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sys.Shutdown(context.Background())
	srv, err := tftp.NewServer(sys, tftp.ServerConfig{
		Root:   dir,
		Listen: netip.MustParseAddrPort("127.0.0.1:0"), // a free port
		Logger: quiet,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()

	var buf bytes.Buffer
	c := &tftp.Client{BlockSize: 1428, TSize: true}
	stats, err := c.Get(context.Background(), srv.Addr().String(), "/hello.txt", &buf)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(buf.String())
	fmt.Println("blksize", stats.Negotiated.BlockSize, "tsize", stats.Negotiated.TSize)

	_, err = c.Get(context.Background(), srv.Addr().String(), "../etc/passwd", &buf)
	fmt.Println(err)
	// Output:
	// hello, world
	// blksize 1428 tsize 13
	// tftp: error 2 (access violation): access violation: outside the root
}

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
