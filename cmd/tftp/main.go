// Command tftp fetches files from TFTP servers and sends files to them.
//
//	tftp get [flags] HOST[:PORT] REMOTE [LOCAL]   # LOCAL "-" is stdout
//	tftp put [flags] HOST[:PORT] LOCAL [REMOTE]   # LOCAL "-" is stdin
//
// The port defaults to 69. Flags ask for the RFC 2347 options: -blksize,
// -windowsize, -tsize, -timeout. A download goes to a temporary file that
// replaces LOCAL only once complete, so a failed one leaves nothing
// behind. On a terminal a progress bar shows on stderr; otherwise the
// command is quiet unless something fails. The exit status is 0 on
// success, 1 when the transfer failed, 2 for a usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ioactor/ioactor/internal/buildinfo"
	"github.com/ioactor/ioactor/internal/term"
	"github.com/ioactor/ioactor/tftp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp), errors.Is(err, errUsage):
		os.Exit(2)
	default:
		if msg := err.Error(); strings.HasPrefix(msg, "tftp: ") {
			fmt.Fprintln(os.Stderr, msg)
		} else {
			fmt.Fprintln(os.Stderr, "tftp:", msg)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

const usage = `usage:
  tftp get [flags] HOST[:PORT] REMOTE [LOCAL]   (LOCAL "-" writes to stdout)
  tftp put [flags] HOST[:PORT] LOCAL [REMOTE]   (LOCAL "-" reads stdin)
  tftp -version
Run "tftp get -h" for the flags.`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return errUsage
	}
	switch args[0] {
	case "get", "put":
	case "-version", "--version", "version":
		fmt.Fprintln(stdout, "tftp", buildinfo.Version())
		return nil
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, usage)
		return nil
	default:
		fmt.Fprintln(stderr, usage)
		return errUsage
	}
	op := args[0]
	fs := flag.NewFlagSet("tftp "+op, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c tftp.Client
	var rollover string
	var quiet, progress bool
	fs.IntVar(&c.BlockSize, "blksize", 0, "request this block size, 8 to 65464 (0: no option, 512)")
	fs.IntVar(&c.WindowSize, "windowsize", 0, "request this window size, blocks per ACK (0: no option, 1)")
	fs.BoolVar(&c.TSize, "tsize", true, "send the tsize option (learn or announce the size)")
	fs.DurationVar(&c.Timeout, "timeout", time.Second, "retransmission timeout")
	fs.BoolVar(&c.RequestTimeout, "request-timeout", false, "ask the server to use -timeout too (the timeout option, whole seconds)")
	fs.IntVar(&c.Retries, "retries", 5, "retransmissions of one packet before giving up")
	fs.BoolVar(&c.Netascii, "netascii", false, "netascii mode: convert line ends (the default is octet)")
	fs.StringVar(&rollover, "rollover", "zero", "block number the server uses after 65535: zero or one")
	fs.BoolVar(&quiet, "q", false, "no progress bar, even on a terminal")
	fs.BoolVar(&progress, "progress", false, "a progress bar even when stderr is no terminal")
	fs.Usage = func() {
		fmt.Fprintln(stderr, usage+"\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) < 2 || len(rest) > 3 {
		fs.Usage()
		return errUsage
	}
	roll, err := tftp.ParseRollover(rollover)
	if err != nil {
		return err
	}
	c.Rollover = roll
	if c.Retries == 0 {
		c.Retries = -1 // the flag's 0 means none
	}
	server, a, b := rest[0], rest[1], ""
	if len(rest) == 3 {
		b = rest[2]
	}
	if !quiet && (progress || term.IsTerminal(stderr)) {
		bar := &progressBar{w: stderr, name: a, start: time.Now()}
		c.Progress = bar.update
		defer bar.finish()
	}
	if op == "get" {
		local := b
		if local == "" {
			local = filepath.Base(a)
		}
		return get(ctx, &c, server, a, local, stdout)
	}
	remote := b
	if remote == "" {
		remote = filepath.Base(a)
	}
	return put(ctx, &c, server, a, remote)
}

func get(ctx context.Context, c *tftp.Client, server, remote, local string, stdout io.Writer) error {
	if local == "-" {
		_, err := c.Get(ctx, server, remote, stdout)
		return err
	}
	dir := filepath.Dir(local)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(local)+".tftp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	_, err = c.Get(ctx, server, remote, tmp)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	os.Chmod(tmp.Name(), 0o644)
	return os.Rename(tmp.Name(), local)
}

func put(ctx context.Context, c *tftp.Client, server, local, remote string) error {
	var r io.Reader = os.Stdin
	size := int64(-1)
	if local != "-" {
		f, err := os.Open(local)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		if fi.Mode().IsRegular() {
			size = fi.Size()
		}
		r = f
	}
	_, err := c.Put(ctx, server, remote, r, size)
	return err
}

// progressBar draws "name [=====>    ] 42% 12.0 MiB/28.5 MiB 31.2 MB/s" on
// one line, at most ten times a second.
type progressBar struct {
	mu          sync.Mutex
	w           io.Writer
	name        string
	start, last time.Time
	done, total int64
	drawn       bool
}

func (p *progressBar) update(done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done, p.total = done, total
	if now := time.Now(); now.Sub(p.last) >= 100*time.Millisecond {
		p.last = now
		p.draw()
	}
}

func (p *progressBar) draw() {
	elapsed := time.Since(p.start).Seconds()
	rate := 0.0
	if elapsed > 0 {
		rate = float64(p.done) / elapsed / 1e6
	}
	const width = 30
	var bar, pct string
	if p.total > 0 {
		n := int(min(p.done, p.total) * width / p.total)
		bar = "[" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "] "
		pct = fmt.Sprintf("%3d%% ", min(p.done, p.total)*100/p.total)
	}
	size := mib(p.done)
	if p.total >= 0 {
		size += "/" + mib(p.total)
	}
	fmt.Fprintf(p.w, "\r%s %s%s%s %.1f MB/s ", p.name, bar, pct, size, rate)
	p.drawn = true
}

func (p *progressBar) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn || p.done > 0 {
		p.draw()
		fmt.Fprintln(p.w)
	}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
