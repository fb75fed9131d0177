package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/clustertls"
	"github.com/ioactor/ioactor/internal/testutil"
	iraft "github.com/ioactor/ioactor/raft"
)

// TestClusterRefusesInsecure: tftpd -cluster without -cluster-tls and
// without -cluster-insecure exits non-zero naming both ways out; with
// -cluster-tls pointing at a world-readable key it refuses too; with
// -cluster-insecure it warns.
func TestClusterRefusesInsecure(t *testing.T) {
	bin := buildTftpd(t)
	dir := t.TempDir()
	runTftpd := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		return string(out), err
	}
	base := []string{"-cluster", "-node-id", "n1", "-data", filepath.Join(dir, "data"), "-raft", freeTCP(t), "-cluster-http", freeTCP(t), "-listen", freeUDP(t)}
	out, err := runTftpd(base...)
	if err == nil || !strings.Contains(out, "-cluster-tls DIR") || !strings.Contains(out, "-cluster-insecure") {
		t.Fatalf("without TLS: %v\n%s", err, out)
	}
	t.Logf("without TLS: %s", out)

	ca, certs := filepath.Join(dir, "ca"), filepath.Join(dir, "n1")
	if out, err := runTftpd("cert", "ca", "-dir", ca); err != nil {
		t.Fatalf("cert ca: %v\n%s", err, out)
	}
	if out, err := runTftpd("cert", "node", "-ca", ca, "-node-id", "n1", "-host", "127.0.0.1", "-dir", certs); err != nil {
		t.Fatalf("cert node: %v\n%s", err, out)
	}
	for _, f := range []string{filepath.Join(ca, "ca.key"), filepath.Join(certs, "node.key")} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v, %v; want 0600", f, fi.Mode(), err)
		}
	}
	if out, err := runTftpd("cert", "node", "-ca", ca, "-node-id", "n1", "-host", "127.0.0.1", "-dir", certs); err == nil || !strings.Contains(out, "exists") {
		t.Fatalf("cert node over an existing one: %v\n%s", err, out)
	}
	os.Chmod(filepath.Join(certs, "node.key"), 0o644)
	out, err = runTftpd(append(base, "-cluster-tls", certs)...)
	if err == nil || !strings.Contains(out, "readable by others") || !strings.Contains(out, "0644") {
		t.Fatalf("world-readable key: %v\n%s", err, out)
	}
	t.Logf("world-readable key: %s", out)
	os.Chmod(filepath.Join(certs, "node.key"), 0o600)
	out, err = runTftpd(append(base, "-cluster-tls", certs, "-node-id", "n2")...)
	if err == nil || !strings.Contains(out, `node "n1"`) {
		t.Fatalf("-node-id other than the certificate's: %v\n%s", err, out)
	}
}

// TestClusterInsecureWarns: -cluster-insecure starts, with a warning.
func TestClusterInsecureWarns(t *testing.T) {
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // stop at once: the warning comes before raft starts
	dir := t.TempDir()
	run(ctx, []string{"-cluster", "-cluster-insecure", "-node-id", "n1", "-data", filepath.Join(dir, "data"), "-raft", "127.0.0.1:0", "-cluster-http", "127.0.0.1:0", "-listen", "127.0.0.1:0", "-root", dir}, &stdout, &stderr)
	if !strings.Contains(stderr.String(), "-cluster-insecure: no TLS") {
		t.Fatalf("no warning:\n%s", stderr.String())
	}
}

// otherCA makes a CA of its own and a node certificate "n2" under it, with
// tftpd cert, and returns the node directory.
func otherCA(t *testing.T, bin string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command(bin, "cert", "ca", "-dir", filepath.Join(dir, "ca")).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "cert", "node", "-ca", filepath.Join(dir, "ca"), "-node-id", "n2", "-host", "127.0.0.1", "-dir", filepath.Join(dir, "n2")).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return filepath.Join(dir, "n2")
}

