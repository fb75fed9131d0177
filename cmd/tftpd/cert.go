package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/ioactor/ioactor/internal/cli"
	"github.com/ioactor/ioactor/internal/clustertls"
)

const certUsage = `usage:
  tftpd cert ca -dir CA
      writes a new cluster CA: CA/ca.crt and CA/ca.key (0600)
  tftpd cert node -ca CA -node-id ID -host 127.0.0.1[,HOST...] -dir DIR
      writes DIR/ca.crt, DIR/node.crt (the node id and hosts bound in) and DIR/node.key (0600);
      a node takes them with -cluster-tls DIR
`

// runCert is "tftpd cert ca|node": the certificates of a cluster.
func runCert(args []string, stdout, stderr io.Writer) error {
	switch {
	case len(args) == 0:
		return cli.Usagef(stderr, "tftpd cert: ca or node?\n%s", certUsage)
	case cli.IsHelp(args[0]):
		fmt.Fprint(stdout, certUsage)
		return nil
	}
	fs := flag.NewFlagSet("tftpd cert "+args[0], flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(fs.Output(), certUsage) }
	dir := fs.String("dir", "", "directory to write to (created 0700 if missing)")
	switch args[0] {
	case "ca":
		if err := cli.Parse(fs, args[1:], stdout, stderr); err != nil {
			return err
		}
		if *dir == "" || fs.NArg() > 0 {
			return cli.Usagef(stderr, "tftpd cert ca: -dir is required and nothing else\n%s", certUsage)
		}
		if err := clustertls.NewCA(*dir); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s and %s\n", filepath.Join(*dir, clustertls.CACert), filepath.Join(*dir, clustertls.CAKey))
		return nil
	case "node":
		ca := fs.String("ca", "", "the CA directory (tftpd cert ca -dir)")
		id := fs.String("node-id", "", "the node's -node-id, bound into the certificate")
		hosts := fs.String("host", "", "comma-separated IP addresses and DNS names the node is reached at")
		if err := cli.Parse(fs, args[1:], stdout, stderr); err != nil {
			return err
		}
		if *dir == "" || *ca == "" || *id == "" || *hosts == "" || fs.NArg() > 0 {
			return cli.Usagef(stderr, "tftpd cert node: -ca, -node-id, -host and -dir are required\n%s", certUsage)
		}
		if err := clustertls.NewNode(*ca, *id, strings.Split(*hosts, ","), *dir); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s, %s and %s for node %s\n", filepath.Join(*dir, clustertls.CACert),
			filepath.Join(*dir, clustertls.NodeCert), filepath.Join(*dir, clustertls.NodeKey), *id)
		return nil
	}
	return cli.Usagef(stderr, "tftpd cert: unknown command %q (ca or node)\n%s", args[0], certUsage)
}

// errInsecure is the refusal of a cluster node with neither -cluster-tls
// nor -cluster-insecure.
var errInsecure = errors.New("-cluster needs -cluster-tls DIR (certificates made with `tftpd cert ca` and `tftpd cert node`), " +
	"or -cluster-insecure to run without authentication: then anyone who reaches -raft or -cluster-http can join the cluster, read every upload and disrupt it")

// clusterTLS loads -cluster-tls, or warns about -cluster-insecure; it
// returns the node's TLS config (nil when insecure) and the node id of its
// certificate.
func clusterTLS(o *options, logger *slog.Logger) (*tls.Config, string, error) {
	switch {
	case o.tlsDir != "" && o.insecure:
		return nil, "", errors.New("-cluster-tls and -cluster-insecure exclude each other")
	case o.insecure:
		if o.statusOpen {
			return nil, "", errors.New("-cluster-status-open needs -cluster-tls")
		}
		logger.Warn("tftpd: -cluster-insecure: no TLS on -raft and -cluster-http; anyone who reaches them can join the cluster, read every upload and disrupt it",
			"raft", o.raftAddr, "cluster-http", o.httpAddr)
		return nil, "", nil
	case o.tlsDir == "":
		return nil, "", errInsecure
	}
	ident, err := clustertls.Load(o.tlsDir)
	if err != nil {
		return nil, "", fmt.Errorf("-cluster-tls: %w", err)
	}
	return ident.Config(), ident.ID, nil
}
