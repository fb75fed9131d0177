package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ioactor/ioactor/internal/cli"
)

func main() { cli.Main("raftkv", run) }

const usage = `usage:
  raftkv node    -id ID -data DIR -raft IP:PORT -http IP:PORT [-join HTTP-ADDR]
  raftkv cluster [-n 3] -data DIR
  raftkv load    -nodes HTTP1,HTTP2,... [-users 100] [-ramp 20s] [-duration 30s] [-writes 0.5]
  raftkv -version`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return cli.Usagef(stderr, "%s", usage)
	}
	switch args[0] {
	case "node":
		return runNode(ctx, args[1:], stdout, stderr)
	case "cluster":
		return runCluster(ctx, args[1:], stdout, stderr)
	case "load":
		return runLoad(ctx, args[1:], stdout, stderr)
	case "-version", "--version", "version":
		fmt.Fprintln(stdout, "raftkv", cli.Version())
		return nil
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	if cli.IsHelp(args[0]) {
		fmt.Fprintln(stdout, usage)
		return nil
	}
	return cli.Usagef(stderr, "raftkv: unknown command %q\n%s", args[0], usage)
}

// nodeFlags are the flags node and cluster share.
type nodeFlags struct {
	heartbeat   time.Duration
	snapshot    uint64
	reqTimeout  time.Duration
	drain       time.Duration
	verbose     bool
	raftTimeout time.Duration
}

func (nf *nodeFlags) register(fs *flag.FlagSet) {
	fs.DurationVar(&nf.heartbeat, "heartbeat", 500*time.Millisecond, "raft heartbeat and election timeout")
	fs.Uint64Var(&nf.snapshot, "snapshot-threshold", 8192, "log entries between snapshots")
	fs.DurationVar(&nf.reqTimeout, "request-timeout", 5*time.Second, "bound on a forward to the leader")
	fs.DurationVar(&nf.raftTimeout, "raft-timeout", 2*time.Second, "bound on a raft RPC")
	fs.DurationVar(&nf.drain, "drain-timeout", 5*time.Second, "on SIGTERM, time for requests in progress to finish")
	fs.BoolVar(&nf.verbose, "v", false, "log at info level")
}

func (nf *nodeFlags) logger(stderr io.Writer) *slog.Logger {
	level := slog.LevelWarn
	if nf.verbose {
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}

func (nf *nodeFlags) config() Config {
	return Config{HeartbeatTimeout: nf.heartbeat, SnapshotThreshold: nf.snapshot, RequestTimeout: nf.reqTimeout, RaftTimeout: nf.raftTimeout}
}

// newRegistry is a node's metrics registry, with the Go and process
// collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func runNode(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	id := fs.String("id", "", "node ID, unique and stable across restarts (required)")
	data := fs.String("data", "", "data directory (required)")
	raftAddr := fs.String("raft", "127.0.0.1:7000", "raft transport address (numeric ip:port)")
	httpAddr := fs.String("http", "127.0.0.1:8000", "HTTP API address")
	join := fs.String("join", "", "HTTP address of a member to join through (new node only)")
	var nf nodeFlags
	nf.register(fs)
	if err := cli.Parse(fs, args, stdout, stderr); err != nil {
		return err
	}
	if *id == "" || *data == "" {
		return errors.New("node: -id and -data are required")
	}
	log := nf.logger(stderr)
	for _, a := range []string{*raftAddr, *httpAddr} {
		if ap, err := netip.ParseAddrPort(a); err == nil && !ap.Addr().IsLoopback() {
			log.Warn("listening beyond loopback: the API and the raft transport have no authentication and no TLS", "addr", a)
		}
	}
	cfg := nf.config()
	cfg.ID, cfg.DataDir, cfg.RaftAddr, cfg.HTTPAddr, cfg.Join = *id, *data, *raftAddr, *httpAddr, *join
	cfg.Registry, cfg.Logger = newRegistry(), log
	n, err := Start(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "raftkv node %s: http %s raft %s data %s\n", cfg.ID, n.HTTPAddr(), n.RaftAddr(), cfg.DataDir)
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), nf.drain)
	defer cancel()
	return n.Shutdown(sctx)
}

// clusterMember is one node of `raftkv cluster`, as remembered in
// DIR/cluster.json so that a restart finds its peers on the same ports.
type clusterMember struct {
	ID   string `json:"id"`
	Raft string `json:"raft"`
	HTTP string `json:"http"`
}

