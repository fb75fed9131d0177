package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/ioactor/ioactor/internal/logsum"
	"github.com/ioactor/ioactor/tftp"
)

// hardening holds the flags that bound what a stranger can make tftpd hold,
// send or log (issue 16), and the privilege drop.
type hardening struct {
	maxTimeoutOpt      time.Duration
	silence            time.Duration
	firstRetries       int
	maxClientTransfers int
	clientRate         float64
	clientBurst        int
	clientPrefix4      int
	clientPrefix6      int
	errorRate          float64
	logRepeat          int
	logInterval        time.Duration
	user               string
}

func (h *hardening) flags(fs *flag.FlagSet) {
	fs.DurationVar(&h.maxTimeoutOpt, "max-timeout-option", 10*time.Second, "largest timeout option granted (RFC 2349); a larger one is refused and -timeout applies; negative refuses the option")
	fs.DurationVar(&h.silence, "silence-limit", 30*time.Second, "abandon a transfer that has heard nothing from its client for this long; negative: no limit")
	fs.IntVar(&h.firstRetries, "first-retries", 1, "retransmissions of the first packet while the client has not answered (a forged request draws at most this+1 packets); 0: none")
	fs.IntVar(&h.maxClientTransfers, "max-client-transfers", 32, "transfers at once per client address (or -client-prefix network); 0 or negative: no limit")
	fs.Float64Var(&h.clientRate, "client-rate", 20, "new requests per second per client (token bucket); 0 or negative: no limit")
	fs.IntVar(&h.clientBurst, "client-burst", 40, "burst of the -client-rate token bucket (0: twice the rate)")
	fs.IntVar(&h.clientPrefix4, "client-prefix4", 32, "IPv4 prefix length that makes one client for the per-client limits (24: a /24 shares one)")
	fs.IntVar(&h.clientPrefix6, "client-prefix6", 64, "IPv6 prefix length that makes one client for the per-client limits")
	fs.Float64Var(&h.errorRate, "error-rate", 200, "ERROR packets per second to strangers (unknown transfer IDs, malformed requests), server-wide (refusals: 20, then 10/s per client); 0 or negative: no limit")
	fs.IntVar(&h.logRepeat, "log-repeat", 100, "log records of one kind (level and message) written per -log-interval; the rest are counted in a summary; 0 or negative: no limit")
	fs.DurationVar(&h.logInterval, "log-interval", 10*time.Second, "interval of -log-repeat")
	fs.StringVar(&h.user, "user", "", "after binding the port and opening the root, drop to this user and its group (needs root; uploads are then written as that user)")
}

// apply copies the limits into a server config, mapping the flags' "0 or
// negative: off" to the config's "negative: off, 0: default".
func (h *hardening) apply(c *tftp.ServerConfig) {
	c.MaxTimeoutOption = h.maxTimeoutOpt
	c.SilenceLimit = h.silence
	c.FirstRetries = retries(h.firstRetries)
	c.MaxClientTransfers = offIfNotPositive(h.maxClientTransfers)
	c.ClientRate = -1
	if h.clientRate > 0 {
		c.ClientRate = h.clientRate
	}
	c.ClientBurst = h.clientBurst
	c.ClientPrefix4, c.ClientPrefix6 = h.clientPrefix4, h.clientPrefix6
	c.ErrorRate = -1
	if h.errorRate > 0 {
		c.ErrorRate = h.errorRate
	}
}

func offIfNotPositive(n int) int {
	if n <= 0 {
		return -1
	}
	return n
}

// logger wraps l so that no kind of record floods the log; the returned
// function writes the last summaries.
func (h *hardening) logger(l *slog.Logger) (*slog.Logger, func()) {
	burst := h.logRepeat
	if burst <= 0 {
		burst = -1
	}
	s := logsum.New(l.Handler(), logsum.Config{Burst: burst, Interval: h.logInterval})
	return slog.New(s), s.Flush
}

func (h *hardening) check(cluster bool) error {
	if h.user != "" && cluster {
		return errors.New("-user does not go with -cluster (a new leader binds the port later): run the node unprivileged with CAP_NET_BIND_SERVICE instead (contrib/systemd/tftpd.service)")
	}
	if h.clientPrefix4 < 0 || h.clientPrefix4 > 32 {
		return fmt.Errorf("-client-prefix4 %d: want 1 to 32", h.clientPrefix4)
	}
	if h.clientPrefix6 < 0 || h.clientPrefix6 > 128 {
		return fmt.Errorf("-client-prefix6 %d: want 1 to 128", h.clientPrefix6)
	}
	return nil
}