func httpsClient(t *testing.T, cfg *tls.Config) *http.Client {
	tr := &http.Transport{TLSClientConfig: cfg}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func loadTLS(t *testing.T, dir string) *tls.Config {
	t.Helper()
	ident, err := clustertls.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ident.Config()
}

// TestClusterAttacksFail: against three tftpd nodes with certificates made
// by tftpd cert, the attacks of issue 13 fail: rogue joins (no certificate,
// another CA's, a member's certificate joining as someone else or
// rewriting another member's address), a rogue tftpd voter with another
// CA's certificates, a forged RequestVote (a stranger's, and a member's
// claiming another id): the leader, the term and the three voters stay.
func TestClusterAttacksFail(t *testing.T) {
	bin := buildTftpd(t)
	c := startCluster(t, bin, map[string][]byte{"f.bin": []byte("hello")}, false)
	leader := c.waitLeader(10 * time.Second)
	before, err := c.status(leader)
	if err != nil {
		t.Fatal(err)
	}
	var n2, n3 *clusterNode
	for _, n := range c.nodes {
		switch n.id {
		case "n2":
			n2 = n
		case "n3":
			n3 = n
		}
	}
	stranger := otherCA(t, bin)
	url := "https://" + leader.http + "/join"
	post := func(cl *http.Client, body string) (int, error) {
		resp, err := cl.Post(url, "application/json", strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		return resp.StatusCode, nil
	}
	for _, id := range []string{"b1", "b2", "b3"} {
		body := `{"id":"` + id + `","raft_addr":"127.0.0.1:1"}`
		if _, err := post(httpsClient(t, &tls.Config{RootCAs: c.client.Transport.(*http.Transport).TLSClientConfig.RootCAs}), body); err == nil {
			t.Errorf("join %s without a certificate got past the handshake", id)
		}
		if _, err := post(httpsClient(t, loadTLS(t, stranger)), body); err == nil {
			t.Errorf("join %s with another CA's certificate got past the handshake", id)
		}
		if code, err := post(httpsClient(t, loadTLS(t, n2.certs)), body); err != nil || code != http.StatusForbidden {
			t.Errorf("join %s with n2's certificate: %d %v, want 403", id, code, err)
		}
	}
	if code, err := post(httpsClient(t, loadTLS(t, n2.certs)), `{"id":"n3","raft_addr":"127.0.0.1:1"}`); err != nil || code != http.StatusForbidden {
		t.Errorf("n3's address rewritten with n2's certificate: %d %v, want 403", code, err)
	}
	if resp, err := http.Get("http://" + leader.http + "/status"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Error("/status answered plain HTTP")
		}
	}

	// A rogue voter: tftpd with certificates of its own CA.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rogue := exec.CommandContext(ctx, bin, "-cluster", "-cluster-tls", stranger, "-node-id", "n2", "-data", filepath.Join(t.TempDir(), "d"),
		"-raft", freeTCP(t), "-cluster-http", freeTCP(t), "-listen", freeUDP(t), "-root", t.TempDir(), "-join", leader.http)
	if out, err := rogue.CombinedOutput(); err == nil {
		t.Errorf("a rogue tftpd joined:\n%s", out)
	} else {
		t.Logf("rogue tftpd: %v: %s", err, tail(string(out), 300))
	}

	// Forged RequestVotes: a stranger's, and a member's in n2's name.
	for name, cfg := range map[string]*tls.Config{"stranger": loadTLS(t, stranger), "n3 as n2": loadTLS(t, n3.certs)} {
		tr, err := iraft.New(iraft.Config{Timeout: 2 * time.Second, TLS: cfg, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		req := &hraft.RequestVoteRequest{RPCHeader: hraft.RPCHeader{ID: []byte("n2"), Addr: []byte(n2.raft)},
			Term: before.Term + 100, LastLogIndex: 1 << 40, LastLogTerm: before.Term + 99}
		var resp hraft.RequestVoteResponse
		err = tr.RequestVote("x", hraft.ServerAddress(leader.raft), req, &resp)
		tr.Close()
		if err == nil {
			t.Errorf("%s: forged RequestVote answered: %+v", name, resp)
		}
	}
	time.Sleep(time.Second) // a step-down would show by now
	// On a loaded machine raft's 300 ms timers may elect a new leader
	// anyway (an insecure cluster does too); what the forged votes must
	// not do is lend their term to anyone.
	for _, n := range c.nodes {
		after, err := c.status(n)
		if err != nil {
			t.Fatal(err)
		}
		if after.Term >= before.Term+100 || len(after.Voters) != 3 {
			t.Errorf("%s: before %+v, after %+v", n.id, before, after)
		}
		if after.Term != before.Term || after.Leader != before.Leader {
			t.Logf("%s: an election meanwhile (load): term %d → %d, leader %s → %s", n.id, before.Term, after.Term, before.Leader, after.Leader)
		}
	}
	if !strings.Contains(leader.log.String(), "RPC header names another node than the peer's certificate") {
		t.Error("the leader did not log the refused RequestVote")
	}
}

// vmRSS is the resident set of process pid, in bytes.
func vmRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// flood opens n connections to addr and writes head to each; it returns
// them.
func flood(t *testing.T, addr string, n int, head []byte) []net.Conn {
	t.Helper()
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, c)
		if len(head) > 0 {
			c.Write(head)
		}
	}
	return conns
}

