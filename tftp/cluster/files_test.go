package cluster

import (
	"context"
	"errors"
	"testing"
	"testing/fstest"

	"github.com/ioactor/ioactor/tftp"
)

// A replicated service serves a directory tree only: other Files are
// refused when it starts, not found out at a failover.
func TestServeNeedsFS(t *testing.T) {
	var nilFS *tftp.FS
	for name, files := range map[string]tftp.Files{
		"nil":    nil,
		"nil FS": nilFS,
		"fromfs": tftp.FromFS(fstest.MapFS{}),
	} {
		err := Serve(context.Background(), nil, nil, ServeConfig{TFTP: tftp.ServerConfig{FS: files}})
		if !errors.Is(err, tftp.ErrNotReplicable) {
			t.Errorf("%s: %v, want ErrNotReplicable", name, err)
		}
	}
}
