package raft

import (
	"crypto/tls"
	"io"
	"net"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
)

// tlsStream is a raft.StreamLayer over crypto/tls, as Consul and Nomad
// give raft.NetworkTransport.
type tlsStream struct {
	net.Listener
	cfg *tls.Config
}

func (s *tlsStream) Dial(addr hraft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(string(addr))
	if err != nil {
		return nil, err
	}
	cfg := s.cfg.Clone()
	cfg.ServerName = host
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(addr), cfg)
}

func newTLSNetworkTransport(b *testing.B, id string) hraft.Transport {
	b.Helper()
	cfg := testTLS(b, id)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		b.Fatal(err)
	}
	return hraft.NewNetworkTransport(&tlsStream{Listener: ln, cfg: cfg}, 3, 10*time.Second, io.Discard)
}

func newTLSOurs(b *testing.B, id string) hraft.Transport {
	b.Helper()
	tr, err := New(Config{Logger: quietLog, TLS: testTLS(b, id)})
	if err != nil {
		b.Fatal(err)
	}
	return tr
}

// BenchmarkTLSTransport compares the transport with mutual TLS against
// raft.NetworkTransport over a TLS StreamLayer with the same certificates:
// heartbeat and 4 KiB append round trips, and pipelined 4 KiB appends.
func BenchmarkTLSTransport(b *testing.B) {
	for _, impl := range []struct {
		name string
		make func(*testing.B, string) hraft.Transport
	}{{"ours+TLS", newTLSOurs}, {"NetworkTransport+TLS", newTLSNetworkTransport}} {
		b.Run(impl.name, func(b *testing.B) {
			server, client := impl.make(b, "n2"), impl.make(b, "n1")
			defer server.(io.Closer).Close()
			defer client.(io.Closer).Close()
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					select {
					case rpc := <-server.Consumer():
						req := rpc.Command.(*hraft.AppendEntriesRequest)
						rpc.Respond(&hraft.AppendEntriesResponse{Term: req.Term, LastLog: req.PrevLogEntry + uint64(len(req.Entries)), Success: true}, nil)
					case <-stop:
						return
					}
				}
			}()
			defer func() { close(stop); <-done }()
			target := server.LocalAddr()
			hb := &hraft.AppendEntriesRequest{RPCHeader: hraft.RPCHeader{ID: []byte("n1"), Addr: []byte(client.LocalAddr())}, Term: 1}
			entry := func(i uint64) *hraft.AppendEntriesRequest {
				return &hraft.AppendEntriesRequest{RPCHeader: hraft.RPCHeader{ID: []byte("n1"), Addr: []byte(client.LocalAddr())},
					Term: 1, PrevLogEntry: i, PrevLogTerm: 1, LeaderCommitIndex: i,
					Entries: []*hraft.Log{{Index: i + 1, Term: 1, Type: hraft.LogCommand, Data: make([]byte, 4096)}}}
			}
			b.Run("heartbeat", func(b *testing.B) {
				var resp hraft.AppendEntriesResponse
				for b.Loop() {
					if err := client.AppendEntries("n2", target, hb, &resp); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("append-4KiB", func(b *testing.B) {
				var resp hraft.AppendEntriesResponse
				req := entry(1)
				b.SetBytes(4096)
				for b.Loop() {
					if err := client.AppendEntries("n2", target, req, &resp); err != nil {
						b.Fatal(err)
					}
				}
			})
			b.Run("pipelined-4KiB", func(b *testing.B) {
				p, err := client.AppendEntriesPipeline("n2", target)
				if err != nil {
					b.Fatal(err)
				}
				defer p.Close()
				req := entry(1)
				b.SetBytes(4096)
				got := make(chan struct{})
				n := b.N
				go func() {
					defer close(got)
					for range n {
						f := <-p.Consumer()
						if f.Error() != nil {
							return
						}
					}
				}()
				b.ResetTimer()
				for range n {
					if _, err := p.AppendEntries(req, new(hraft.AppendEntriesResponse)); err != nil {
						b.Fatal(err)
					}
				}
				<-got
			})
		})
	}
}
