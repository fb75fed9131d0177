package tftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/ioactor/ioactor/netio"
)

// ServerConfig configures a [Server]. The zero value, with Root (or FS)
// set, is a read-only server on 127.0.0.1:6969 with the defaults below.
// Zero means the default; where noted, negative turns a feature off. A
// config must not be modified once passed to NewServer.
type ServerConfig struct {
	// FS is what the server serves: an [*FS] (a directory), [FromFS] (any
	// [fs.FS]), [ReadFunc] (generated content) or any [Files]. When nil,
	// the server opens Root with AllowWrite and AllowOverwrite, and
	// closes it when it stops. A replicated server (Replicator, Resume)
	// needs an *FS: see [ErrNotReplicable].
	FS Files
	// Root is the directory served when FS is nil.
	Root string
	// AllowWrite allows uploads (WRQ); AllowOverwrite lets an upload
	// replace an existing file. Used only when FS is nil.
	AllowWrite, AllowOverwrite bool
	// Rewrite, when not nil, maps each request's file name before FS
	// opens it: a [Remap] (tftpd-hpa's remap rules), [FS.ClientDir] (a
	// directory per client), or several with [ChainRewrite]. An error
	// refuses the request, as an error of [Files] does. It runs on the
	// event loop. The transfer's state records the rewritten name.
	Rewrite func(FileRequest) (string, error)

	// Listen is the server port's address; zero means 127.0.0.1:6969.
	// Port 0 picks a free port: see [Server.Addr]. An IPv6 wildcard
	// ([::]) serves IPv4 too.
	Listen netip.AddrPort
	// SinglePort answers every transfer from the server port, telling
	// transfers apart by the client's address, instead of from a fresh
	// port per transfer (RFC 1350's TIDs). It suits NAT and containers,
	// which forward one port, and a replicated server, whose next leader
	// owns every transfer by binding that one port.
	SinglePort bool

	// MaxBlockSize caps the blksize option; 0 means 65464, negative
	// refuses the option (512-byte blocks). Embedded clients sometimes ask
	// for more than they can reassemble: cap it at 1468 for them.
	MaxBlockSize int
	// ClampBlockSize caps blksize further, per client, to what the route's
	// MTU carries without IP fragmentation.
	ClampBlockSize bool
	// MaxWindowSize caps the windowsize option; 0 means 16, negative
	// refuses the option (lock-step). A download keeps a window of blocks
	// in memory, so the cap is also a memory bound: at most 1024.
	MaxWindowSize int
	// Rollover is what follows block 65535; the default wraps to 0.
	Rollover Rollover

	// Timeout is how long to wait for the client before sending again,
	// when the client did not negotiate the timeout option: the initial
	// value, and the cap of the adaptive one; 0 means 1 s.
	Timeout time.Duration
	// MinTimeout is the floor of the adaptive retransmission timeout,
	// which follows the measured round-trip time of downloads (RFC 6298);
	// 0 means 50 ms, negative turns adaptation off (Timeout is used as
	// is).
	MinTimeout time.Duration
	// Retries is how many times one packet is sent again before the
	// transfer is abandoned; 0 means 5, negative means none. Each retry
	// doubles the wait, up to 8 times the timeout.
	Retries int
	// TransferDeadline bounds the duration of one transfer; 0 means one
	// hour, negative means none.
	TransferDeadline time.Duration
	// MaxTransfers bounds the transfers in progress; a request beyond it
	// is refused with ERROR 0. 0 means 4096, negative means no bound.
	MaxTransfers int
	// MaxUploadSize bounds the size of an upload in bytes (a WRQ whose
	// tsize is larger is refused at once); 0 means no bound.
	MaxUploadSize int64

	// Limits on what a stranger can make the server hold or send (see the
	// package doc's Security section).

	// MaxTimeoutOption is the largest timeout option granted; a larger one
	// is refused (RFC 2349 allows it: the option is left out of the OACK
	// and Timeout applies). 0 means 10 s, negative refuses the option.
	MaxTimeoutOption time.Duration
	// SilenceLimit abandons a transfer that has heard nothing from its
	// client for that long, whatever its retries and timeout; 0 means
	// 30 s, negative means no limit.
	SilenceLimit time.Duration
	// FirstRetries is how many times the first packet (DATA 1, the OACK
	// or ACK 0) is sent again while the client has not answered at all;
	// such a transfer also ends without an ERROR. A request with a forged
	// source draws at most FirstRetries+1 packets. 0 means 1, negative
	// means none; it is never more than Retries.
	FirstRetries int
	// MaxClientTransfers bounds the transfers at once of one client
	// (one address, or one ClientPrefix4/ClientPrefix6 network); a request
	// beyond it is refused with ERROR 0. 0 means 32, negative means no
	// bound.
	MaxClientTransfers int
	// ClientRate is the rate of new requests one client may make, per
	// second, with bursts of ClientBurst (a token bucket); a request
	// beyond it is refused with ERROR 0. 0 means 20 per second, negative
	// means no limit. ClientBurst 0 means 2×ClientRate (at least 1).
	ClientRate  float64
	ClientBurst int
	// ClientPrefix4 and ClientPrefix6 are the prefix lengths that make one
	// client for MaxClientTransfers and ClientRate; 0 means 32 (one IPv4
	// address) and 64 (one IPv6 subnet).
	ClientPrefix4, ClientPrefix6 int
	// ErrorRate bounds the ERROR packets per second the server sends to
	// strangers (unknown transfer IDs, malformed requests), across all
	// transfers, with bursts of as many; each transfer port also answers
	// strangers at most 4 times, then once a second. 0 means 200, negative
	// means no limit. An ERROR packet itself is never answered. Refusals
	// (MaxTransfers, MaxClientTransfers, ClientRate) are bounded per
	// client instead, 20 then 10 a second, so that one flood cannot
	// silence the refusals of everyone else.
	ErrorRate float64

	// Replicator, when set, records every transfer so that another server
	// can finish it (package tftp/cluster). It requires SinglePort.
	Replicator Replicator
	// CheckpointInterval is how often a replicated transfer tells the
	// Replicator its position (and at least every 8192 blocks); 0 means
	// 20 ms. Shorter means a resumed download finds its client sooner
	// (see Resume), longer means less replication work per byte. With
	// many transfers it grows: 1 ms per live transfer on the loop, at
	// most 1 s, so that a storm's checkpoints add up to about 1,000 a
	// second, not one per transfer every 20 ms.
	CheckpointInterval time.Duration
	// Resume lists downloads that another server, bound to the same
	// Listen address in single-port mode, started and did not finish: this
	// server takes them over as soon as it holds the port, before it reads
	// a datagram (a client's ACK for one of them is then never taken for a
	// stranger's). Each continues from its checkpoint: a lock-step
	// download looks for the client's block (the checkpoint may be behind
	// it) by sending single blocks until the client answers; a windowed
	// one sends a wide first window. Uploads cannot resume
	// (their data was on the other server): their records are ended
	// through the Replicator, and the client's next DATA gets an ERROR.
	// It requires SinglePort.
	Resume []TransferState

	// Logger receives the server's logs, each transfer's with its id;
	// nil means the netio system's.
	Logger *slog.Logger
	// Registerer, when not nil, receives the server's metrics:
	// ioactor_tftp_transfers_total{op,result}, ioactor_tftp_bytes_total{op},
	// ioactor_tftp_retransmits_total, ioactor_tftp_active_transfers,
	// ioactor_tftp_transfer_duration_seconds{op},
	// ioactor_tftp_stray_packets_total{kind},
	// ioactor_tftp_requests_refused_total{reason},
	// ioactor_tftp_errors_suppressed_total and, for resumed downloads,
	// ioactor_tftp_resume_lag_blocks.
	Registerer prometheus.Registerer
}

