package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/internal/leakcheck"
	"github.com/ioactor/ioactor/internal/testutil"
	"github.com/ioactor/ioactor/tftp"
)

// start runs tftpd with args until the test ends and returns its stdout
// and stderr, once it serves.
func start(t *testing.T, args ...string) (stdout, stderr *testutil.SyncBuffer, stop func() error) {
	t.Helper()
	_, stdout, stderr, stop = testutil.Start(t, run, servingRE, 10*time.Second, args...)
	return stdout, stderr, stop
}

var servingRE = regexp.MustCompile(`serving`)

var addrRE = regexp.MustCompile(`on (\S+)\n`)
var metricsRE = regexp.MustCompile(`metrics on (http://\S+)`)

func TestServeGetPutMetricsDrain(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	content := bytes.Repeat([]byte("0123456789abcdef"), 10000)
	os.WriteFile(filepath.Join(dir, "f.bin"), content, 0o644)
	stdout, stderr, stop := start(t, "-root", dir, "-listen", "127.0.0.1:0", "-allow-write", "-metrics-listen", "127.0.0.1:0", "-log-format", "json", "-loops", "2")
	addr := addrRE.FindStringSubmatch(stdout.String())[1]

	var buf bytes.Buffer
	if _, err := (&tftp.Client{BlockSize: 1428, WindowSize: 8}).Get(context.Background(), addr, "f.bin", &buf); err != nil || !bytes.Equal(buf.Bytes(), content) {
		t.Fatalf("get: %v", err)
	}
	if _, err := (&tftp.Client{}).Put(context.Background(), addr, "up.bin", bytes.NewReader(content), -1); err != nil {
		t.Fatalf("put: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "up.bin")); !bytes.Equal(b, content) {
		t.Fatal("upload differs")
	}

	url := metricsRE.FindStringSubmatch(stdout.String())[1]
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`ioactor_tftp_transfers_total{op="read",result="ok"} 1`,
		`ioactor_tftp_transfers_total{op="write",result="ok"} 1`,
		`ioactor_tftp_bytes_total{op="read"} 160000`,
		"ioactor_tftp_transfer_duration_seconds_bucket",
		"ioactor_udp_datagrams_sent_total",
		"ioactor_loop_messages_total",
		"go_goroutines",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
	// JSON logs, one transfer id per transfer.
	var sawDone bool
	sc := bufio.NewScanner(strings.NewReader(stderr.String()))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "{") {
			t.Fatalf("not JSON: %q", line)
		}
		if strings.Contains(line, "transfer complete") && strings.Contains(line, `"xfer":`) {
			sawDone = true
		}
	}
	if !sawDone || !strings.Contains(stderr.String(), "draining") {
		t.Fatalf("logs: %s", stderr)
	}
	if strings.Contains(stderr.String(), "beyond loopback") {
		t.Fatal("warned about a loopback address")
	}
}

func TestServeCurrentDirectoryByDefault(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "here.txt"), []byte("here"), 0o644)
	t.Chdir(dir)
	stdout, _, _ := start(t, "-listen", "127.0.0.1:0")
	if !strings.Contains(stdout.String(), dir) {
		t.Fatalf("stdout %q does not name %s", stdout, dir)
	}
	addr := addrRE.FindStringSubmatch(stdout.String())[1]
	var buf bytes.Buffer
	if _, err := (&tftp.Client{}).Get(context.Background(), addr, "here.txt", &buf); err != nil || buf.String() != "here" {
		t.Fatalf("get: %v %q", err, buf.String())
	}
	// Read-only by default.
	if _, err := (&tftp.Client{}).Put(context.Background(), addr, "x", strings.NewReader("x"), 1); err == nil {
		t.Fatal("upload accepted without -allow-write")
	}
}

func TestWarnBeyondLoopback(t *testing.T) {
	leakcheck.Check(t)
	_, stderr, stop := start(t, "-root", t.TempDir(), "-listen", "0.0.0.0:0")
	stop()
	if !strings.Contains(stderr.String(), "beyond loopback") {
		t.Fatalf("no warning: %s", stderr)
	}
}

func TestFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"-version"}, &out, &errOut); err != nil || !strings.HasPrefix(out.String(), "tftpd ") {
		t.Fatalf("-version: %v %q", err, out.String())
	}
	for _, args := range [][]string{
		{"-listen", "nonsense"},
		{"-rollover", "sideways"},
		{"-log-level", "chatty"},
		{"-log-format", "xml"},
		{"-root", "/nonexistent/dir", "-listen", "127.0.0.1:0"},
		{"extra"},
		{"-no-such-flag"},
		{"-election-timeout", "5ms", "-listen", "127.0.0.1:0"},
		{"-pprof", "-listen", "127.0.0.1:0"}, // without -metrics-listen
	} {
		if err := run(context.Background(), args, &out, &errOut); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

func TestHelpAndVersion(t *testing.T) {
	testutil.CheckHelp(t, "tftpd", run, [][]string{{"-h"}, {"-help"}, {"cert", "-h"}, {"cert", "node", "-h"}})
}

var statusRE = regexp.MustCompile(`status http://(\S+)/status`)

// A leader whose TFTP port is taken says so, in its log and in -status,
// and is unhealthy (here a single node: it keeps leading and trying).
func TestClusterLeaderThatCannotBindIsUnhealthy(t *testing.T) {
	leakcheck.Check(t)
	squatter, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	match, _, stderr, stop := testutil.Start(t, run, statusRE, 20*time.Second,
		"-cluster", "-cluster-insecure", "-node-id", "n1", "-data", t.TempDir(), "-raft", "127.0.0.1:0", "-cluster-http", "127.0.0.1:0",
		"-root", t.TempDir(), "-listen", squatter.LocalAddr().String())
	defer stop()
	httpAddr := match[1]
	var out bytes.Buffer
	testutil.WaitFor(t, "-status to report the node unhealthy", func() bool {
		out.Reset()
		err = run(context.Background(), []string{"-status", httpAddr}, &out, io.Discard)
		return err != nil && strings.Contains(out.String(), `"healthy": false`)
	})
	if !strings.Contains(err.Error(), "cannot bind the TFTP port") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("-status: %v", err)
	}
	testutil.WaitFor(t, "the log to say why", func() bool {
		return strings.Contains(stderr.String(), "address already in use")
	})
	if strings.Contains(stderr.String(), "system shut down") {
		t.Fatalf("misleading log:\n%s", stderr.String())
	}
	// The port frees: the leader binds and is healthy again.
	squatter.Close()
	testutil.WaitFor(t, "the node to be healthy", func() bool {
		out.Reset()
		return run(context.Background(), []string{"-status", httpAddr}, &out, io.Discard) == nil
	})
}

// The demo checks its TFTP port before it builds anything.
func TestClusterDemoFailsFastOnATakenPort(t *testing.T) {
	squatter, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	_, port, _ := net.SplitHostPort(squatter.LocalAddr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "../../scripts/cluster-demo.sh")
	cmd.Env = append(os.Environ(), "TFTP_PORT="+port)
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil || err == nil || !strings.Contains(string(out), "127.0.0.1:"+port+" is taken") {
		t.Fatalf("cluster-demo.sh with its port taken: %v (context: %v)\n%s", err, ctx.Err(), out)
	}
}

func TestElectionTimeout(t *testing.T) {
	if electionTune(300*time.Millisecond) != nil {
		t.Fatal("the default changes Fast's timers")
	}
	var rc raft.Config
	electionTune(time.Second)(&rc)
	if rc.HeartbeatTimeout != time.Second || rc.ElectionTimeout != time.Second || rc.LeaderLeaseTimeout != 500*time.Millisecond {
		t.Fatalf("%+v", rc)
	}
}

func TestPprof(t *testing.T) {
	leakcheck.Check(t)
	stdout, _, stop := start(t, "-root", t.TempDir(), "-listen", "127.0.0.1:0", "-metrics-listen", "127.0.0.1:0", "-pprof")
	defer stop()
	var m []string
	for deadline := time.Now().Add(10 * time.Second); m == nil; time.Sleep(10 * time.Millisecond) {
		if m = metricsRE.FindStringSubmatch(stdout.String()); m == nil && time.Now().After(deadline) {
			t.Fatalf("no metrics address in %q", stdout)
		}
	}
	resp, err := http.Get(strings.TrimSuffix(m[1], "/metrics") + "/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Contains(b, []byte("heap profile")) {
		t.Fatalf("%s: %.200s", resp.Status, b)
	}
}
