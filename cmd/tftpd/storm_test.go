package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ioactor/ioactor/tftp"
)

// stormTransfer is what a client saw of one file.
type stormTransfer struct {
	first, last time.Time // first and last block received
	err         error
}

// A boot storm through the cluster survives a SIGKILL of the leader: many
// clients (from one address, so with the per-client limits off) each fetch
// two files lock-step, half at blksize 1468 and half at 512; the leader
// dies while they run. Every client's files arrive byte-identical, and
// the new leader resumes every transfer that was in flight: at least
// those whose client had blocks of before the kill and the last block
// after it (their records were committed before their first block left),
// and at most those plus the ones at an edge (a request just begun, a
// last block received while its end was not committed yet). With
// coalesced checkpoints (one raft entry for every transfer's checkpoint
// waiting), the replication keeps up with all of them.
func TestClusterStormSurvivesLeaderDeath(t *testing.T) {
	clusterStorm(t, 3, func(c *testCluster, leader *clusterNode) int {
		c.kill(leader, syscall.SIGKILL)
		return 1
	})
}

// A boot storm survives leadership moves with the old leader alive: the
// leader stalls (SIGSTOP, as a loaded host stalls a process) until another
// node leads, then goes on (SIGCONT), learns it lost its leadership and
// steps down while its transfers, its begins and its checkpoints are in
// the middle of their work; then the new leader, once it serves, the
// same. Every client's files arrive byte-identical, and the takeovers
// resume every transfer that was in flight.
func TestClusterStormSurvivesLeaderStall(t *testing.T) {
	clusterStorm(t, 30, func(c *testCluster, leader *clusterNode) int {
		const moves = 2
		for i := range moves {
			leader.cmd.Process.Signal(syscall.SIGSTOP)
			var next *clusterNode
			c.waitFor("another leader", func() bool {
				for _, n := range c.nodes {
					if st, err := c.status(n); n != leader && err == nil && st.State == "Leader" {
						next = n
						return true
					}
				}
				return false
			})
			leader.cmd.Process.Signal(syscall.SIGCONT)
			if i < moves-1 {
				c.waitFor("the new leader to serve", func() bool {
					n, err := scrapeCounter(next.metrics, "ioactor_tftp_cluster_resumed_transfers_total")
					return err == nil && n > 0
				})
			}
			leader = next
		}
		return moves
	})
}