// allClosed waits until the server closed every conn, up to d; it returns
// how many it did.
func allClosed(conns []net.Conn, d time.Duration) int {
	deadline := time.Now().Add(d)
	closed := 0
	for _, c := range conns {
		c.SetReadDeadline(deadline)
		if _, err := io.Copy(io.Discard, c); err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			closed++
		}
	}
	return closed
}

// TestClusterStrangersBounded: what a stranger can make a node hold is
// bounded. 1,500 connections to the cluster HTTP endpoint that never finish
// their handshake are closed within the handshake timeout (5 s, plus
// slack), and /status answers members meanwhile; 20 connections to the raft
// port that announce 60 MiB frames grow the node by less than 64 MiB, with
// TLS (refused at the handshake) and without (-cluster-insecure: the frame
// buffers grow with the bytes, and the stalled frames are closed).
func TestClusterStrangersBounded(t *testing.T) {
	bin := buildTftpd(t)
	c := startCluster(t, bin, nil, false)
	leader := c.waitLeader(10 * time.Second)

	start := time.Now()
	slow := flood(t, leader.http, 1500, nil)
	t.Logf("1500 slow connections open in %v", time.Since(start).Round(time.Millisecond))
	for range 3 {
		t0 := time.Now()
		if _, err := c.status(leader); err != nil {
			t.Errorf("/status during the slow connections: %v", err)
		}
		t.Logf("/status answered in %v", time.Since(t0).Round(time.Millisecond))
	}
	if n := allClosed(slow, 5*time.Second+15*time.Second-time.Since(start)); n != len(slow) {
		t.Errorf("%d of %d slow connections closed within 20 s", n, len(slow))
	}
	t.Logf("slow connections closed %v after they opened", time.Since(start).Round(time.Millisecond))

	head := binary.BigEndian.AppendUint32([]byte("ioraft\x00\x01"), 60<<20)
	head = append(head, 1, 1) // AppendEntries, id 1
	head = append(head, make([]byte, 1<<20)...)
	raftFlood := func(name string, pid int, addr string) {
		before := vmRSS(t, pid)
		conns := flood(t, addr, 20, head)
		time.Sleep(500 * time.Millisecond)
		during := vmRSS(t, pid)
		t.Logf("%s: RSS %d MiB before, %d MiB with 20 × 60 MiB announced (+%d MiB)", name, before>>20, during>>20, (during-before)>>20)
		if during-before >= 64<<20 {
			t.Errorf("%s: RSS grew by %d MiB", name, (during-before)>>20)
		}
		t0 := time.Now()
		if n := allClosed(conns, 20*time.Second); n != len(conns) {
			t.Errorf("%s: %d of 20 closed", name, n)
		}
		closed := time.Since(t0) + 500*time.Millisecond
		time.Sleep(time.Second)
		// The heap is free at once; the runtime gives its pages back to
		// the kernel in the background, so RSS falls later.
		t.Logf("%s: all closed within %v of being opened; RSS %d MiB a second later", name, closed.Round(time.Millisecond), vmRSS(t, pid)>>20)
	}
	raftFlood("TLS", leader.cmd.Process.Pid, leader.raft)

	// A node without TLS, alone.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	raftAddr := freeTCP(t)
	log := &testutil.SyncBuffer{}
	cmd := exec.CommandContext(ctx, bin, "-cluster", "-cluster-insecure", "-node-id", "solo", "-data", filepath.Join(t.TempDir(), "d"),
		"-raft", raftAddr, "-cluster-http", freeTCP(t), "-listen", freeUDP(t), "-root", t.TempDir())
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(log.String(), "serving TFTP") {
		if time.Now().After(deadline) {
			t.Fatalf("solo node did not lead:\n%s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	raftFlood("plain", cmd.Process.Pid, raftAddr)
	cancel()
}
