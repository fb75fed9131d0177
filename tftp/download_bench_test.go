package tftp

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"testing/fstest"
)

// BenchmarkDownload: one windowed download of 32 MiB, in process over
// loopback, from a directory (an *os.File: the preadv fast path), from an
// fs.FS in memory (ReadAt), and from a stream (Read only).
//
//	go test -run '^$' -bench Download ./tftp/
func BenchmarkDownload(b *testing.B) {
	const size = 32 << 20
	dir := b.TempDir()
	writePattern(b, dir, "f", size)
	body, err := os.ReadFile(filepath.Join(dir, "f"))
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		cfg  ServerConfig
	}{
		{"file", ServerConfig{Root: dir}},
		{"fromfs", ServerConfig{FS: FromFS(fstest.MapFS{"f": {Data: body}})}},
		{"stream", ServerConfig{FS: ReadFunc(func(FileRequest) (io.Reader, int64, error) {
			return io.MultiReader(bytes.NewReader(body)), size, nil
		})}},
	} {
		b.Run(c.name, func(b *testing.B) {
			srv := startServer(b, c.cfg)
			cl := Client{BlockSize: 1428, WindowSize: 16}
			b.SetBytes(size)
			for b.Loop() {
				if _, err := cl.Get(context.Background(), srv.Addr().String(), "f", io.Discard); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
