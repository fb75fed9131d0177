// Command tftpd is a TFTP server (RFC 1350, with the option extensions of
// RFC 2347, 2348, 2349 and 7440) on ioactor's event loops.
//
//	tftpd -root /srv/tftp                      # read-only, 127.0.0.1:6969
//	tftpd -root /srv/tftp -listen 0.0.0.0:69 -allow-write -metrics-listen 127.0.0.1:9169
//	tftpd cert ca -dir ca && tftpd cert node -ca ca -node-id n1 -host 127.0.0.1 -dir n1
//	tftpd -cluster -cluster-tls n1 -node-id n1 -data n1/data ...
//
// It serves -root (the current directory by default) and nothing outside
// it: ".." and symbolic links that leave the root are refused. -map-file
// rewrites the requested names first, with tftpd-hpa's remap rules (see
// tftp.Remap); a rewritten name is confined to the root all the same.
// Uploads are off unless -allow-write; they are written to a temporary
// file and renamed into place only when complete. SIGINT or SIGTERM drains: no new
// transfers, the running ones get -drain-timeout to finish; a second signal
// stops at once.
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
	"net/http"
	"net/http/pprof"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ioactor/ioactor/internal/cli"
	"github.com/ioactor/ioactor/internal/clustertls"
	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tftp"
	"github.com/ioactor/ioactor/tftp/cluster"
)

func main() { cli.Main("tftpd", run) }

type options struct {
	root, listen, metrics        string
	pprof                        bool
	mapFile                      string
	write, overwrite, singlePort bool
	maxBlksize, maxWindow        int
	clamp                        bool
	timeout, minTimeout          time.Duration
	retries, maxTransfers, loops int
	deadline, drain              time.Duration
	maxUpload                    int64
	rollover                     string
	logLevel, logFormat          string
	version                      bool

	cluster                             bool
	nodeID, dataDir, raftAddr, httpAddr string
	join, status                        string
	tlsDir                              string
	insecure, statusOpen                bool
	election                            time.Duration
	vip                                 vipOptions
	listenSet                           bool

	hardening
}

