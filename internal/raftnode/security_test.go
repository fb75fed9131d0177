package raftnode

import (
	"net"
	"strings"
	"testing"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

// TestRaftAddrInUse: a node whose raft address is taken fails to start with
// an error that names the address and the cause, and does not panic (a nil
// *Transport in the raft.Transport interface used to reach Close).
func TestRaftAddrInUse(t *testing.T) {
	leakcheck.Check(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, err = tryStartTestNode(t, t.TempDir(), "n1", ln.Addr().String(), "")
	if err == nil {
		t.Fatal("started on a raft address in use")
	}
	if msg := err.Error(); !strings.Contains(msg, ln.Addr().String()) || !strings.Contains(msg, "address already in use") {
		t.Fatalf("error %q does not name the address and the cause", msg)
	}
}
