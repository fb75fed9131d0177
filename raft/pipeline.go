package raft

import (
	"fmt"
	"sync"
	"time"

	hraft "github.com/hashicorp/raft"
)

// pipeline is an append pipeline on a connection of its own.
//
// At most MaxInFlight appends are between AppendEntries and the moment their
// future enters the Consumer channel: AppendEntries takes a slot (blocking,
// which is raft's back-pressure, but never longer than Timeout: it then fails
// with ErrPipelineFull, so a pipeline whose futures nobody reads cannot hang
// its sender, unlike hashicorp/raft#612), and the slot is given back when the
// future is delivered. Futures are delivered in send order: straight from the
// connection's actor when the Consumer channel has room, else through the
// pipeline's deliverer goroutine, which blocks on the channel for them.
type pipeline struct {
	t      *Transport
	c      *clientConn
	target hraft.ServerAddress

	slots  chan struct{}
	doneCh chan hraft.AppendFuture

	mu     sync.Mutex
	slow   bool // futures go through queue until the deliverer drains it
	queue  []*appendFuture
	signal chan struct{}

	stopOnce sync.Once
	stopCh   chan struct{}
	done     chan struct{} // the deliverer returned
}

// AppendEntriesPipeline returns a pipeline to target on a new connection.
func (t *Transport) AppendEntriesPipeline(id hraft.ServerID, target hraft.ServerAddress) (hraft.AppendPipeline, error) {
	if t.cfg.MaxInFlight < 0 {
		return nil, hraft.ErrPipelineReplicationNotSupported
	}
	c, err := t.conn(target, rolePipeline)
	if err != nil {
		return nil, t.opErr(kindAppendEntries, target, err)
	}
	n := t.cfg.MaxInFlight
	p := &pipeline{
		t: t, c: c, target: target,
		slots:  make(chan struct{}, n),
		doneCh: make(chan hraft.AppendFuture, n),
		signal: make(chan struct{}, 1),
		stopCh: make(chan struct{}),
		done:   make(chan struct{}),
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		c.close(ErrTransportShutdown, false)
		return nil, t.opErr(kindAppendEntries, target, ErrTransportShutdown)
	}
	t.pipelines[p] = struct{}{}
	t.wg.Add(1)
	t.mu.Unlock()
	go p.deliverer()
	return p, nil
}

// AppendEntries queues one request; it blocks while MaxInFlight are in
// flight, up to Timeout.
func (p *pipeline) AppendEntries(args *hraft.AppendEntriesRequest, resp *hraft.AppendEntriesResponse) (hraft.AppendFuture, error) {
	select {
	case <-p.stopCh:
		return nil, ErrPipelineShutdown
	default:
	}
	select {
	case p.slots <- struct{}{}:
	default:
		timer := time.NewTimer(p.t.cfg.Timeout)
		select {
		case p.slots <- struct{}{}:
			timer.Stop()
		case <-timer.C:
			return nil, p.t.opErr(kindAppendEntries, p.target, fmt.Errorf("%w: waited %v", ErrPipelineFull, p.t.cfg.Timeout))
		case <-p.stopCh:
			timer.Stop()
			return nil, ErrPipelineShutdown
		}
	}
	f := &appendFuture{p: p, args: args, resp: resp}
	f.call.fut = f
	f.call.kind = kindAppendEntries
	f.call.start = time.Now()
	f.call.deadline = f.call.start.Add(p.t.cfg.Timeout)
	f.wg.Add(1)
	if err := p.c.enqueue(&f.call, kindAppendEntries, args); err != nil {
		<-p.slots
		return nil, p.t.opErr(kindAppendEntries, p.target, err)
	}
	p.t.m.pipelineDepth.Add(1)
	return f, nil
}

// Consumer returns the channel of finished futures, in send order.
func (p *pipeline) Consumer() <-chan hraft.AppendFuture { return p.doneCh }

// Close closes the pipeline and its connection; appends in flight fail.
func (p *pipeline) Close() error {
	p.stopOnce.Do(func() {
		close(p.stopCh)
		p.c.close(ErrPipelineShutdown, false)
		<-p.done
		p.t.mu.Lock()
		delete(p.t.pipelines, p)
		p.t.mu.Unlock()
	})
	return nil
}

// deliver hands a finished future to the consumer, in order. It never
// blocks: it runs on the connection's actor, under the connection's lock.
func (p *pipeline) deliver(f *appendFuture) {
	p.t.m.pipelineDepth.Add(-1)
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.slow {
		select {
		case p.doneCh <- f:
			<-p.slots
			return
		default:
			p.slow = true
		}
	}
	p.queue = append(p.queue, f)
	select {
	case p.signal <- struct{}{}:
	default:
	}
}

// deliverer moves queued futures into the Consumer channel, blocking as
// long as nobody reads it. It is the pipeline's one goroutine; Close stops
// it.
func (p *pipeline) deliverer() {
	defer p.t.wg.Done()
	defer close(p.done)
	for {
		select {
		case <-p.signal:
		case <-p.stopCh:
			return
		}
		for {
			p.mu.Lock()
			if len(p.queue) == 0 {
				p.slow = false
				p.queue = p.queue[:0]
				p.mu.Unlock()
				break
			}
			f := p.queue[0]
			p.mu.Unlock()
			select {
			case p.doneCh <- f:
				<-p.slots
			case <-p.stopCh:
				return
			}
			p.mu.Lock()
			p.queue[0] = nil
			p.queue = p.queue[1:]
			p.mu.Unlock()
		}
	}
}

// appendFuture is a pipelined AppendEntries.
type appendFuture struct {
	call
	p    *pipeline
	args *hraft.AppendEntriesRequest
	resp *hraft.AppendEntriesResponse
	err  error
	wg   sync.WaitGroup
}

// answer completes the future with an answer body (connection actor,
// under the connection's lock).
func (f *appendFuture) answer(body []byte) {
	f.err = decodeAnswer(body, f.resp)
	if f.err != nil {
		f.err = f.p.t.opErr(kindAppendEntries, f.p.target, f.err)
	}
	f.p.t.m.observe(kindAppendEntries, f.start)
	f.wg.Done()
	f.p.deliver(f)
}

func (f *appendFuture) fail(err error) {
	f.err = f.p.t.opErr(kindAppendEntries, f.p.target, err)
	f.wg.Done()
	f.p.deliver(f)
}

// Error blocks until the append finished and returns its error.
func (f *appendFuture) Error() error {
	f.wg.Wait()
	return f.err
}

// Start returns when the append was sent.
func (f *appendFuture) Start() time.Time { return f.start }

// Request returns the request.
func (f *appendFuture) Request() *hraft.AppendEntriesRequest { return f.args }

// Response returns the answer; valid once Error returned nil.
func (f *appendFuture) Response() *hraft.AppendEntriesResponse { return f.resp }
