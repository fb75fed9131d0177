package tftp

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

// lossyProxy relays datagrams between TFTP clients and a server and drops
// and duplicates a share of them in both directions (after quic-go's
// integration-test proxy). Clients talk to the proxy's port; the proxy
// talks to the server from one socket per client, following the server's
// transfer ID, so every reply seems to come from the proxy's port.
type lossyProxy struct {
	ln     *net.UDPConn
	server netip.AddrPort

	mu       sync.Mutex
	rng      *rand.Rand
	drop     float64
	dup      float64
	sessions map[netip.AddrPort]*proxySession
	closed   bool
	wg       sync.WaitGroup

	dropped, duplicated, relayed atomic.Int64
}

type proxySession struct {
	client netip.AddrPort
	up     *net.UDPConn
	tid    atomic.Pointer[netip.AddrPort] // where the client's datagrams go
}

func newLossyProxy(t testing.TB, server netip.AddrPort, drop, dup float64, seed uint64) *lossyProxy {
	t.Helper()
	ln, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	ln.SetReadBuffer(4 << 20)
	p := &lossyProxy{ln: ln, server: server, rng: rand.New(rand.NewPCG(seed, seed)), drop: drop, dup: dup, sessions: map[netip.AddrPort]*proxySession{}}
	p.wg.Add(1)
	go p.fromClients()
	t.Cleanup(p.close)
	return p
}

func (p *lossyProxy) addr() netip.AddrPort { return p.ln.LocalAddr().(*net.UDPAddr).AddrPort() }

// fate decides how many copies of a datagram go on: 0, 1 or 2.
func (p *lossyProxy) fate() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch r := p.rng.Float64(); {
	case r < p.drop:
		p.dropped.Add(1)
		return 0
	case r < p.drop+p.dup:
		p.duplicated.Add(1)
		return 2
	}
	p.relayed.Add(1)
	return 1
}

func (p *lossyProxy) relay(pkt []byte, send func([]byte)) {
	switch p.fate() {
	case 1:
		send(pkt)
	case 2:
		send(pkt)
		// The copy comes a little later, possibly after the next one.
		c := bytes.Clone(pkt)
		time.AfterFunc(time.Duration(rand.IntN(2000))*time.Microsecond, func() { send(c) })
	}
}

func (p *lossyProxy) fromClients() {
	defer p.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := p.ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		s := p.session(from)
		if s == nil {
			return
		}
		p.relay(buf[:n], func(b []byte) { s.up.WriteToUDPAddrPort(b, *s.tid.Load()) })
	}
}

func (p *lossyProxy) session(client netip.AddrPort) *proxySession {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	if s := p.sessions[client]; s != nil {
		return s
	}
	up, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		panic(err)
	}
	up.SetReadBuffer(4 << 20)
	s := &proxySession{client: client, up: up}
	srv := p.server
	s.tid.Store(&srv)
	p.sessions[client] = s
	p.wg.Add(1)
	go p.fromServer(s)
	return s
}

func (p *lossyProxy) fromServer(s *proxySession) {
	defer p.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := s.up.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		s.tid.Store(&from)
		p.relay(buf[:n], func(b []byte) { p.ln.WriteToUDPAddrPort(b, s.client) })
	}
}

func (p *lossyProxy) close() {
	p.mu.Lock()
	p.closed = true
	p.ln.Close()
	for _, s := range p.sessions {
		s.up.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	time.Sleep(3 * time.Millisecond) // late duplicates find closed sockets
}

// TestLossyNetwork runs 20 downloads and 20 uploads at once through a proxy
// that drops and duplicates 5% of the datagrams each way, with assorted
// options; every file arrives byte-identical.
func TestLossyNetwork(t *testing.T) {
	leakcheck.Check(t)
	for _, single := range []bool{false, true} {
		t.Run(fmt.Sprintf("single=%v", single), func(t *testing.T) {
			dir := t.TempDir()
			const n = 20
			sizes := make([]int, n)
			hashes := make([]string, n)
			for i := range n {
				sizes[i] = 100_000 + i*7919
				hashes[i] = writePattern(t, dir, fmt.Sprint("f", i), int64(sizes[i]))
			}
			srv := startServer(t, ServerConfig{
				Root: dir, AllowWrite: true, SinglePort: single,
				Timeout: 200 * time.Millisecond, MinTimeout: 10 * time.Millisecond, Retries: 12,
				// Every client comes from the proxy's address, as from a
				// NAT: no per-client share. FirstRetries stays at its
				// default: the clients' repeated requests make up for it.
				MaxClientTransfers: -1, ClientRate: -1,
			})
			proxy := newLossyProxy(t, srv.Addr(), 0.05, 0.05, 1)
			var wg sync.WaitGroup
			errs := make(chan error, 2*n)
			for i := range n {
				c := &Client{Timeout: 50 * time.Millisecond, Retries: 12, TSize: i%2 == 0}
				switch i % 4 {
				case 1:
					c.BlockSize = 1428
				case 2:
					c.BlockSize, c.WindowSize = 1024, 4
				case 3:
					c.BlockSize, c.WindowSize = 8192, 16
				}
				wg.Add(2)
				go func() {
					defer wg.Done()
					var buf bytes.Buffer
					if _, err := c.Get(context.Background(), proxy.addr().String(), fmt.Sprint("f", i), &buf); err != nil {
						errs <- fmt.Errorf("get %d (%+v): %w", i, *c, err)
					} else if sha(buf.Bytes()) != hashes[i] {
						errs <- fmt.Errorf("get %d: content differs", i)
					}
				}()
				go func() {
					defer wg.Done()
					data := patternBytes(sizes[i])
					if _, err := c.Put(context.Background(), proxy.addr().String(), fmt.Sprint("up", i), bytes.NewReader(data), int64(len(data))); err != nil {
						errs <- fmt.Errorf("put %d (%+v): %w", i, *c, err)
						return
					}
					if got, _ := os.ReadFile(filepath.Join(dir, fmt.Sprint("up", i))); !bytes.Equal(got, data) {
						off := 0
						for off < min(len(got), len(data)) && got[off] == data[off] {
							off++
						}
						errs <- fmt.Errorf("put %d (%+v): content differs: %d bytes, want %d, first difference at %d", i, *c, len(got), len(data), off)
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			t.Logf("proxy: %d relayed, %d dropped, %d duplicated", proxy.relayed.Load(), proxy.dropped.Load(), proxy.duplicated.Load())
			if proxy.dropped.Load() == 0 || proxy.duplicated.Load() == 0 {
				t.Fatal("the proxy neither dropped nor duplicated")
			}
		})
	}
}
