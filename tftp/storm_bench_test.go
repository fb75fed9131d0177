package tftp

import (
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
)

// BenchmarkStormSinglePort: many lock-step downloads at once from one
// single-port server, in process (client and server share the machine;
// allocs/op counts both). The side-by-side storm against other servers is
// BenchmarkStorm in bench/.
//
//	go test -run '^$' -bench StormSinglePort -benchmem ./tftp/
func BenchmarkStormSinglePort(b *testing.B) {
	const size = 256 << 10
	dir := b.TempDir()
	writePattern(b, dir, "f", size)
	for _, clients := range []int{16, 128} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			srv := startServer(b, ServerConfig{Root: dir, SinglePort: true, MaxClientTransfers: -1, ClientRate: -1})
			b.SetBytes(int64(clients) * size)
			b.ReportAllocs()
			blocks := 0
			for b.Loop() {
				var wg sync.WaitGroup
				for i := range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						c := Client{}
						if i%2 == 0 {
							c.BlockSize = 1468
						}
						if _, err := c.Get(context.Background(), srv.Addr().String(), "f", io.Discard); err != nil {
							b.Error(err)
						}
					}()
				}
				wg.Wait()
				blocks += clients/2*(size/512+1) + clients/2*(size/1468+1)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(blocks), "ns/block")
		})
	}
}
