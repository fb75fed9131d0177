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
// cluster's leader with the same download from a single node in
// single-port mode (the cluster's serving path without replication: the
// cost of replication) and in its default mode (a port per transfer), with
// tftp-hpa (lock-step, 512-byte blocks: the most packets per byte, so the
// largest share of replication work), in interleaved rounds; it reports the
// median of each and the ratios. Run:
//
//	go test -run '^$' -bench ClusterThroughput -benchtime 1x ./cmd/tftpd/
func BenchmarkClusterThroughput(b *testing.B) {
	bin := buildTftpd(b)
	file := make([]byte, 16<<20)
	rand.Read(file)
	c := startCluster(b, bin, map[string][]byte{"f.bin": file}, false)
	dir := b.TempDir()
	os.WriteFile(filepath.Join(dir, "f.bin"), file, 0o644)
	startSingle := func(args ...string) string {
		addr := freeUDP(b)
		cmd := exec.Command(bin, append([]string{"-root", dir, "-listen", addr}, args...)...)
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return addr
	}
	singlePort, perTransfer := startSingle("-single-port"), startSingle()
	c.waitLeader(20 * time.Second)
	time.Sleep(300 * time.Millisecond)
	rounds := 5
	if s := os.Getenv("CLUSTER_BENCH_ROUNDS"); s != "" {
		fmt.Sscan(s, &rounds)
	}
	mbps := func(addr string) float64 {
		start := time.Now()
		got, _ := download(b, addr, "f.bin", "octet", func(int64) bool { return false })
		if !bytes.Equal(got, file) {
			b.Fatal("the file arrived different")
		}
		return float64(len(file)) / time.Since(start).Seconds() / 1e6
	}
	var clustered, single, multi []float64
	for range rounds {
		clustered = append(clustered, mbps(c.listen))
		single = append(single, mbps(singlePort))
		multi = append(multi, mbps(perTransfer))
	}
	median := func(v []float64) float64 {
		slices.Sort(v)
		return v[len(v)/2]
	}
	cm, sm, mm := median(clustered), median(single), median(multi)
	b.ReportMetric(cm, "clustered-MB/s")
	b.ReportMetric(sm, "single-port-MB/s")
	b.ReportMetric(mm, "port-per-transfer-MB/s")
	b.ReportMetric(cm/sm, "ratio")
	fmt.Printf("throughput over %d rounds (median, range): clustered %.2f MB/s (%.2f–%.2f); single node, single-port %.2f MB/s (%.2f–%.2f): %.2f×; single node, port per transfer %.2f MB/s (%.2f–%.2f): %.2f×\n",
		rounds, cm, clustered[0], clustered[len(clustered)-1], sm, single[0], single[len(single)-1], cm/sm, mm, multi[0], multi[len(multi)-1], cm/mm)
}
