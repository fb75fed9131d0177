// Command echo-lockstep is the deterministic echo client of
// scripts/echo-callgrind.sh: every connection writes -pipe messages of -size
// bytes in one write and reads them all back, -rounds times, so the server
// sees the same reads and writes whatever the timing.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
)

func main() {
	addr := flag.String("addr", "", "echo server address")
	conns := flag.Int("conns", 64, "connections")
	pipe := flag.Int("pipe", 16, "messages per write")
	size := flag.Int("size", 64, "message size in bytes")
	rounds := flag.Int("rounds", 100, "writes per connection")
	flag.Parse()
	if err := run(*addr, *conns, *pipe, *size, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "echo-lockstep:", err)
		os.Exit(1)
	}
}

func run(addr string, conns, pipe, size, rounds int) error {
	cs := make([]net.Conn, 0, conns)
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		cs = append(cs, c)
	}
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for _, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, in := make([]byte, pipe*size), make([]byte, pipe*size)
			for range rounds {
				if _, err := c.Write(out); err != nil {
					errs <- err
					return
				}
				if _, err := io.ReadFull(c, in); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}
