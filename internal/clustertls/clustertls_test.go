package clustertls

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func makeNode(t *testing.T, ca, id string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), id)
	if err := NewNode(ca, id, []string{"127.0.0.1", "localhost"}, dir); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestMakeLoadHandshake(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca")
	if err := NewCA(ca); err != nil {
		t.Fatal(err)
	}
	if err := NewCA(ca); !errors.Is(err, ErrExists) {
		t.Fatalf("second NewCA: %v, want ErrExists", err)
	}
	n1 := makeNode(t, ca, "n1")
	for _, f := range []string{filepath.Join(ca, CAKey), filepath.Join(n1, NodeKey)} {
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want 0600", f, fi.Mode(), err)
		}
	}
	id1, err := Load(n1)
	if err != nil || id1.ID != "n1" {
		t.Fatalf("Load: %v %v", id1, err)
	}
	id2, err := Load(makeNode(t, ca, "n2"))
	if err != nil {
		t.Fatal(err)
	}

	ca2 := filepath.Join(t.TempDir(), "ca2")
	if err := NewCA(ca2); err != nil {
		t.Fatal(err)
	}
	other, err := Load(makeNode(t, ca2, "n2"))
	if err != nil {
		t.Fatal(err)
	}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", id1.ServerConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if err := tc.Handshake(); err != nil {
				got <- "refused"
			} else {
				id, _ := ConnID(tc.ConnectionState())
				got <- id
			}
			c.Close()
		}
	}()
	dial := func(cfg *tls.Config) error {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		// TLS 1.3: the server's verdict on the client's certificate
		// arrives with the first read.
		_, err = c.Read(make([]byte, 1))
		if err != nil && !strings.Contains(err.Error(), "EOF") {
			return err
		}
		return nil
	}
	if err := dial(id2.ClientConfig()); err != nil {
		t.Fatalf("member: %v", err)
	}
	if id := <-got; id != "n2" {
		t.Fatalf("peer id %q, want n2", id)
	}
	if err := dial(other.ClientConfig()); err == nil {
		t.Fatal("client of another CA accepted")
	}
	if id := <-got; id != "refused" {
		t.Fatalf("server saw %q, want refused", id)
	}
	if err := dial(&tls.Config{RootCAs: id1.Pool}); err == nil {
		t.Fatal("client without certificate accepted")
	}
	<-got
}

func TestWorldReadableKeyRefused(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca")
	if err := NewCA(ca); err != nil {
		t.Fatal(err)
	}
	n1 := makeNode(t, ca, "n1")
	os.Chmod(filepath.Join(n1, NodeKey), 0o644)
	_, err := Load(n1)
	if !errors.Is(err, ErrKeyPermissions) || !strings.Contains(err.Error(), "0644") {
		t.Fatalf("Load: %v, want ErrKeyPermissions naming the mode", err)
	}
	os.Chmod(filepath.Join(ca, CAKey), 0o640)
	if err := NewNode(ca, "n2", []string{"127.0.0.1"}, filepath.Join(t.TempDir(), "n2")); !errors.Is(err, ErrKeyPermissions) {
		t.Fatalf("NewNode with a group-readable CA key: %v", err)
	}
}

func TestBadNodeID(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca")
	NewCA(ca)
	for _, id := range []string{"", "a b", "x/y", strings.Repeat("a", 129)} {
		if err := NewNode(ca, id, []string{"127.0.0.1"}, t.TempDir()); err == nil {
			t.Errorf("id %q accepted", id)
		}
	}
}