func runCluster(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	size := fs.Int("n", 3, "number of nodes")
	data := fs.String("data", "", "data directory: one subdirectory per node (required)")
	var nf nodeFlags
	nf.register(fs)
	if err := cli.Parse(fs, args, stdout, stderr); err != nil {
		return err
	}
	if *data == "" || *size < 1 {
		return errors.New("cluster: -data is required and -n must be positive")
	}
	log := nf.logger(stderr)
	members, err := clusterLayout(*data, *size)
	if err != nil {
		return err
	}
	var boot []raft.Server
	for _, m := range members {
		boot = append(boot, raft.Server{ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.Raft)})
	}
	nodes := make([]*Node, 0, len(members))
	closeAll := func() error {
		sctx, cancel := context.WithTimeout(context.Background(), nf.drain)
		defer cancel()
		// The whole cluster stops: no handover, drain every node first.
		errs := make([]error, len(nodes))
		var wg sync.WaitGroup
		for i, n := range nodes {
			wg.Go(func() { errs[i] = n.Drain(sctx) })
		}
		wg.Wait()
		for i, n := range nodes {
			errs[i] = errors.Join(errs[i], n.Close())
		}
		return errors.Join(errs...)
	}
	for _, m := range members {
		cfg := nf.config()
		cfg.ID, cfg.DataDir, cfg.RaftAddr, cfg.HTTPAddr = m.ID, filepath.Join(*data, m.ID), m.Raft, m.HTTP
		cfg.Bootstrap, cfg.Registry, cfg.Logger = boot, newRegistry(), log
		n, err := Start(ctx, cfg)
		if err != nil {
			return errors.Join(err, closeAll())
		}
		nodes = append(nodes, n)
	}
	// Wait until a leader is elected and every node's address is known.
	leader, err := waitClusterReady(ctx, nodes, 30*time.Second)
	if err != nil {
		return errors.Join(err, closeAll())
	}
	fmt.Fprintf(stdout, "raftkv cluster: %d nodes, leader %s\n", len(nodes), leader)
	addrs := make([]string, len(nodes))
	for i, n := range nodes {
		addrs[i] = n.HTTPAddr()
		fmt.Fprintf(stdout, "  %s http://%s (raft %s, data %s)\n", n.cfg.ID, n.HTTPAddr(), n.RaftAddr(), n.cfg.DataDir)
	}
	fmt.Fprintf(stdout, "nodes: %s\n", strings.Join(addrs, ","))
	<-ctx.Done()
	return closeAll()
}

// waitClusterReady waits until one node leads and knows every node's
// HTTP address; it returns the leader's ID.
func waitClusterReady(ctx context.Context, nodes []*Node, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		for _, n := range nodes {
			if !n.IsLeader() {
				continue
			}
			ms := n.fsm.memberList()
			ready := true
			for _, o := range nodes {
				ready = ready && ms[o.cfg.ID] == o.HTTPAddr()
			}
			if ready {
				return n.cfg.ID, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("cluster: not ready after %v", timeout)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// clusterLayout returns the members of a cluster in dir: those recorded
// in dir/cluster.json or, the first time, n new ones on free loopback
// ports, recorded there.
func clusterLayout(dir string, n int) ([]clusterMember, error) {
	path := filepath.Join(dir, "cluster.json")
	if b, err := os.ReadFile(path); err == nil {
		var ms []clusterMember
		if err := json.Unmarshal(b, &ms); err != nil {
			return nil, fmt.Errorf("cluster: %s: %w", path, err)
		}
		if len(ms) != n {
			return nil, fmt.Errorf("cluster: %s has %d nodes, not %d", path, len(ms), n)
		}
		return ms, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	ms := make([]clusterMember, n)
	for i := range ms {
		ms[i] = clusterMember{ID: fmt.Sprintf("n%d", i+1), Raft: ports[2*i], HTTP: ports[2*i+1]}
	}
	b, _ := json.MarshalIndent(ms, "", "  ")
	if err := os.WriteFile(path, b, 0o640); err != nil {
		return nil, fmt.Errorf("cluster: %w", err)
	}
	return ms, nil
}

// freePorts picks k free loopback ports (the kernel's choice; another
// process could take one before we bind it, a risk accepted for a demo).
func freePorts(k int) ([]string, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var out []string
	for range k {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().String())
	}
	return out, nil
}
