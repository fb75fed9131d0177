package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ioactor/ioactor/internal/testutil"

	"github.com/ioactor/ioactor/internal/leakcheck"
)

// TestMain lets the test binary act as the server process: the comparison
// re-executes os.Executable, which here is this binary.
func TestMain(m *testing.M) {
	if os.Getenv(strings.Split(childEnv, "=")[0]) == "1" && len(os.Args) > 1 && os.Args[1] == "serve" {
		if err := run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(2)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestCompareSmall(t *testing.T) {
	leakcheck.Check(t)
	dir := t.TempDir()
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{"-impls", "ioactor-ack,ioactor-pull,gnet,net", "-conns", "1,4", "-sizes", "64", "-pipelines", "1,4",
		"-rounds", "1", "-warmup", "50ms", "-duration", "200ms", "-idle", "50",
		"-json", filepath.Join(dir, "out.json"), "-plot", dir, "-cpuprofile", dir}
	if err := run(ctx, args, nil, &out, &errOut); err != nil {
		t.Fatalf("%v\nstderr:\n%s", err, errOut.String())
	}
	md := out.String()
	for _, want := range []string{"| 4 | 64 B | 4 | ioactor-ack |", "| gnet |", "| net | 50 |"} {
		if !strings.Contains(md, want) {
			t.Errorf("table lacks %q:\n%s", want, md)
		}
	}
	if strings.Contains(md, "failed") {
		t.Errorf("a run failed:\n%s\n%s", md, errOut.String())
	}
	var rep report
	b, err := os.ReadFile(filepath.Join(dir, "out.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Cells) != 16 || len(rep.Idle) != 4 {
		t.Fatalf("%d cells, %d idle; want 16 and 4", len(rep.Cells), len(rep.Idle))
	}
	for _, c := range rep.Cells {
		if c.Median.MsgsPerSec <= 0 || c.Median.CPUUs <= 0 {
			t.Errorf("%s %v: %+v", c.Impl, c.Point, c.Median)
		}
	}
	for _, f := range []string{"throughput.svg", "latency-p99.svg", "cpu-per-message.svg", "ioactor-ack-c4-s64-p4-r1.pprof"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	t.Logf("\n%s", md)
}

func TestServeAnswersStats(t *testing.T) {
	leakcheck.Check(t)
	ch, err := startChild(context.Background(), "net", serverOpts{netBuf: 4096}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	st, err := ch.stats()
	if err != nil || st.Goroutines == 0 {
		t.Errorf("stats: %+v, %v", st, err)
	}
	if _, err := ch.call("bogus"); err == nil {
		t.Error("an unknown command was accepted")
	}
	if err := ch.stop(); err != nil {
		t.Fatal(err)
	}
}

func TestHelpAndVersion(t *testing.T) {
	run := func(ctx context.Context, args []string, stdout, stderr io.Writer) error {
		return run(ctx, args, nil, stdout, stderr)
	}
	testutil.CheckHelp(t, "bench", run, [][]string{{"-h"}, {"serve", "-h"}})
}