func parse(args []string, stdout, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("tftpd", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: tftpd [flags]\n\nServes the files under -root over TFTP.\n\nFlags:")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.root, "root", ".", "directory to serve; nothing outside it is reachable")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:6969", "UDP address of the server port ([::]:69 for every address)")
	fs.StringVar(&o.mapFile, "map-file", "", "file of name remapping rules, in tftpd-hpa's format (e.g. 'rg \\\\ /' turns backslashes into slashes); names stay confined to -root")
	fs.BoolVar(&o.write, "allow-write", false, "allow uploads (WRQ)")
	fs.BoolVar(&o.overwrite, "allow-overwrite", false, "let uploads replace existing files")
	fs.BoolVar(&o.singlePort, "single-port", false, "answer every transfer from the server port (for NAT and containers)")
	fs.IntVar(&o.maxBlksize, "max-blksize", 0, "largest blksize granted (0: 65464; 1468 suits embedded clients); negative refuses the option")
	fs.BoolVar(&o.clamp, "clamp-blksize", false, "grant no blksize larger than the route's MTU carries unfragmented")
	fs.IntVar(&o.maxWindow, "max-windowsize", 0, "largest windowsize granted (0: 16; at most 1024); negative refuses the option")
	fs.StringVar(&o.rollover, "rollover", "zero", "block number after 65535: zero, one, or refuse (no transfer past 65535 blocks)")
	fs.DurationVar(&o.timeout, "timeout", time.Second, "retransmission timeout, when the client negotiates none (the initial and largest value)")
	fs.DurationVar(&o.minTimeout, "min-timeout", 50*time.Millisecond, "floor of the adaptive retransmission timeout; negative: a fixed -timeout")
	fs.IntVar(&o.retries, "retries", 5, "retransmissions of one packet before a transfer is abandoned")
	fs.DurationVar(&o.deadline, "transfer-deadline", time.Hour, "longest duration of one transfer; negative: none")
	fs.IntVar(&o.maxTransfers, "max-transfers", 4096, "transfers at once; negative: no limit")
	fs.Int64Var(&o.maxUpload, "max-upload-size", 0, "largest upload in bytes (0: no limit)")
	fs.IntVar(&o.loops, "loops", 0, "event loops (0: one per core)")
	fs.StringVar(&o.metrics, "metrics-listen", "", "HTTP address for Prometheus /metrics (empty: off)")
	fs.BoolVar(&o.pprof, "pprof", false, "also serve Go's profiles (net/http/pprof) under /debug/pprof/ on -metrics-listen: heap, CPU, goroutines")
	fs.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "log format: text or json")
	fs.DurationVar(&o.drain, "drain-timeout", 30*time.Second, "on SIGTERM, how long running transfers get to finish")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.BoolVar(&o.cluster, "cluster", false, "run as a member of a replicated cluster: only the raft leader binds -listen, and transfers survive its death")
	fs.StringVar(&o.nodeID, "node-id", "", "cluster: this node's unique, stable name (default: the -raft address)")
	fs.StringVar(&o.dataDir, "data", "", "cluster: directory for the raft log and snapshots (required)")
	fs.StringVar(&o.raftAddr, "raft", "127.0.0.1:7969", "cluster: TCP address of the raft transport")
	fs.StringVar(&o.httpAddr, "cluster-http", "127.0.0.1:8969", "cluster: HTTP address for /join and /status")
	fs.StringVar(&o.join, "join", "", "cluster: the -cluster-http address of any member to join (empty: start a new cluster, or restart from -data)")
	fs.StringVar(&o.tlsDir, "cluster-tls", "", "cluster: directory with ca.crt, node.crt and node.key (tftpd cert node): mutual TLS on -raft and -cluster-http")
	fs.BoolVar(&o.insecure, "cluster-insecure", false, "cluster: run without TLS: anyone who reaches -raft or -cluster-http can join, read the uploads and disrupt the cluster")
	fs.BoolVar(&o.statusOpen, "cluster-status-open", false, "cluster: serve /status to clients without a certificate too (read-only; /join still needs one)")
	fs.DurationVar(&o.election, "election-timeout", 300*time.Millisecond, "cluster: raft's heartbeat and election timeout; the leader lease is half of it (a cut-off leader steps down before another is elected). Longer on a loaded host: a leader that misses its lease under load steps down, and every transfer pauses for the failover")
	fs.StringVar(&o.status, "status", "", "print the cluster status from this -cluster-http address and exit (status 1 when the node is unhealthy)")
	o.vip.register(fs)
	o.hardening.flags(fs)
	if err := cli.Parse(fs, args, stdout, stderr); err != nil {
		return nil, err
	}
	fs.Visit(func(f *flag.Flag) { o.listenSet = o.listenSet || f.Name == "listen" })
	if fs.NArg() > 0 {
		return nil, cli.Usagef(stderr, "tftpd: unexpected arguments %q (tftpd -h lists the flags)", fs.Args())
	}
	return o, nil
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format: %q is neither text nor json", format)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "cert" {
		return runCert(args[1:], stdout, stderr)
	}
	o, err := parse(args, stdout, stderr)
	if err != nil {
		return err
	}
	if o.version {
		fmt.Fprintln(stdout, "tftpd", cli.Version())
		return nil
	}
	if o.status != "" {
		return printStatus(ctx, o.status, o.tlsDir, stdout)
	}
	logger, err := newLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	if err := o.check(o.cluster); err != nil {
		return err
	}
	if o.election < 20*time.Millisecond {
		return cli.Usagef(stderr, "tftpd: -election-timeout %v: at least 20ms", o.election)
	}
	if o.pprof && o.metrics == "" {
		return cli.Usagef(stderr, "tftpd: -pprof needs -metrics-listen")
	}
	logger, flushLog := o.hardening.logger(logger)
	defer flushLog()
	listen, err := netip.ParseAddrPort(o.listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	if listen, err = vipListen(&o.vip, listen, o.listenSet, o.cluster); err != nil {
		return err
	}
	roll, err := tftp.ParseRollover(o.rollover)
	if err != nil {
		return fmt.Errorf("-rollover: %w", err)
	}
	root, err := filepath.Abs(o.root)
	if err != nil {
		return fmt.Errorf("-root: %w", err)
	}
	if !listen.Addr().IsLoopback() {
		logger.Warn("tftpd: serving beyond loopback: TFTP has no authentication; every host that reaches this address can read the root"+
			map[bool]string{true: " and write to it", false: ""}[o.write], "addr", listen.String())
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	sys, err := netio.NewSystem(netio.Config{Loops: o.loops, Logger: logger, Registerer: reg})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sys.Shutdown(sctx)
	}()
	tcfg := tftp.ServerConfig{
		Root: root, AllowWrite: o.write, AllowOverwrite: o.overwrite,
		Listen: listen, SinglePort: o.singlePort,
		MaxBlockSize: o.maxBlksize, ClampBlockSize: o.clamp, MaxWindowSize: o.maxWindow, Rollover: roll,
		Timeout: o.timeout, MinTimeout: o.minTimeout, Retries: retries(o.retries),
		TransferDeadline: o.deadline, MaxTransfers: o.maxTransfers, MaxUploadSize: o.maxUpload,
		Logger: logger, Registerer: reg,
	}
	if o.mapFile != "" {
		// Read before privileges are dropped; a bad rule stops the start.
		rules, err := tftp.LoadRemap(o.mapFile)
		if err != nil {
			return fmt.Errorf("-map-file: %w", err)
		}
		tcfg.Rewrite = rules.Rewrite
		logger.Info("tftpd: remapping file names", "map_file", o.mapFile, "rules", rules.Len())
	}
	o.apply(&tcfg)
	if o.cluster {
		return runCluster(ctx, o, sys, tcfg, reg, logger, stdout)
	}
	srv, err := tftp.NewServer(sys, tcfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "tftpd serving %s on %v\n", root, srv.Addr())

	var httpSrv *http.Server
	httpErr := make(chan error, 1)
	if o.metrics != "" {
		ln, err := net.Listen("tcp", o.metrics)
		if err != nil {
			srv.Close()
			return fmt.Errorf("-metrics-listen: %w", err)
		}
		if ap, err := netip.ParseAddrPort(ln.Addr().String()); err == nil && !ap.Addr().IsLoopback() {
			logger.Warn("tftpd: metrics served beyond loopback", "addr", ln.Addr().String())
		}
		httpSrv = &http.Server{Handler: o.metricsMux(reg), ReadHeaderTimeout: 10 * time.Second}
		fmt.Fprintf(stdout, "tftpd metrics on http://%s/metrics\n", ln.Addr())
		go func() { httpErr <- httpSrv.Serve(ln) }()
	}
	if o.user != "" {
		// The port is bound and the root open: root is no longer needed.
		if err := dropPrivileges(o.user); err != nil {
			srv.Close()
			if httpSrv != nil {
				httpSrv.Close()
			}
			return err
		}
		fmt.Fprintf(stdout, "tftpd running as user %s\n", o.user)
	}

	select {
	case <-ctx.Done():
	case err = <-httpErr:
		err = fmt.Errorf("metrics server: %w", err)
	}
	logger.Info("tftpd: draining", "timeout", o.drain)
	dctx, cancel := context.WithTimeout(context.Background(), o.drain)
	defer cancel()
	if derr := srv.Shutdown(dctx); derr != nil {
		logger.Warn("tftpd: transfers cancelled at the drain deadline", "err", derr)
	}
	if httpSrv != nil {
		hctx, hcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer hcancel()
		httpSrv.Shutdown(hctx)
	}
	logger.Info("tftpd: stopped")
	return err
}

