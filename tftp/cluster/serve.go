package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ioactor/ioactor/netio"
	"github.com/ioactor/ioactor/tftp"
)

// replicator is the tftp.Replicator of a node: Begin and CommitUpload go
// through raft synchronously; Progress and End are queued and applied by
// one goroutine, newest checkpoint per transfer first-come, so that the
// sending path never waits for raft.
type replicator struct {
	n    *Node
	fs   *tftp.FS
	sums *sumCache

	mu      sync.Mutex
	pending map[string]Record // latest checkpoint per transfer
	ends    []string
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func newReplicator(n *Node, fsys *tftp.FS) *replicator {
	r := &replicator{n: n, fs: fsys, sums: n.sums, pending: make(map[string]Record),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go r.run()
	return r
}

func (r *replicator) Begin(st tftp.TransferState) error {
	rec := Record{State: st, Updated: time.Now()}
	if st.Op == tftp.OpRRQ {
		sum, err := r.sums.sum(r.fs, st.Filename)
		if err != nil {
			return err
		}
		rec.SHA256 = sum
	}
	return r.n.Begin(rec)
}

func (r *replicator) Progress(st tftp.TransferState) {
	r.mu.Lock()
	r.pending[st.Client.String()] = Record{State: st, Updated: time.Now()}
	r.mu.Unlock()
	r.kick()
}

func (r *replicator) End(st tftp.TransferState) {
	r.mu.Lock()
	key := st.Client.String()
	delete(r.pending, key)
	r.ends = append(r.ends, key)
	r.mu.Unlock()
	r.kick()
}

func (r *replicator) kick() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// CommitUpload replicates the content in chunks, then commits it: every
// node checks the digest and renames the file into place.
func (r *replicator) CommitUpload(st tftp.TransferState, content io.Reader) error {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	var off int64
	key := st.Client.String()
	for {
		n, err := io.ReadFull(content, buf)
		if n > 0 {
			h.Write(buf[:n])
			if err := r.n.UploadData(key, off, buf[:n]); err != nil {
				return fmt.Errorf("cluster: replicate upload: %w", err)
			}
			off += int64(n)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("cluster: read upload: %w", err)
		}
	}
	st.Size = off
	return r.n.CommitUpload(Record{State: st, SHA256: hex.EncodeToString(h.Sum(nil)), Updated: time.Now()})
}

// run applies queued checkpoints and ends; a failed apply (no longer the
// leader) is dropped: the next leader has the last committed checkpoint.
func (r *replicator) run() {
	defer close(r.done)
	for {
		select {
		case <-r.stop:
			return
		case <-r.wake:
		}
		for {
			r.mu.Lock()
			ends := r.ends
			r.ends = nil
			var rec Record
			var have bool
			for k, v := range r.pending {
				rec, have = v, true
				delete(r.pending, k)
				break
			}
			r.mu.Unlock()
			for _, k := range ends {
				r.n.End(k)
			}
			if !have {
				break
			}
			r.n.Progress(rec)
		}
	}
}

func (r *replicator) close() {
	close(r.stop)
	<-r.done
}

// sumCache remembers file digests by name, size and modification time, so a
// file is hashed once, not on every request.
type sumCache struct {
	mu sync.Mutex
	m  map[sumKey]string
}

type sumKey struct {
	name  string
	size  int64
	mtime int64
}

func (c *sumCache) sum(fsys *tftp.FS, name string) (string, error) {
	f, size, err := fsys.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", err
	}
	k := sumKey{name: name, size: size, mtime: fi.ModTime().UnixNano()}
	c.mu.Lock()
	s, ok := c.m[k]
	c.mu.Unlock()
	if ok {
		return s, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	s = hex.EncodeToString(h.Sum(nil))
	c.mu.Lock()
	c.m[k] = s
	c.mu.Unlock()
	return s, nil
}

// ServeConfig configures [Serve].
type ServeConfig struct {
	// TFTP is the server's configuration; Serve sets SinglePort and the
	// Replicator, and needs FS set (the node's FS).
	TFTP tftp.ServerConfig
	// Registerer, when not nil, receives the failover metrics.
	Registerer prometheus.Registerer
}

// Serve runs the replicated TFTP service until ctx ends: while the node
// leads, it binds the TFTP port and resumes the transfers of the replicated
// state; when the node stops leading, it closes the port at once, so that
// two nodes never answer a client. A graceful stop (ctx cancelled) hands
// leadership over first.
func Serve(ctx context.Context, sys *netio.System, n *Node, cfg ServeConfig) error {
	if cfg.TFTP.FS == nil {
		return errors.New("cluster: ServeConfig.TFTP.FS is required")
	}
	m := newServeMetrics(cfg.Registerer)
	defer m.unregister()
	rep := newReplicator(n, cfg.TFTP.FS)
	defer rep.close()
	tcfg := cfg.TFTP
	tcfg.SinglePort = true
	tcfg.Replicator = rep
	var srv *tftp.Server
	stopServing := func() {
		if srv != nil {
			srv.Close()
			srv = nil
			n.log.Info("cluster: TFTP port released")
		}
	}
	defer stopServing()
	leading := false
	for {
		select {
		case <-ctx.Done():
			if leading {
				// Release the port, then hand leadership over, so that the
				// next leader binds and resumes at once.
				stopServing()
				if err := n.Handover(); err != nil {
					n.log.Warn("cluster: leadership transfer failed", "err", err)
				}
			}
			return nil
		case isLeader, ok := <-n.Leadership():
			if !ok {
				return nil
			}
			leading = isLeader
			if !isLeader {
				stopServing()
				continue
			}
			// Apply everything committed before resuming from it; retry
			// while this node leads (a barrier can time out on a node that
			// is still catching up).
			barrier := n.Barrier(2 * time.Second)
			for barrier != nil && n.IsLeader() && ctx.Err() == nil {
				n.log.Warn("cluster: barrier before serving failed; retrying", "err", barrier)
				barrier = n.Barrier(2 * time.Second)
			}
			if barrier != nil {
				continue
			}
			// On one host the old leader may still hold the port for a
			// moment (it releases it when it steps down): retry.
			var err error
			for try := 0; n.IsLeader() && ctx.Err() == nil; try++ {
				if srv, err = tftp.NewServer(sys, tcfg); err == nil {
					break
				}
				if try%50 == 0 {
					n.log.Warn("cluster: bind the TFTP port; retrying", "err", err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if srv == nil {
				continue
			}
			m.failovers.Inc()
			recs := n.Transfers()
			var states []tftp.TransferState
			for _, r := range recs {
				if r.State.Op == tftp.OpRRQ && r.SHA256 != "" {
					if sum, err := rep.sums.sum(cfg.TFTP.FS, r.State.Filename); err != nil || sum != r.SHA256 {
						n.log.Error("cluster: file differs from the one the transfer started with; not resuming", "file", r.State.Filename, "err", err)
						rep.End(r.State)
						continue
					}
				}
				states = append(states, r.State)
			}
			m.resumed.Add(float64(len(states)))
			srv.Resume(states)
			n.log.Info("cluster: serving TFTP", "addr", srv.Addr().String(), "resumed", len(states))
		}
	}
}

type serveMetrics struct {
	reg                prometheus.Registerer
	failovers, resumed prometheus.Counter
}

func newServeMetrics(reg prometheus.Registerer) *serveMetrics {
	m := &serveMetrics{
		reg:       reg,
		failovers: prometheus.NewCounter(prometheus.CounterOpts{Name: "ioactor_tftp_cluster_leaderships_total", Help: "Times this node became the leader and bound the TFTP port."}),
		resumed:   prometheus.NewCounter(prometheus.CounterOpts{Name: "ioactor_tftp_cluster_resumed_transfers_total", Help: "Transfers resumed from the replicated state after a failover."}),
	}
	if reg != nil {
		reg.MustRegister(m.failovers, m.resumed)
	}
	return m
}

func (m *serveMetrics) unregister() {
	if m.reg != nil {
		m.reg.Unregister(m.failovers)
		m.reg.Unregister(m.resumed)
	}
}
