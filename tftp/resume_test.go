package tftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
	"github.com/ioactor/ioactor/netio"
)

// TestResumeFindsRealClients stops a server in the middle of a lock-step
// download by a real client and resumes the transfer on a second server
// bound to the same port, from a checkpoint some blocks behind the client
// (as a replicated checkpoint may be), or from the transfer's Begin record
// (block 0: no checkpoint committed yet; with options, the OACK is sent
// again, and the client, far past it, ignores it). The second server must
// find the client's block, long before the client's own retransmission
// timer (5 s for tftp-hpa) would tell it, or from the client's first
// retransmitted ACK when it asked options, and the file must arrive
// intact.
func TestResumeFindsRealClients(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	const size = 3 << 20
	want := writePattern(t, dir, "f", size)
	clients := []struct {
		name string
		args func(port, out string) []string
	}{
		{"tftp", func(port, out string) []string {
			return []string{"-l", "-m", "octet", "127.0.0.1", port, "-c", "get", "f", out}
		}},
		{"curl", func(port, out string) []string {
			return []string{"-sS", "--max-time", "60", "-o", out, "tftp://127.0.0.1:" + port + "/f"}
		}},
		{"atftp", func(port, out string) []string {
			return []string{"-g", "-r", "f", "-l", out, "127.0.0.1", port}
		}},
		{"atftp", func(port, out string) []string { // RFC 7440: a wide first window, no probe
			return []string{"--option", "windowsize 16", "-g", "-r", "f", "-l", out, "127.0.0.1", port}
		}},
	}
	for i, c := range clients {
		bin := requireTool(t, c.name)
		if i == len(clients)-1 {
			c.name += "-windowsize-16"
		}
		for _, lag := range []uint64{0, 1, 2, 600, fromBegin} {
			name := fmt.Sprintf("%s/behind-%d", c.name, lag)
			if lag == fromBegin {
				name = c.name + "/from-begin"
			}
			t.Run(name, func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "got")
				pause := resumeDuringDownload(t, dir, "f", lag, func(port string) *exec.Cmd {
					return exec.Command(bin, c.args(port, out)...)
				}, out)
				if got := fileSHA(t, out); got != want {
					t.Fatalf("the file arrived different")
				}
				checkResumePause(t, c.name, lag, pause)
			})
		}
	}
}

// TestResumeNetasciiFindsRealClients is TestResumeFindsRealClients for a
// netascii download: the checkpoint holds the file offset and the
// converter's state, and the resumed server converts its way from there
// to the client's block. The clients convert back; the text must arrive
// exactly as it is on disk.
func TestResumeNetasciiFindsRealClients(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	text := strings.Repeat(netasciiSample, 3<<20/len(netasciiSample))
	writeFile(t, dir, "t.txt", []byte(text))
	clients := []struct {
		name string
		cmd  func(bin, port, out string) *exec.Cmd
	}{
		{"tftp", func(bin, port, out string) *exec.Cmd {
			return exec.Command(bin, "-l", "-m", "netascii", "127.0.0.1", port, "-c", "get", "t.txt", out)
		}},
		{"atftp", func(bin, port, out string) *exec.Cmd {
			cmd := exec.Command(bin, "127.0.0.1", port) // converts only in interactive mode
			cmd.Stdin = strings.NewReader(fmt.Sprintf("mode netascii\nget t.txt %s\nquit\n", out))
			return cmd
		}},
	}
	for _, c := range clients {
		bin := requireTool(t, c.name)
		for _, lag := range []uint64{0, 1, 2, 600, fromBegin} {
			name := fmt.Sprintf("%s/behind-%d", c.name, lag)
			if lag == fromBegin {
				name = c.name + "/from-begin"
			}
			t.Run(name, func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "got")
				pause := resumeDuringDownload(t, dir, "t.txt", lag, func(port string) *exec.Cmd {
					return c.cmd(bin, port, out)
				}, out)
				if got, _ := os.ReadFile(out); string(got) != text {
					t.Fatalf("the text arrived different: %d bytes, want %d", len(got), len(text))
				}
				checkResumePause(t, c.name, lag, pause)
			})
		}
	}
}

