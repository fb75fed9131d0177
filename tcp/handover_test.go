package tcp_test

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/ioactor/ioactor/tcp"
)

func TestHandOverReading(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{})
	if _, err := peer.Write([]byte("before")); err != nil {
		t.Fatal(err)
	}
	if r := expect[tcp.Received](t, p); string(r.Data()) != "before" {
		t.Fatalf("Received %q, want \"before\"", r.Data())
	}
	conn.Tell(tcp.HandOverReading{})
	f := expect[tcp.ReadingHandedOver](t, p).File
	defer f.Close()

	// From now on the file reads, the connection does not, even when asked.
	conn.Tell(tcp.ResumeReading{})
	if _, err := peer.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	if err := f.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(f, buf); err != nil || string(buf) != "after" {
		t.Fatalf("file read %q, %v", buf, err)
	}
	p.quiet(t, 100*time.Millisecond)

	// A read blocks on the runtime's poller and honours its deadline.
	if err := f.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a read of a silent socket past its deadline: %v, want os.ErrDeadlineExceeded", err)
	}

	// The connection still writes.
	conn.Tell(tcp.Write{Data: []byte("reply"), Ack: "ack"})
	if a := p.next(t); a != "ack" {
		t.Fatalf("got %v, want the ack", a)
	}
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "reply" {
		t.Fatalf("peer read %q, %v", buf, err)
	}

	// The peer's FIN is told, and reaches the file's reader.
	peer.Close()
	expect[tcp.FINArrived](t, p)
	if err := f.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if n, err := f.Read(buf); err != io.EOF {
		t.Fatalf("read after the peer closed: %d, %v, want io.EOF", n, err)
	}
	f.Close()
	if _, err := f.Read(buf); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("read after Close: %v, want os.ErrClosed", err)
	}
	// The connection did not read the FIN either: it closes when told.
	conn.Tell(tcp.Close{})
	expect[tcp.Closed](t, p)
}

// Close ends a Read blocked on the File with os.ErrClosed (package raft's
// connections end their readers so).
func TestHandOverReadingCloseEndsARead(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	_, conn := serverConn(t, sys, p, tcp.Register{})
	conn.Tell(tcp.HandOverReading{})
	f := expect[tcp.ReadingHandedOver](t, p).File
	done := make(chan error, 1)
	go func() {
		_, err := f.Read(make([]byte, 16))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond) // (a Read not yet blocked returns the same)
	f.Close()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Fatalf("blocked read after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end the blocked read")
	}
}

// A reset socket ends a handed-over connection even when nobody reads the
// File (the raft dispatcher may be waiting for raft instead).
func TestHandOverReadingResetEndsTheConnection(t *testing.T) {
	sys := newSystem(t)
	p := newProbe(sys)
	peer, conn := serverConn(t, sys, p, tcp.Register{})
	conn.Tell(tcp.HandOverReading{})
	f := expect[tcp.ReadingHandedOver](t, p).File
	defer f.Close()
	peer.(*net.TCPConn).SetLinger(0)
	peer.Close() // RST
	expect[tcp.ErrorClosed](t, p)
}
