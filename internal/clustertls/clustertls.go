// Package clustertls makes and loads the certificates that the members of a
// cluster authenticate each other with: a cluster CA, and per node a
// certificate that binds the node's id (a URI SAN "urn:ioactor:node:ID", and
// the Subject CN) and the hosts it is reached at (IP and DNS SANs), signed by
// that CA. Keys are ECDSA P-256, written 0600; a key file that anyone but
// its owner may read is refused on load ([ErrKeyPermissions]).
//
// A node's directory holds ca.crt, node.crt and node.key. [Load] turns it
// into an [Identity] whose ServerConfig and ClientConfig require and verify
// the peer's certificate against ca.crt (TLS 1.3 only), and [PeerID] reads
// the node id out of a verified peer certificate.
package clustertls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names in a CA directory and in a node directory.
const (
	CACert   = "ca.crt"
	CAKey    = "ca.key"
	NodeCert = "node.crt"
	NodeKey  = "node.key"
)

// uriPrefix starts the URI SAN that carries a node id.
const uriPrefix = "urn:ioactor:node:"

var (
	// ErrKeyPermissions: a private key file is readable by its group or
	// by others.
	ErrKeyPermissions = errors.New("clustertls: private key readable by others")
	// ErrNoNodeID: a certificate carries no node id.
	ErrNoNodeID = errors.New("clustertls: certificate carries no node id")
	// ErrExists: a file to be written exists already.
	ErrExists = errors.New("clustertls: file exists; refusing to overwrite")
)

// Validity of what NewCA and NewNode make.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	nodeValidity = 2 * 365 * 24 * time.Hour
)

// NewCA writes a new cluster CA to dir (created 0700 if missing):
// ca.crt and ca.key. It refuses to overwrite either.
func NewCA(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("clustertls: generate key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "ioactor cluster CA", Organization: []string{"ioactor"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("clustertls: create CA certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("clustertls: %w", err)
	}
	if err := refuseExisting(filepath.Join(dir, CACert), filepath.Join(dir, CAKey)); err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, CAKey), key); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, CACert), "CERTIFICATE", der, 0o644)
}

// NewNode signs a certificate for node id, reachable at hosts (IP
// addresses or DNS names), with the CA in caDir, and writes dir/ca.crt,
// dir/node.crt and dir/node.key. It refuses to overwrite any of them.
func NewNode(caDir, id string, hosts []string, dir string) error {
	if err := validID(id); err != nil {
		return err
	}
	if len(hosts) == 0 {
		return errors.New("clustertls: a node certificate needs at least one host")
	}
	caPEM, err := os.ReadFile(filepath.Join(caDir, CACert))
	if err != nil {
		return fmt.Errorf("clustertls: CA: %w", err)
	}
	ca, err := tls.LoadX509KeyPair(filepath.Join(caDir, CACert), filepath.Join(caDir, CAKey))
	if err != nil {
		return fmt.Errorf("clustertls: CA: %w", err)
	}
	if err := checkKeyMode(filepath.Join(caDir, CAKey)); err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return fmt.Errorf("clustertls: CA: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("clustertls: generate key: %w", err)
	}
	u, err := url.Parse(uriPrefix + id)
	if err != nil {
		return fmt.Errorf("clustertls: node id %q: %w", id, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: id, Organization: []string{"ioactor cluster"}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(nodeValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
	}
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		return fmt.Errorf("clustertls: create node certificate: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("clustertls: %w", err)
	}
	if err := refuseExisting(filepath.Join(dir, CACert), filepath.Join(dir, NodeCert), filepath.Join(dir, NodeKey)); err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, NodeKey), key); err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, NodeCert), "CERTIFICATE", der, 0o644); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, CACert), caPEM, 0o644)
}

// validID refuses ids that would not survive a URI or a log line.
func validID(id string) error {
	if id == "" || len(id) > 128 {
		return fmt.Errorf("clustertls: node id %q: 1 to 128 characters", id)
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.:", c)) {
			return fmt.Errorf("clustertls: node id %q: only letters, digits and -_.: are allowed", id)
		}
	}
	return nil
}

// Identity is a node's loaded certificate, key and cluster CA.
type Identity struct {
	// ID is the node id the certificate carries.
	ID   string
	Cert tls.Certificate
	// Pool holds the cluster CA.
	Pool *x509.CertPool
}

// Load reads dir/ca.crt, dir/node.crt and dir/node.key. A key readable by
// its group or others is refused with ErrKeyPermissions.
func Load(dir string) (*Identity, error) {
	keyFile := filepath.Join(dir, NodeKey)
	if err := checkKeyMode(keyFile); err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, NodeCert), keyFile)
	if err != nil {
		return nil, fmt.Errorf("clustertls: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("clustertls: %s: %w", NodeCert, err)
	}
	cert.Leaf = leaf
	id, err := PeerID(leaf)
	if err != nil {
		return nil, fmt.Errorf("clustertls: %s: %w", filepath.Join(dir, NodeCert), err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, fmt.Errorf("clustertls: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("clustertls: %s holds no certificate", filepath.Join(dir, CACert))
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("clustertls: %s is not signed by %s: %w", NodeCert, CACert, err)
	}
	return &Identity{ID: id, Cert: cert, Pool: pool}, nil
}

// Config is ServerConfig and ClientConfig in one, for a node that is both:
// a tls.Config's server fields and client fields do not interfere.
func (id *Identity) Config() *tls.Config {
	c := id.ServerConfig()
	c.RootCAs = id.Pool
	c.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	return c
}

// ServerConfig accepts TLS 1.3 clients that present a certificate of the
// cluster CA.
func (id *Identity) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    id.Pool,
	}
}

// ClientConfig presents the node's certificate and verifies the server's
// against the cluster CA and the host dialed.
func (id *Identity) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.Cert},
		RootCAs:      id.Pool,
		// Reconnections after a failover resume the session instead of
		// a full handshake.
		ClientSessionCache: tls.NewLRUClientSessionCache(64),
	}
}

// PeerID returns the node id a cluster certificate carries: its
// "urn:ioactor:node:" URI SAN.
func PeerID(c *x509.Certificate) (string, error) {
	for _, u := range c.URIs {
		if s := u.String(); strings.HasPrefix(s, uriPrefix) && len(s) > len(uriPrefix) {
			return s[len(uriPrefix):], nil
		}
	}
	return "", ErrNoNodeID
}

// ConnID returns the node id of the verified peer of a TLS connection.
func ConnID(cs tls.ConnectionState) (string, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", ErrNoNodeID
	}
	return PeerID(cs.VerifiedChains[0][0])
}

func checkKeyMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("clustertls: %w", err)
	}
	if m := fi.Mode().Perm(); m&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; run chmod 600 %s", ErrKeyPermissions, path, m, path)
	}
	return nil
}

func refuseExisting(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%w: %s", ErrExists, p)
		}
	}
	return nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("clustertls: %w", err)
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	return writeFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

// writeFile creates path with mode (never widened by an existing file or
// the umask's absence) and writes b.
func writeFile(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("clustertls: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("clustertls: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("clustertls: %w", err)
	}
	return nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return n
}
