package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// IdleConns are connections held open with no traffic, to measure what a
// server spends on a connection at rest.
type IdleConns struct {
	conns []net.Conn
}

// OpenIdle opens n connections to addr with a few dialers in parallel, echoes
// one message of size bytes on each (so the server has set up everything a
// served connection costs: buffers, goroutine stacks, handler actors), and
// leaves them open and quiet. The caller must Close them, also on error.
func OpenIdle(ctx context.Context, addr string, n, size int) (*IdleConns, error) {
	if size <= 0 {
		size = 64
	}
	ic := &IdleConns{conns: make([]net.Conn, n)}
	const dialers = 8
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	next := make(chan int)
	for range dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg, buf := make([]byte, size), make([]byte, size)
			d := net.Dialer{Timeout: 10 * time.Second}
			for i := range next {
				c, err := d.DialContext(ctx, "tcp", addr)
				if err == nil {
					ic.conns[i] = c
					c.SetDeadline(time.Now().Add(10 * time.Second))
					if _, err = c.Write(msg); err == nil {
						_, err = io.ReadFull(c, buf)
					}
					c.SetDeadline(time.Time{})
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("loadgen: idle connection %d to %s: %w", i, addr, err)
					}
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		next <- i
	}
	close(next)
	wg.Wait()
	return ic, errors.Join(first, ctx.Err())
}

// Len is the number of connections open.
func (ic *IdleConns) Len() int {
	n := 0
	for _, c := range ic.conns {
		if c != nil {
			n++
		}
	}
	return n
}

// Close closes every connection.
func (ic *IdleConns) Close() {
	for i, c := range ic.conns {
		if c != nil {
			c.Close()
			ic.conns[i] = nil
		}
	}
}
