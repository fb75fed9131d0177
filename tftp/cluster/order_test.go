package cluster

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tftp"
)

// slowBegin holds the one Begin it gets until release is closed, before
// the replicator sees it: a Begin whose goroutine has not queued it yet,
// or whose entry commits slowly.
type slowBegin struct {
	*replicator
	entered  chan struct{}
	release  chan struct{}
	returned chan error
}

func (s *slowBegin) Begin(st tftp.TransferState) error {
	close(s.entered)
	<-s.release
	err := s.replicator.Begin(st)
	s.returned <- err
	return err
}

// A client that ends its transfer with an ERROR while the transfer's
// Begin is still on its way leaves no record: its End goes after the
// Begin, not before it (tftp's beginCall). Ended first, it committed
// before the Begin, and the Begin's record stayed: a next leader resumed
// a transfer nobody waits for.
func TestEndWhileBeginningLeavesNoRecord(t *testing.T) {
	leakcheck.Check(t)
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "f"), make([]byte, 10000), 0o644); err != nil {
		t.Fatal(err)
	}
	n, fsys, r := leadingReplicator(t, root, newServeMetrics(nil))
	rep := &slowBegin{replicator: r, entered: make(chan struct{}), release: make(chan struct{}), returned: make(chan error, 1)}

	sys, err := netio.NewSystem(netio.Config{Loops: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Shutdown(context.Background())
	srv, err := tftp.NewServer(sys, tftp.ServerConfig{FS: fsys, Listen: netip.MustParseAddrPort("127.0.0.1:0"), SinglePort: true, Replicator: rep})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()

	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to := net.UDPAddrFromAddrPort(srv.Addr())
	if _, err := c.WriteToUDP(tftp.AppendRequest(nil, tftp.Request{Op: tftp.OpRRQ, Filename: "f", Mode: tftp.ModeOctet}), to); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rep.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no Begin")
	}
	if _, err := c.WriteToUDP(tftp.AppendError(nil, tftp.ErrUndefined, "changed my mind"), to); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, "the transfer to end", func() bool {
		live, err := srv.Transfers(context.Background())
		return err == nil && len(live) == 0
	})
	// Whatever the transfer asked of the replicator so far commits now,
	// before the Begin is let through.
	if !r.flush(10 * time.Second) {
		t.Fatal("flush timed out")
	}
	close(rep.release)
	if err := <-rep.returned; err != nil {
		t.Fatalf("Begin: %v", err)
	}
	// The End goes once Begin returned to tftp, just after returned.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if !r.flush(10 * time.Second) {
			t.Fatal("flush timed out")
		}
		left := n.Transfers()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the ended transfer's record is left: a next leader would resume it: %+v", left)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
