// Command tftp fetches files from TFTP servers and sends files to them.
//
//	tftp get [flags] HOST[:PORT] REMOTE [LOCAL]   # LOCAL "-" is stdout
//	tftp put [flags] HOST[:PORT] LOCAL [REMOTE]   # LOCAL "-" is stdin
//
// The port defaults to 69. Flags ask for the RFC 2347 options: -blksize,
// -windowsize, -tsize, -timeout. A download goes to a temporary file that
// becomes LOCAL only once complete, so a failed one leaves nothing behind;
// an existing LOCAL is never replaced unless -force is given or the file
// is named with -o FILE. On a terminal a progress bar shows on stderr; otherwise the
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
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/ioactor/ioactor/internal/cli"
	"github.com/ioactor/ioactor/internal/term"
	"github.com/ioactor/ioactor/tftp"
)

func main() { cli.Main("tftp", run) }

const usage = `usage:
  tftp get [flags] HOST[:PORT] REMOTE [LOCAL]   (LOCAL "-" writes to stdout; an existing LOCAL needs -force)
  tftp put [flags] HOST[:PORT] LOCAL [REMOTE]   (LOCAL "-" reads stdin)
  tftp -version
Run "tftp get -h" for the flags.`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch {
	case len(args) == 0:
		return cli.Usagef(stderr, "%s", usage)
	case args[0] == "get", args[0] == "put":
	case cli.IsVersion(args[0]):
		fmt.Fprintln(stdout, "tftp", cli.Version())
		return nil
	case cli.IsHelp(args[0]):
		fmt.Fprintln(stdout, usage)
		return nil
	default:
		return cli.Usagef(stderr, "tftp: unknown command %q\n%s", args[0], usage)
	}
	op := args[0]
	fs := flag.NewFlagSet("tftp "+op, flag.ContinueOnError)
	var c tftp.Client
	var rollover string
	var quiet, progress, force bool
	var out string
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
	if op == "get" {
		fs.StringVar(&out, "o", "", "write the download to this file, replacing it if it exists (\"-\": stdout)")
		fs.BoolVar(&force, "force", false, "replace LOCAL if it exists (without it, an existing file is never touched)")
	}
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), usage+"\n\nFlags:")
		fs.PrintDefaults()
	}
	if err := cli.Parse(fs, args[1:], stdout, stderr); err != nil {
		return err
	}
	rest := fs.Args()
	if len(rest) < 2 || len(rest) > 3 {
		fs.SetOutput(stderr)
		fs.Usage()
		return cli.ErrUsage
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
		switch {
		case out != "" && b != "":
			return cli.Usagef(stderr, "tftp get: give LOCAL or -o, not both")
		case out != "":
			local, force = out, true
		case local == "":
			local = filepath.Base(a)
		}
		return get(ctx, &c, server, a, local, force, stdout)
	}
	remote := b
	if remote == "" {
		remote = filepath.Base(a)
	}
	return put(ctx, &c, server, a, remote)
}

// errExists refuses to replace a local file the user did not name with -o
// or -force.
var errExists = errors.New("exists; use -force to replace it, or -o FILE")

func get(ctx context.Context, c *tftp.Client, server, remote, local string, force bool, stdout io.Writer) error {
	if local == "-" {
		_, err := c.Get(ctx, server, remote, stdout)
		return err
	}
	if !force {
		// Checked before the transfer, so that nothing is fetched for
		// nothing; the final link below checks again, atomically.
		if _, err := os.Lstat(local); err == nil {
			return fmt.Errorf("%s %w", local, errExists)
		}
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
	if force {
		return os.Rename(tmp.Name(), local)
	}
	// A hard link fails if local appeared meanwhile: never a silent
	// replacement.
	if err := os.Link(tmp.Name(), local); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s %w", local, errExists)
		}
		return err
	}
	return nil
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
