package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// BenchmarkClusterThroughput compares a download from a three-node
// cluster's leader with the same download from a single node, with
// tftp-hpa (lock-step, 512-byte blocks: the most packets per byte, so the
// largest share of replication work), in interleaved rounds; it reports the
// median of each and their ratio. Run:
//
//	go test -run '^$' -bench ClusterThroughput -benchtime 1x ./cmd/tftpd/
func BenchmarkClusterThroughput(b *testing.B) {
	bin := buildTftpd(b)
	file := make([]byte, 16<<20)
	rand.Read(file)
	c := startCluster(b, bin, map[string][]byte{"f.bin": file}, false)
	dir := b.TempDir()
	os.WriteFile(filepath.Join(dir, "f.bin"), file, 0o644)
	single := freeUDP(b)
	cmd := exec.Command(bin, "-root", dir, "-listen", single)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	c.waitLeader(20 * time.Second)
	time.Sleep(300 * time.Millisecond)
	rounds := 5
	if s := os.Getenv("CLUSTER_BENCH_ROUNDS"); s != "" {
		fmt.Sscan(s, &rounds)
	}
	mbps := func(addr string) float64 {
		start := time.Now()
		got, _ := download(b, addr, "f.bin", func(int64) bool { return false })
		if !bytes.Equal(got, file) {
			b.Fatal("the file arrived different")
		}
		return float64(len(file)) / time.Since(start).Seconds() / 1e6
	}
	var clustered, alone []float64
	for range rounds {
		clustered = append(clustered, mbps(c.listen))
		alone = append(alone, mbps(single))
	}
	slices.Sort(clustered)
	slices.Sort(alone)
	cm, am := clustered[len(clustered)/2], alone[len(alone)/2]
	b.ReportMetric(cm, "clustered-MB/s")
	b.ReportMetric(am, "single-MB/s")
	b.ReportMetric(cm/am, "ratio")
	fmt.Printf("throughput over %d rounds: clustered %.2f MB/s (%.2f–%.2f), single node %.2f MB/s (%.2f–%.2f): %.2f×\n",
		rounds, cm, clustered[0], clustered[len(clustered)-1], am, alone[0], alone[len(alone)-1], cm/am)
}