// Replicator is told about a server's transfers, so that another server
// bound to the same address can resume them ([Server.Resume]). Begin and
// CommitUpload are called away from the event loop and may block; Progress
// and End are called on the loop and must not block (they may drop or
// coalesce).
type Replicator interface {
	// Begin records a transfer before its first packet leaves; the
	// transfer starts only once Begin returned nil, and is refused with an
	// ERROR otherwise, except for an error wrapping [ErrStandby]: then
	// the request is dropped without an answer.
	Begin(st TransferState) error
	// Progress records how far a transfer got: every
	// ServerConfig.CheckpointInterval, and where a download stands when
	// the server stops.
	Progress(st TransferState)
	// End removes a transfer that ended (not one cancelled by the server's
	// own stop: another server may still resume that one).
	End(st TransferState)
	// Stalled reports that checkpoints have stopped committing (a node cut
	// off from its cluster, until it learns it lost its leadership):
	// downloads then hold their next blocks, so that they do not run ahead
	// of the position another server would resume them from, and go on
	// once it reports false. It is called on the loop, before each send of
	// a download, and must be cheap.
	Stalled(now time.Time) bool
	// CommitUpload publishes a complete upload's content under
	// st.Filename, in place of the local commit; the final ACK waits for
	// it, so the client hears of success only once it is durable.
	CommitUpload(st TransferState, content io.Reader) error
}

