package bench

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	hraft "github.com/hashicorp/raft"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tftp"
	"github.com/ioactor/ioactor/tftp/cluster"
)

// idleNodeEnv, set in the environment of this test binary, makes it a
// cluster node for BenchmarkIdleCluster instead of running tests: the
// variable holds the node's arguments, one per line (see runIdleNode).
const idleNodeEnv = "IOACTOR_BENCH_IDLE_NODE"

func TestMain(m *testing.M) {
	if args := os.Getenv(idleNodeEnv); args != "" {
		if err := runIdleNode(strings.Split(args, "\n")); err != nil {
			fmt.Fprintln(os.Stderr, "idle node:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runIdleNode runs one replicated TFTP node as `tftpd -cluster` does
// (cluster.StartNode with Fast timers, then cluster.Serve on a default
// netio.System) until SIGINT or SIGTERM, on the raft transport -transport
// names: "ioactor" (this module's, the default of tftp/cluster) or "net"
// (raft's NetworkTransport, as the micro-benchmarks configure it). With
// -pprof it serves net/http/pprof there (CPU profiles, runtime traces).
func runIdleNode(args []string) error {
	fs := flag.NewFlagSet("idle-node", flag.ContinueOnError)
	id := fs.String("node-id", "", "")
	data := fs.String("data", "", "")
	raftAddr := fs.String("raft", "", "")
	httpAddr := fs.String("cluster-http", "", "")
	root := fs.String("root", "", "")
	listen := fs.String("listen", "", "")
	join := fs.String("join", "", "")
	transport := fs.String("transport", "ioactor", "")
	pprofAddr := fs.String("pprof", "", "")
	commitTimeout := fs.Duration("commit-timeout", 0, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var newTransport func(bind string) (hraft.Transport, error)
	switch *transport {
	case "ioactor":
	case "net":
		newTransport = func(bind string) (hraft.Transport, error) {
			return hraft.NewTCPTransportWithConfig(bind, nil, &hraft.NetworkTransportConfig{
				MaxPool: 3, Timeout: 2 * time.Second, Logger: hclog.NewNullLogger()})
		}
	default:
		return fmt.Errorf("-transport %q: ioactor or net", *transport)
	}
	if *pprofAddr != "" {
		ln, err := net.Listen("tcp", *pprofAddr)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go srv.Serve(ln)
		defer srv.Close()
	}
	lap, err := netip.ParseAddrPort(*listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	sys, err := netio.NewSystem(netio.Config{Logger: logger})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sys.Shutdown(sctx)
	}()
	fsys, err := tftp.NewFS(tftp.FSConfig{Root: *root})
	if err != nil {
		return err
	}
	defer fsys.Close()
	node, err := cluster.StartNode(ctx, cluster.NodeConfig{
		ID: *id, DataDir: *data, RaftAddr: *raftAddr, HTTPAddr: *httpAddr, Join: *join,
		Fast: true, FS: fsys, Logger: logger, NewTransport: newTransport,
		Tune: func(rc *hraft.Config) {
			if *commitTimeout > 0 {
				rc.CommitTimeout = *commitTimeout
			}
		},
	})
	if err != nil {
		return err
	}
	defer node.Close()
	return cluster.Serve(ctx, sys, node, cluster.ServeConfig{TFTP: tftp.ServerConfig{Root: *root, Listen: lap, FS: fsys, Logger: logger}})
}
