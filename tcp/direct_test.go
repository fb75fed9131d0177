package tcp_test

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/ioactor/ioactor/tcp"
)

// waitTry calls TryWrite(b) until it reports want (the connection takes
// commands asynchronously), and returns what it wrote.
func waitTry(t *testing.T, dw *tcp.DirectWriter, b []byte, want bool) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, ok := dw.TryWrite(b)
		if ok == want {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatalf("TryWrite never reported ok=%v", want)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDirectWriter(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	dw := tcp.NewDirectWriter()
	if _, ok := dw.TryWrite([]byte("x")); ok {
		t.Fatal("a detached DirectWriter wrote")
	}
	peer, conn := serverConn(t, sys, p, tcp.Register{Direct: dw})
	if n := waitTry(t, dw, []byte("direct"), true); n != len("direct") {
		t.Fatalf("TryWrite wrote %d bytes of 6", n)
	}
	buf := make([]byte, 6)
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "direct" {
		t.Fatalf("peer read %q, %v", buf, err)
	}

	// While the connection's own write is pending, direct writes wait.
	big := bytes.Repeat([]byte{7}, 32<<20) // more than the kernel buffers
	conn.Tell(tcp.Write{Data: big, Ack: "big"})
	waitTry(t, dw, nil, false) // an empty write only looks
	done := make(chan error, 1)
	go func() {
		got := make([]byte, len(big))
		_, err := io.ReadFull(peer, got)
		if err == nil && !bytes.Equal(got, big) {
			err = io.ErrUnexpectedEOF
		}
		done <- err
	}()
	if a := p.next(t); a != "big" {
		t.Fatalf("got %v, want the ack", a)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n, ok := dw.TryWrite([]byte("after")); !ok || n != 5 {
		t.Fatalf("TryWrite after the ack = %d, %v", n, ok)
	}
	buf = make([]byte, 5)
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "after" {
		t.Fatalf("peer read %q, %v", buf, err)
	}

	// Closing detaches it.
	conn.Tell(tcp.Close{})
	expect[tcp.Closed](t, p)
	if _, ok := dw.TryWrite([]byte("z")); ok {
		t.Fatal("TryWrite wrote to a closed connection")
	}
}
