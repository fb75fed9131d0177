package tftp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
)

// positionReplicator records the last position Progress gave for each
// client.
type positionReplicator struct {
	mu   sync.Mutex
	last map[netip.AddrPort]uint64
}

func (r *positionReplicator) Begin(TransferState) error { return nil }
func (r *positionReplicator) End(TransferState)         {}
func (r *positionReplicator) Stalled(time.Time) bool    { return false }
func (r *positionReplicator) CommitUpload(TransferState, io.Reader) error {
	return errors.New("positionReplicator: no uploads")
}

func (r *positionReplicator) Progress(st TransferState) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if st.Block > r.last[st.Client] {
		r.last[st.Client] = st.Block
	}
}

func (r *positionReplicator) position(c netip.AddrPort) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.last[c]
}

// TestStopPositionFollowsTheClient stops a single-port server while many
// lock-step downloads run, so that their DATA sit in the socket's
// per-turn coalescing queue when the stop positions are taken. The
// position each transfer hands over (its last Progress) must never be
// ahead of the block its client acknowledged, and at most one block
// behind what the client received: the next server probes from the
// block after it (xfer.resume), and a block sent (or queued) whose ACK
// never came must not be counted as delivered. Half the clients lose
// their ACKs from some block on, so that a position taken from what was
// sent rather than acknowledged shows.
func TestStopPositionFollowsTheClient(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	writePattern(t, dir, "f", 4<<20)
	rep := &positionReplicator{last: make(map[netip.AddrPort]uint64)}
	srv := startServer(t, ServerConfig{Root: dir, SinglePort: true, Replicator: rep, CheckpointInterval: time.Millisecond, MaxClientTransfers: -1, ClientRate: -1})
	const clients = 40
	type seen struct {
		addr          netip.AddrPort
		recv, acked   uint64
		started, done chan struct{}
		err           error
	}
	cs := make([]*seen, clients)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range cs {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		s := &seen{addr: c.LocalAddr().(*net.UDPAddr).AddrPort(), started: make(chan struct{}), done: make(chan struct{})}
		cs[i] = s
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(s.done)
			defer c.Close()
			srvAddr := net.UDPAddrFromAddrPort(srv.Addr())
			if _, s.err = c.WriteToUDP(AppendRequest(nil, Request{Op: OpRRQ, Filename: "f", Mode: ModeOctet}), srvAddr); s.err != nil {
				return
			}
			buf := make([]byte, 1024)
			ack := make([]byte, 4)
			for {
				// A second of silence after the stop: the server sent
				// what it was going to.
				c.SetReadDeadline(time.Now().Add(time.Second))
				n, err := c.Read(buf)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						select {
						case <-stop:
							return
						default:
							continue
						}
					}
					s.err = err
					return
				}
				if n < 4 || binary.BigEndian.Uint16(buf) != uint16(OpDATA) {
					continue // an ERROR of the stop, say
				}
				b := uint64(binary.BigEndian.Uint16(buf[2:]))
				if b >= 5 && s.recv < 5 {
					close(s.started)
				}
				s.recv = max(s.recv, b)
				if i%2 == 1 && b > uint64(5+i) {
					continue // this client's ACKs are lost from here on
				}
				binary.BigEndian.PutUint16(ack, uint16(OpACK))
				binary.BigEndian.PutUint16(ack[2:], uint16(b))
				if _, err := c.WriteToUDP(ack, srvAddr); err != nil {
					s.err = err
					return
				}
				s.acked = max(s.acked, b)
			}
		}()
	}
	for _, s := range cs {
		select {
		case <-s.started:
		case <-time.After(30 * time.Second):
			t.Fatal("the downloads did not start")
		}
	}
	srv.Close() // in the middle of every download
	close(stop)
	wg.Wait()
	for i, s := range cs {
		if s.err != nil {
			t.Fatalf("client %d: %v", i, s.err)
		}
		p := rep.position(s.addr)
		if p > s.acked || s.recv > p+1 {
			t.Errorf("client %d received up to block %d and acknowledged %d; the stop handed over block %d", i, s.recv, s.acked, p)
		}
		if s.recv >= (4<<20)/512 {
			t.Errorf("client %d finished before the stop; the test shows nothing", i)
		}
	}
}

// standbyReplicator refuses its first two Begins as a server that lost
// its leadership does (ErrStandby), and takes the later ones.
type standbyReplicator struct {
	nopReplicator
	calls chan struct{} // one per Begin
}

func (r *standbyReplicator) Begin(TransferState) error {
	r.calls <- struct{}{}
	if len(r.calls) <= 2 {
		return fmt.Errorf("replicator: not the leader (%w)", ErrStandby)
	}
	return nil
}

// A request whose Begin fails with ErrStandby gets no answer: the client
// asks again, of the server that takes over, instead of failing on an
// ERROR.
func TestStandbyBeginDropsTheRequest(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	writePattern(t, dir, "f", 10000)
	rep := &standbyReplicator{calls: make(chan struct{}, 3)}
	srv := startServer(t, ServerConfig{Root: dir, SinglePort: true, Replicator: rep})
	raw := newRaw(t, "udp4")
	req := rrq("f", OptBlockSize, "1468")
	for i := range 2 {
		raw.send(srv.Addr(), req)
		testutil.WaitFor(t, "the Begin", func() bool { return len(rep.calls) == i+1 })
		testutil.WaitFor(t, "the dropped transfer to end", func() bool {
			live, err := srv.Transfers(context.Background())
			return err == nil && len(live) == 0
		})
	}
	// The third request is served: its OACK is the first datagram the
	// client gets (loopback keeps the order of one socket's datagrams).
	raw.send(srv.Addr(), req)
	if pkt, _ := raw.mustRecv("the OACK"); len(pkt) < 2 || Opcode(pkt[1]) != OpOACK {
		t.Fatalf("the first answer: %q, want the OACK of the third request", pkt)
	}
}