// electionTune sets raft's timers from -election-timeout: heartbeat and
// election d, lease d/2 (nil: Fast's, 300 ms and 150 ms).
func electionTune(d time.Duration) func(*raft.Config) {
	if d == 300*time.Millisecond {
		return nil
	}
	return func(rc *raft.Config) {
		rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout = d, d, d/2
	}
}

// metricsMux serves /metrics and, with -pprof, /debug/pprof/.
func (o *options) metricsMux(reg *prometheus.Registry) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if o.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// runCluster runs a cluster member until ctx ends; a leader hands
// leadership over before it stops.
func runCluster(ctx context.Context, o *options, sys *netio.System, tcfg tftp.ServerConfig, reg *prometheus.Registry, logger *slog.Logger, stdout io.Writer) error {
	if o.dataDir == "" {
		return errors.New("-cluster needs -data")
	}
	tlsCfg, certID, err := clusterTLS(o, logger)
	if err != nil {
		return err
	}
	id := o.nodeID
	if id == "" {
		id = certID
	}
	if id == "" {
		id = o.raftAddr
	}
	if certID != "" && id != certID {
		return fmt.Errorf("-node-id %q: the certificate in %s is node %q's", id, o.tlsDir, certID)
	}
	fsys, err := tftp.NewFS(tftp.FSConfig{Root: tcfg.Root, AllowWrite: tcfg.AllowWrite, AllowOverwrite: tcfg.AllowOverwrite})
	if err != nil {
		return err
	}
	defer fsys.Close()
	tcfg.FS = fsys
	node, err := cluster.StartNode(ctx, cluster.NodeConfig{
		ID: id, DataDir: o.dataDir, RaftAddr: o.raftAddr, HTTPAddr: o.httpAddr, Join: o.join,
		Fast: true, FS: fsys, Logger: logger, TLS: tlsCfg, StatusOpen: o.statusOpen,
		Tune: electionTune(o.election),
	})
	if err != nil {
		return err
	}
	defer node.Close()
	addr, err := newVIP(&o.vip, node, logger, reg)
	if err != nil {
		return err
	}
	scfg := cluster.ServeConfig{TFTP: tcfg, Registerer: reg}
	if addr != nil {
		defer addr.Close()
		scfg.Address = addr
	}
	fmt.Fprintf(stdout, "tftpd cluster node %s: raft %s, status http://%s/status; serving %s on %v while leader\n", id, node.RaftAddr(), node.HTTPAddr(), tcfg.Root, tcfg.Listen)
	var httpSrv *http.Server
	if o.metrics != "" {
		ln, err := net.Listen("tcp", o.metrics)
		if err != nil {
			return fmt.Errorf("-metrics-listen: %w", err)
		}
		httpSrv = &http.Server{Handler: o.metricsMux(reg), ReadHeaderTimeout: 10 * time.Second}
		go httpSrv.Serve(ln)
		defer httpSrv.Close()
	}
	err = cluster.Serve(ctx, sys, node, scfg)
	logger.Info("tftpd: cluster node stopped")
	return err
}

// printStatus prints a cluster node's /status; with tlsDir over https,
// with that node certificate.
func printStatus(ctx context.Context, addr, tlsDir string, stdout io.Writer) error {
	url, client := "http://"+addr+"/status", http.DefaultClient
	if tlsDir != "" {
		ident, err := clustertls.Load(tlsDir)
		if err != nil {
			return fmt.Errorf("-cluster-tls: %w", err)
		}
		tr := &http.Transport{TLSClientConfig: ident.ClientConfig()}
		defer tr.CloseIdleConnections()
		url, client = "https://"+addr+"/status", &http.Client{Transport: tr, Timeout: 10 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("-status: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("-status: %w", err)
	}
	if _, err := stdout.Write(body); err != nil {
		return err
	}
	var st cluster.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("-status: %s answered %s, not a status: %w", addr, resp.Status, err)
	}
	printVIPHolders(ctx, body, strings.TrimSuffix(url, addr+"/status"), client, stdout)
	if !st.Healthy {
		return fmt.Errorf("node %s is unhealthy: %s", st.ID, st.Problem)
	}
	return nil
}

// retries maps the flag, where 0 means none, to the config, where 0 means
// the default.
func retries(n int) int {
	if n == 0 {
		return -1
	}
	return n
}
