package cluster

import (
	"context"
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/clustertls"
	"github.com/ioactor/ioactor/internal/leakcheck"
)

// TestStatusOpen: with TLS, /status needs a client certificate unless
// StatusOpen; /join needs one whatever StatusOpen says.
func TestStatusOpen(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	if err := clustertls.NewCA(filepath.Join(dir, "ca")); err != nil {
		t.Fatal(err)
	}
	if err := clustertls.NewNode(filepath.Join(dir, "ca"), "a", []string{"127.0.0.1"}, filepath.Join(dir, "certs")); err != nil {
		t.Fatal(err)
	}
	ident, err := clustertls.Load(filepath.Join(dir, "certs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, open := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		n, err := StartNode(ctx, NodeConfig{ID: "a", DataDir: filepath.Join(dir, "data", map[bool]string{false: "closed", true: "open"}[open]),
			RaftAddr: "127.0.0.1:0", HTTPAddr: "127.0.0.1:0", Fast: true, TLS: ident.Config(), StatusOpen: open})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ident.Pool}} // no certificate
		cl := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		resp, err := cl.Get("https://" + n.HTTPAddr() + "/status")
		if open {
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Errorf("open /status without a certificate: %v %v", resp, err)
			}
		} else if err == nil {
			t.Errorf("closed /status answered without a certificate: %s", resp.Status)
		}
		if resp != nil {
			resp.Body.Close()
		}
		resp, err = cl.Post("https://"+n.HTTPAddr()+"/join", "application/json", strings.NewReader(`{"id":"b","raft_addr":"127.0.0.1:1"}`))
		if err == nil {
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("open=%v: /join without a certificate: %s", open, resp.Status)
			}
			resp.Body.Close()
		}
		tr.CloseIdleConnections()
		if err := n.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