// fromBegin, as the lag of resumeDuringDownload, resumes from block 0, as
// from a Begin record.
const fromBegin = ^uint64(0)

func checkResumePause(t *testing.T, client string, lag uint64, pause time.Duration) {
	t.Helper()
	limit, what := 2500*time.Millisecond, "the resumed server did not find the client's block (it waited for the client's timer)"
	if lag == fromBegin {
		// A client that asked options is heard from when its timer
		// fires (5 s for curl and atftp): nothing is sent to it before
		// (sender.quiet).
		limit, what = 8*time.Second, "longer than the client's own timer"
		t.Logf("%s, from the Begin record: pause %v", client, pause)
	} else {
		t.Logf("%s, checkpoint %d blocks behind: pause %v", client, lag, pause)
	}
	if pause > limit {
		t.Fatalf("pause %v: %s", pause, what)
	}
}

// resumeDuringDownload starts a single-port server on dir, starts the
// client, stops the server once the client has a third of the file name,
// and resumes the transfer on a new server on the same port from a
// checkpoint lag blocks behind what the first server last saw
// acknowledged (fromBegin: from block 0). It waits for the client and returns the longest pause in
// the growth of its file after the stop.
func resumeDuringDownload(t *testing.T, dir, name string, lag uint64, client func(port string) *exec.Cmd, out string) time.Duration {
	t.Helper()
	sys, err := netio.NewSystem(netio.Config{Loops: 2, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Shutdown(context.Background())
	cfg := ServerConfig{Root: dir, SinglePort: true, Listen: netip.MustParseAddrPort("127.0.0.1:0"), Logger: testLogger(t)}
	a, err := NewServer(sys, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listen = a.Addr()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := client(fmt.Sprint(a.Addr().Port()))
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		a.Close()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var b *Server
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
		a.Close()
		if b != nil {
			b.Close()
		}
	}()
	var last int64 = -1
	var lastGrow time.Time
	var pause time.Duration
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil || strings.Contains(stderr.String(), "rror") {
				t.Fatalf("client: %v: %s", err, stderr.String())
			}
			if b == nil {
				t.Fatal("the download ended before the server was stopped")
			}
			return pause
		case <-ctx.Done():
			t.Fatal("the download did not end")
		case now := <-tick.C:
			fi, err := os.Stat(out)
			if err != nil {
				continue
			}
			if fi.Size() != last {
				if b != nil && last >= 0 {
					pause = max(pause, now.Sub(lastGrow))
				}
				last, lastGrow = fi.Size(), now
			}
			if b != nil || fi.Size() < 1<<20 {
				continue
			}
			states, err := a.Transfers(ctx)
			if err != nil || len(states) != 1 {
				t.Fatalf("transfers of the first server: %v %v", states, err)
			}
			a.Close()
			st := states[0]
			if lag == fromBegin {
				st.Block = 0
			} else {
				st.Block -= min(lag, st.Block-1)
			}
			st.Offset = int64(st.Block) * int64(st.Negotiated.BlockSize)
			if st.Mode == ModeNetascii {
				// Where block Block ends in the file, and the converter's
				// state there: by converting the file up to it.
				f, err := os.Open(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				walk := newNetasciiSource(f, sourcePos{})
				if _, _, err := walk.skip(st.Block, st.Negotiated.BlockSize); err != nil {
					t.Fatal(err)
				}
				f.Close()
				st.Offset, st.Netascii = walk.pos().Offset, uint8(walk.pos().Enc.owed)
			}
			cfg.Resume = []TransferState{st}
			if b, err = NewServer(sys, cfg); err != nil {
				t.Fatal(err)
			}
			lastGrow = time.Now()
		}
	}
}

// holdReplicator is a Replicator whose replication stalls on demand.
type holdReplicator struct{ stalled atomic.Bool }

func (r *holdReplicator) Begin(TransferState) error { return nil }
func (r *holdReplicator) Progress(TransferState)    {}
func (r *holdReplicator) End(TransferState)         {}
func (r *holdReplicator) Stalled(time.Time) bool    { return r.stalled.Load() }
func (r *holdReplicator) CommitUpload(TransferState, io.Reader) error {
	return errors.New("holdReplicator: no uploads")
}

// TestStalledReplicationHoldsDownloads stalls the replication in the middle
// of a real client's download: the server sends nothing while it is
// stalled (the client's file and the transfer's position stand still),
// then goes on by itself once it is not, without waiting for the client's
// retransmitted ACK (5 s for tftp-hpa), and the file arrives intact.
func TestStalledReplicationHoldsDownloads(t *testing.T) {
	leakcheck.Check(t)
	bin := requireTool(t, "tftp")
	dir := t.TempDir()
	want := writePattern(t, dir, "f", 3<<20)
	rep := &holdReplicator{}
	srv := startServer(t, ServerConfig{Root: dir, SinglePort: true, Replicator: rep})
	out := filepath.Join(t.TempDir(), "got")
	cmd := exec.Command(bin, "-l", "-m", "octet", "127.0.0.1", fmt.Sprint(srv.Addr().Port()), "-c", "get", "f", out)
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
	}()
	size := func() int64 {
		fi, err := os.Stat(out)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	block := func() uint64 {
		st, err := srv.Transfers(context.Background())
		if err != nil || len(st) != 1 {
			t.Fatalf("transfers: %v %v", st, err)
		}
		return st[0].Block
	}
	testutil.WaitFor(t, "a third of the file", func() bool { return size() >= 1<<20 })
	rep.stalled.Store(true)
	time.Sleep(50 * time.Millisecond) // what was on its way arrives
	held, b := size(), block()
	time.Sleep(300 * time.Millisecond)
	if size() != held || block() != b {
		t.Fatalf("while replication stalled the download went on: %d → %d bytes, block %d → %d", held, size(), b, block())
	}
	resumed := time.Now()
	rep.stalled.Store(false)
	testutil.WaitFor(t, "the download to go on", func() bool { return size() > held })
	if d := time.Since(resumed); d > 2*time.Second {
		t.Fatalf("the download went on %v after the stall ended: it waited for the client's timer", d)
	}
	if err := <-done; err != nil || strings.Contains(stderr.String(), "rror") {
		t.Fatalf("client: %v: %s", err, stderr.String())
	}
	if fileSHA(t, out) != want {
		t.Fatal("the file arrived different")
	}
}

// A hold does not outlive the transfer's deadline, nor holdMax: a
// replication stalled for good ends a download at its deadline, or lets it
// go on without replication after holdMax.
func TestHoldEnds(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	want := writePattern(t, dir, "f", 4096)
	rep := &holdReplicator{}
	rep.stalled.Store(true) // from the first packet on
	t.Run("at the deadline", func(t *testing.T) {
		srv := startServer(t, ServerConfig{Root: dir, SinglePort: true, Replicator: rep, TransferDeadline: 300 * time.Millisecond})
		start := time.Now()
		_, err := (&Client{}).Get(context.Background(), srv.Addr().String(), "f", io.Discard)
		if err == nil || time.Since(start) > holdMax {
			t.Fatalf("a download held past its deadline: %v after %v", err, time.Since(start))
		}
		t.Logf("ended after %v: %v", time.Since(start).Round(time.Millisecond), err)
	})
	t.Run("after holdMax", func(t *testing.T) {
		srv := startServer(t, ServerConfig{Root: dir, SinglePort: true, Replicator: rep})
		start := time.Now()
		got, _ := get(t, &Client{}, srv, "f")
		if sha(got) != want || time.Since(start) < holdMax {
			t.Fatalf("after %v: %d bytes, want the file after a hold of %v", time.Since(start), len(got), holdMax)
		}
	})
}