// checkpointMaxBlocks bounds the blocks between two Progress calls, however
// fast a transfer runs: far below 32768, so a checkpoint always fixes the
// rollover epoch.
const checkpointMaxBlocks = 8192

// DefaultListen is the server address of a zero ServerConfig: loopback,
// on an unprivileged port.
var DefaultListen = netip.MustParseAddrPort("127.0.0.1:6969")

const maxServerWindow = 1024

func (c ServerConfig) withDefaults() ServerConfig {
	if !c.Listen.IsValid() {
		c.Listen = DefaultListen
	}
	if c.MaxWindowSize > maxServerWindow {
		c.MaxWindowSize = maxServerWindow
	}
	if c.Timeout <= 0 {
		c.Timeout = time.Second
	}
	if c.MinTimeout == 0 {
		c.MinTimeout = 50 * time.Millisecond
	}
	if c.MinTimeout > c.Timeout {
		c.MinTimeout = c.Timeout
	}
	switch {
	case c.Retries == 0:
		c.Retries = 5
	case c.Retries < 0:
		c.Retries = 0
	}
	if c.TransferDeadline == 0 {
		c.TransferDeadline = time.Hour
	}
	if c.MaxTransfers == 0 {
		c.MaxTransfers = 4096
	}
	if c.MaxTimeoutOption == 0 {
		c.MaxTimeoutOption = 10 * time.Second
	}
	if c.SilenceLimit == 0 {
		c.SilenceLimit = 30 * time.Second
	}
	switch {
	case c.FirstRetries == 0:
		c.FirstRetries = 1
	case c.FirstRetries < 0:
		c.FirstRetries = 0
	}
	c.FirstRetries = min(c.FirstRetries, c.Retries)
	if c.MaxClientTransfers == 0 {
		c.MaxClientTransfers = 32
	}
	if c.ClientRate == 0 {
		c.ClientRate = 20
	}
	if c.ClientBurst <= 0 {
		c.ClientBurst = max(1, int(2*c.ClientRate))
	}
	if c.ClientPrefix4 <= 0 || c.ClientPrefix4 > 32 {
		c.ClientPrefix4 = 32
	}
	if c.ClientPrefix6 <= 0 || c.ClientPrefix6 > 128 {
		c.ClientPrefix6 = 64
	}
	if c.ErrorRate == 0 {
		c.ErrorRate = 200
	}
	if c.CheckpointInterval <= 0 {
		c.CheckpointInterval = 20 * time.Millisecond
	}
	return c
}

// Server is a TFTP server on a netio system: a listener actor on the server
// port, and one transfer actor per transfer, with a UDP socket of its own
// (or, in single-port mode, on the listener's loop, sending through the
// listener's socket). Its methods are safe from any goroutine.
type Server struct {
	cfg    ServerConfig
	sys    *netio.System
	files  Files
	ownFS  *FS // the FS opened from Root, closed at stop
	limits Limits
	log    *slog.Logger
	m      *metrics
	ids    atomic.Uint64
	// errLim bounds the ERROR packets to strangers, across loops; nil: no
	// bound.
	errLim *rate.Limiter

	lis      netio.Ref
	addr     netip.AddrPort
	drained  chan struct{}
	commits  sync.WaitGroup // uploads being synced to disk
	stopOnce sync.Once
	stopErr  error
}

