package loadgen

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/ioactor/ioactor/tftp"
)

// A boot storm: many TFTP clients that start at once and each fetch a boot
// set in sequence, lock-step (no windowsize), the way PXE firmware does
// when a rack powers on. One process drives them all, a goroutine and a
// UDP socket per transfer, with this module's tftp.Client; so the load
// generator is the same for every server it measures.

// StormFile is one file of a boot set, with its CRC-32 (IEEE) to check
// what arrives; a zero CRC with a zero Size is not checked.
type StormFile struct {
	Name string
	Size int64
	CRC  uint32
}

// StormProfile is how a client fetches each file.
type StormProfile int

const (
	// StormUEFI probes each file's size first (an RRQ with tsize 0 and
	// blksize 1468, then an ERROR 8 in answer to the OACK, as UEFI PXE
	// does), then fetches it at blksize 1468 with tsize.
	StormUEFI StormProfile = iota
	// StormBIOS fetches each file at 512-byte blocks with tsize, no probe
	// (legacy PXE ROMs and iPXE's defaults).
	StormBIOS
)

func (p StormProfile) String() string {
	if p == StormUEFI {
		return "uefi-1468"
	}
	return "bios-512"
}

// StormConfig describes one storm. Zero fields take the defaults noted.
type StormConfig struct {
	Addr    string // the server, host:port
	Clients int    // default 1
	Files   []StormFile
	// Profile returns client i's profile; nil means even clients UEFI,
	// odd ones BIOS (half the clients at each block size).
	Profile func(i int) StormProfile
	// Timeout and Retries are each client's retransmission timer and
	// retries per packet (tftp.Client's); default 1 s and 8.
	Timeout time.Duration
	Retries int
	// Deadline bounds the whole storm; default 10 minutes.
	Deadline time.Duration
}

// StormResult is what a storm saw.
type StormResult struct {
	Bytes   int64         // file bytes received, over all clients
	Elapsed time.Duration // from the start until the last client finished
	// Completion holds, per client that finished, the time from the start
	// until its last file arrived, sorted.
	Completion  []time.Duration
	Failed      int   // clients that did not fetch every file intact
	FirstErr    error // the first failure
	Retransmits uint64
}

// MBps is the aggregate rate in MB/s (10^6 bytes).
func (r *StormResult) MBps() float64 { return float64(r.Bytes) / r.Elapsed.Seconds() / 1e6 }

// Quantile returns the q-quantile (0..1) of the per-client completion
// times, nearest rank.
func (r *StormResult) Quantile(q float64) time.Duration {
	if len(r.Completion) == 0 {
		return 0
	}
	i := int(q*float64(len(r.Completion))+0.5) - 1
	return r.Completion[min(max(i, 0), len(r.Completion)-1)]
}

// CRCWriter counts and CRC-32s (IEEE) what it is given, cheaply enough
// not to slow a load-generating client: a download is checked against the
// file's size and CRC instead of being kept.
type CRCWriter struct {
	CRC uint32
	N   int64
}

func (w *CRCWriter) Write(p []byte) (int, error) {
	w.CRC = crc32.Update(w.CRC, crc32.IEEETable, p)
	w.N += int64(len(p))
	return len(p), nil
}