// clusterStorm runs a boot storm through a three-node cluster and calls
// disrupt with the leader once 1/part of the bytes arrived: disrupt
// returns once another node leads or is about to, with the number of
// takeovers it caused.
func clusterStorm(t *testing.T, part int64, disrupt func(c *testCluster, leader *clusterNode) int) {
	if testing.Short() {
		t.Skip("starts three processes; not in -short")
	}
	const clients = 200
	bin := buildTftpd(t)
	files := map[string][]byte{"stage1": make([]byte, 40000), "stage2": make([]byte, 1<<20)}
	for _, b := range files {
		rand.Read(b)
	}
	c := startClusterWith(t, bin, files, clusterLayout{
		metrics: func(int) string { return freeTCP(t) },
		extra: func(int) []string {
			return []string{"-max-client-transfers", "0", "-client-rate", "0", "-log-level", "warn"}
		},
	})
	// Let the joins settle: a leader elected a moment ago may still step
	// down once on a loaded machine.
	time.Sleep(2 * time.Second)
	leader := c.waitLeader(20 * time.Second)
	total := int64(clients) * int64(len(files["stage1"])+len(files["stage2"]))
	var got atomic.Int64
	killed := make(chan struct{})
	var once sync.Once
	transfers := make([][2]stormTransfer, clients)
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j, name := range []string{"stage1", "stage2"} {
				tr := &transfers[i][j]
				var prev int64
				cl := tftp.Client{TSize: true, Timeout: 500 * time.Millisecond, Retries: 10, Progress: func(done, _ int64) {
					now := time.Now()
					if tr.first.IsZero() {
						tr.first = now
					}
					tr.last = now
					if got.Add(done-prev) >= total/part {
						once.Do(func() { close(killed) })
					}
					prev = done
				}}
				if i%2 == 0 {
					cl.BlockSize = 1468
				}
				var buf bytes.Buffer
				if _, err := cl.Get(ctx, c.listen, name, &buf); err != nil {
					tr.err = fmt.Errorf("client %d, %s: %w", i, name, err)
					return
				}
				if !bytes.Equal(buf.Bytes(), files[name]) {
					tr.err = fmt.Errorf("client %d, %s: %d bytes and another digest", i, name, buf.Len())
					return
				}
			}
		}()
	}
	ended := make(chan struct{})
	go func() { wg.Wait(); close(ended) }()
	select {
	case <-killed:
	case <-ended:
		for i := range transfers {
			for _, tr := range transfers[i] {
				if tr.err != nil {
					t.Error(tr.err)
				}
			}
		}
		t.Fatal("the storm ended before the kill")
	}
	at, atBytes := time.Now(), got.Load()
	takeovers := disrupt(c, leader)
	<-ended
	for i := range transfers {
		for _, tr := range transfers[i] {
			if tr.err != nil {
				t.Error(tr.err)
			}
		}
	}
	if t.Failed() {
		for _, n := range c.nodes {

			t.Logf("%s, warnings and errors:\n%s", n.id, tail(grepLines(n.log.String(), "level=WARN", "level=ERROR", "resum"), 6000))
		}
		return
	}
	// The transfers in flight at the disruption, as the clients saw them.
	live, edge := 0, 0
	for i := range transfers {
		for _, tr := range transfers[i] {
			switch {
			case tr.first.Before(at) && tr.last.After(at):
				live++
			case tr.first.After(at) && tr.first.Sub(at) < 5*time.Second, tr.last.Before(at) && at.Sub(tr.last) < time.Second:
				edge++
			}
		}
	}
	next := c.waitLeader(20 * time.Second)
	if takeovers > 1 {
		// Every node may have taken over: their takeovers together
		// resumed at least the transfers in flight at the first.
		resumed := 0
		for _, n := range c.nodes {
			r, err := scrapeCounter(n.metrics, "ioactor_tftp_cluster_resumed_transfers_total")
			if err != nil {
				t.Fatal(err)
			}
			resumed += r
		}
		t.Logf("%d clients, leader %s disrupted at %d of %d bytes: %d transfers in flight, %d at an edge, %d resumed in %d takeovers, %s leads",
			clients, leader.id, atBytes, total, live, edge, resumed, takeovers, next.id)
		if resumed < live {
			t.Fatalf("%d transfers resumed over %d takeovers; %d were in flight at the first", resumed, takeovers, live)
		}
		return
	}
	resumed, err := scrapeCounter(next.metrics, "ioactor_tftp_cluster_resumed_transfers_total")
	if err != nil {
		t.Fatal(err)
	}
	terms, err := scrapeCounter(next.metrics, "ioactor_tftp_cluster_leaderships_total")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d clients, leader %s killed at %d of %d bytes: %d transfers in flight, %d at an edge, %d resumed by %s in %d leadership(s)",
		clients, leader.id, atBytes, total, live, edge, resumed, next.id, terms)
	switch {
	case terms == 1 && (resumed < live || resumed > live+edge):
		t.Fatalf("%d transfers resumed; %d were in flight (and %d at an edge)", resumed, live, edge)
	case terms > 1 && resumed < live:
		// The leadership moved again after the takeover (a loaded
		// machine): the counter adds up every takeover's.
		t.Fatalf("%d transfers resumed over %d leaderships; %d were in flight", resumed, terms, live)
	}
}

// scrapeCounter reads one counter from a node's /metrics.
func scrapeCounter(addr, name string) (int, error) {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int(f), err
		}
	}
	return 0, fmt.Errorf("%s: no %s", addr, name)
}