// NewServer starts a server on sys and returns once its port is bound.
func NewServer(sys *netio.System, cfg ServerConfig) (*Server, error) {
	cfg = cfg.withDefaults()
	if (cfg.Replicator != nil || cfg.Resume != nil) && !cfg.SinglePort {
		return nil, errors.New("tftp: a Replicator or Resume needs SinglePort")
	}
	if cfg.Logger == nil {
		cfg.Logger = sys.Logger()
	}
	s, err := newServerState(cfg, len(sys.Loops()))
	if err != nil {
		return nil, err
	}
	s.sys = sys
	bound := make(chan error, 1)
	l := &listener{srv: s, bound: bound}
	s.lis = sys.Spawn(l)
	select {
	case err = <-bound:
	case <-s.lis.Done():
		// A listener that could not bind reports why, then stops: both
		// may be ready, and the reason wins.
		select {
		case err = <-bound:
		default:
			err = netio.ErrShutdown
		}
	}
	if err != nil {
		s.lis.Stop()
		<-s.lis.Done()
		s.release()
		return nil, err
	}
	s.addr = l.local
	return s, nil
}

// newServerState opens the file system and registers the metrics: all of
// a server but its actors.
func newServerState(cfg ServerConfig, loops int) (*Server, error) {
	s := &Server{
		cfg: cfg, log: cfg.Logger,
		limits:  Limits{MaxBlockSize: cfg.MaxBlockSize, MaxWindowSize: cfg.MaxWindowSize, MaxTimeout: cfg.MaxTimeoutOption},
		m:       newMetrics(loops),
		drained: make(chan struct{}),
	}
	// Transfer ids start at a random point, so that the ids of two
	// servers (a replicated transfer keeps its id from one to the next)
	// do not collide.
	s.ids.Store(rand.Uint64() >> 24)
	if cfg.ErrorRate > 0 {
		s.errLim = rate.NewLimiter(rate.Limit(cfg.ErrorRate), max(1, int(cfg.ErrorRate)))
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	var err error
	if s.files, s.ownFS, err = serverFiles(&cfg); err != nil {
		return nil, err
	}
	if reg := cfg.Registerer; reg != nil {
		for i, c := range s.m.collectors() {
			if err := reg.Register(c); err != nil {
				for _, r := range s.m.collectors()[:i] {
					reg.Unregister(r)
				}
				s.closeFS()
				return nil, fmt.Errorf("tftp: register metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Addr returns the address the server port is bound to.
func (s *Server) Addr() netip.AddrPort { return s.addr }

// Shutdown stops the server gracefully: it stops taking requests (in
// single-port mode, new requests are refused with an ERROR), waits for the
// transfers in progress to end, or for ctx to end, then cancels what is
// left, closes every socket and file, and returns. It returns ctx's error
// if transfers had to be cancelled. Shutdown is idempotent.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopOnce.Do(func() {
		s.lis.Tell(drainMsg{})
		select {
		case <-s.drained:
		case <-ctx.Done():
			s.stopErr = fmt.Errorf("tftp: shutdown: %w", ctx.Err())
		case <-s.lis.Done():
		}
		s.lis.Tell(closeMsg{})
		<-s.lis.Done()
		s.commits.Wait()
		s.release()
	})
	return s.stopErr
}

// Close stops the server at once, cancelling the transfers in progress.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.Shutdown(ctx) // only reports that transfers were cancelled
	return nil
}

// Transfers returns the state of the transfers in progress (uploads that
// completed and linger to re-acknowledge excluded), as each transfer's
// actor reports it.
func (s *Server) Transfers(ctx context.Context) ([]TransferState, error) {
	list := make(chan []netio.Ref, 1)
	s.lis.Tell(listMsg{ch: list})
	var refs []netio.Ref
	select {
	case refs = <-list:
	case <-s.lis.Done():
		return nil, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	chans := make([]chan TransferState, len(refs))
	for i, ref := range refs {
		chans[i] = make(chan TransferState, 1)
		ref.Tell(stateQuery{ch: chans[i]})
	}
	var out []TransferState
	for i, ch := range chans {
		select {
		case st, ok := <-ch:
			if ok {
				out = append(out, st)
			}
		case <-refs[i].Done():
		case <-ctx.Done():
			return out, ctx.Err()
		}
	}
	return out, nil
}

func (s *Server) release() {
	if reg := s.cfg.Registerer; reg != nil {
		for _, c := range s.m.collectors() {
			reg.Unregister(c)
		}
	}
	s.closeFS()
}

func (s *Server) closeFS() {
	if s.ownFS != nil {
		s.ownFS.Close()
	}
}