// Storm runs one storm: every client starts at once and fetches
// cfg.Files in order. It returns when every client has finished or failed,
// or ctx ends.
func Storm(ctx context.Context, cfg StormConfig) (StormResult, error) {
	if cfg.Clients <= 0 {
		cfg.Clients = 1
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	if cfg.Retries == 0 {
		cfg.Retries = 8
	}
	if cfg.Deadline <= 0 {
		cfg.Deadline = 10 * time.Minute
	}
	if cfg.Profile == nil {
		cfg.Profile = func(i int) StormProfile { return StormProfile(i % 2) }
	}
	server, err := netip.ParseAddrPort(cfg.Addr)
	if err != nil {
		return StormResult{}, fmt.Errorf("loadgen: storm: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Deadline)
	defer cancel()
	out := make([]StormOutcome, cfg.Clients)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := &out[i]
			prof := cfg.Profile(i)
			c := tftp.Client{TSize: true, Timeout: cfg.Timeout, Retries: cfg.Retries}
			if prof == StormUEFI {
				c.BlockSize = 1468
			}
			for _, f := range cfg.Files {
				if prof == StormUEFI {
					if err := probeSize(ctx, server, f, cfg.Timeout, cfg.Retries); err != nil {
						o.Err = fmt.Errorf("client %d (%v): tsize probe of %s: %w", i, prof, f.Name, err)
						return
					}
				}
				w := &CRCWriter{}
				st, err := c.Get(ctx, cfg.Addr, f.Name, w)
				o.Bytes += w.N
				o.Retransmits += st.Retransmits
				if err == nil && (f.Size != 0 || f.CRC != 0) && (w.N != f.Size || w.CRC != f.CRC) {
					err = fmt.Errorf("got %d bytes, crc %08x; want %d, %08x", w.N, w.CRC, f.Size, f.CRC)
				}
				if err != nil {
					o.Err = fmt.Errorf("client %d (%v): %s: %w", i, prof, f.Name, err)
					return
				}
			}
			o.Took = time.Since(start)
		}()
	}
	wg.Wait()
	return SummarizeStorm(out, start), ctx.Err()
}

// StormOutcome is what one storm client did: the bytes and retransmissions
// of its files, and the time from the storm's start until its last file
// arrived, or the error that stopped it.
type StormOutcome struct {
	Bytes       int64
	Retransmits uint64
	Took        time.Duration
	Err         error
}

// SummarizeStorm adds up the clients' outcomes of a storm that began at
// start, for any load generator (this package's, or real client processes).
func SummarizeStorm(outs []StormOutcome, start time.Time) StormResult {
	var r StormResult
	for _, o := range outs {
		r.Bytes += o.Bytes
		r.Retransmits += o.Retransmits
		if o.Err != nil {
			r.Failed++
			if r.FirstErr == nil {
				r.FirstErr = o.Err
			}
			continue
		}
		r.Completion = append(r.Completion, o.Took)
		r.Elapsed = max(r.Elapsed, o.Took)
	}
	if r.Elapsed == 0 {
		r.Elapsed = time.Since(start)
	}
	slices.Sort(r.Completion)
	return r
}

// probeSize asks for f with tsize 0 and blksize 1468 and, once the server
// answers with an OACK carrying the size, ends the transfer with an ERROR
// 8 (RFC 2347), as UEFI firmware does before it fetches a file.
func probeSize(ctx context.Context, server netip.AddrPort, f StormFile, timeout time.Duration, retries int) error {
	conn, err := net.ListenUDP("udp", nil)
	if err != nil {
		return err
	}
	defer conn.Close()
	req := tftp.AppendRequest(nil, tftp.Request{Op: tftp.OpRRQ, Filename: f.Name, Mode: tftp.ModeOctet,
		Options: []tftp.Option{{Name: "tsize", Value: "0"}, {Name: "blksize", Value: "1468"}}})
	to := net.UDPAddrFromAddrPort(server)
	buf := make([]byte, 2048)
	for try := 0; try <= retries; try++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := conn.WriteToUDP(req, to); err != nil {
			return err
		}
		conn.SetReadDeadline(time.Now().Add(timeout))
	read:
		n, from, err := conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		pkt := buf[:n]
		op, err := tftp.PacketOpcode(pkt)
		if err != nil {
			return err
		}
		if op != tftp.OpOACK && op != tftp.OpERROR && (op != tftp.OpDATA || n < 4 || pkt[2] != 0 || pkt[3] != 1) {
			// A packet of an earlier transfer to this port (see
			// tftp.Client): not the answer.
			goto read
		}
		switch op {
		case tftp.OpOACK:
			opts, err := tftp.ParseOACK(pkt)
			if err != nil {
				return err
			}
			conn.WriteToUDPAddrPort(tftp.AppendError(nil, tftp.ErrOptionRefused, "tsize probe"), from)
			for _, o := range opts {
				if o.Name == "tsize" {
					if v, err := strconv.ParseInt(o.Value, 10, 64); err != nil || f.Size != 0 && v != f.Size {
						return fmt.Errorf("tsize %q, want %d", o.Value, f.Size)
					}
					return nil
				}
			}
			return errors.New("OACK without tsize")
		case tftp.OpERROR:
			code, msg, _ := tftp.ParseError(pkt)
			return fmt.Errorf("server: ERROR %d: %s", code, msg)
		default:
			// DATA 1: a server that ignores options; end it.
			conn.WriteToUDPAddrPort(tftp.AppendError(nil, tftp.ErrOptionRefused, "tsize probe"), from)
			return errors.New("the server ignored the tsize option")
		}
	}
	return tftp.ErrTimeout
}

// The boot set of the storm benchmarks: a first stage (a PXE network
// bootstrap program or shim), a second stage (a boot loader with its
// modules) and a kernel.
var bootSet = []struct {
	name string
	size int64
}{{"stage1.efi", 40000}, {"stage2.img", 1536 << 10}, {"vmlinuz", 10 << 20}}

func bootData(size int64) []byte {
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*13 + i>>9 + int(size))
	}
	return data
}

// BootSet returns the boot set in fetching order, with its sizes and
// CRCs; without kernel, it leaves the kernel out.
func BootSet(kernel bool) []StormFile {
	var set []StormFile
	for _, f := range bootSet {
		if kernel || f.name != "vmlinuz" {
			set = append(set, StormFile{Name: f.name, Size: f.size, CRC: crc32.ChecksumIEEE(bootData(f.size))})
		}
	}
	return set
}

// WriteBootSet writes the whole boot set into dir, world-readable (servers
// that drop privileges serve it too), and a one-byte file "probe".
func WriteBootSet(dir string) error {
	files := map[string][]byte{"probe": {1}}
	for _, f := range bootSet {
		files[f.name] = bootData(f.size)
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
		if err := os.Chmod(p, 0o644); err != nil { // past the umask
			return err
		}
	}
	return nil
}
