//go:build unix

package tftp

import (
	"errors"
	"path/filepath"
	"syscall"
	"testing"
)

func TestFSOpenFIFO(t *testing.T) {
	root := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	fsys := newFS(t, FSConfig{Root: root})
	// Without O_NONBLOCK, this Open would block until a writer appears.
	if _, _, err := fsys.Open("fifo"); !errors.Is(err, ErrNotRegular) {
		t.Fatalf("Open(fifo) error = %v, want ErrNotRegular", err)
	}
}
