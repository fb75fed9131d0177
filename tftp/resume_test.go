package tftp

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/netio"
)

// TestResumeFindsRealClients stops a server in the middle of a lock-step
// download by a real client and resumes the transfer on a second server
// bound to the same port, from a checkpoint some blocks behind the client
// (as a replicated checkpoint may be). The second server must find the
// client's block by itself, long before the client's own retransmission
// timer (5 s for tftp-hpa) would tell it, and the file must arrive intact.
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
	}
	for _, c := range clients {
		bin := requireTool(t, c.name)
		for _, lag := range []uint64{0, 1, 2, 600} {
			t.Run(fmt.Sprintf("%s/behind-%d", c.name, lag), func(t *testing.T) {
				out := filepath.Join(t.TempDir(), "got")
				pause := resumeDuringDownload(t, dir, lag, func(port string) *exec.Cmd {
					return exec.Command(bin, c.args(port, out)...)
				}, out)
				if got := fileSHA(t, out); got != want {
					t.Fatalf("the file arrived different")
				}
				t.Logf("%s, checkpoint %d blocks behind: pause %v", c.name, lag, pause)
				if pause > 2500*time.Millisecond {
					t.Fatalf("pause %v: the resumed server did not find the client's block (it waited for the client's timer)", pause)
				}
			})
		}
	}
}

// resumeDuringDownload starts a single-port server on dir, starts the
// client, stops the server once the client has a third of the file, and
// resumes the transfer on a new server on the same port from a checkpoint
// lag blocks behind what the first server last saw acknowledged. It waits
// for the client and returns the longest pause in the growth of its file
// after the stop.
func resumeDuringDownload(t *testing.T, dir string, lag uint64, client func(port string) *exec.Cmd, out string) time.Duration {
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
			if b != nil || fi.Size() < size3rd {
				continue
			}
			states, err := a.Transfers(ctx)
			if err != nil || len(states) != 1 {
				t.Fatalf("transfers of the first server: %v %v", states, err)
			}
			a.Close()
			st := states[0]
			st.Block -= min(lag, st.Block-1)
			st.Offset = int64(st.Block) * int64(st.Negotiated.BlockSize)
			cfg.Resume = []TransferState{st}
			if b, err = NewServer(sys, cfg); err != nil {
				t.Fatal(err)
			}
			lastGrow = time.Now()
		}
	}
}

const size3rd = 1 << 20
