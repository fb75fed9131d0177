package netio

import (
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
)

// Actor is the behaviour of an actor: Receive is called with one message at a
// time, on the actor's loop (or, for blocking actors, on its own goroutine).
type Actor interface {
	Receive(ctx *Context, msg any)
}

// ReceiveFunc adapts a function to [Actor]; it is also the type of a
// behaviour given to [Context.Become].
type ReceiveFunc func(ctx *Context, msg any)

// Receive calls f.
func (f ReceiveFunc) Receive(ctx *Context, msg any) { f(ctx, msg) }

// PreStarter is implemented by actors that need set-up on their loop before
// the first message.
type PreStarter interface {
	PreStart(ctx *Context)
}

// PostStopper is implemented by actors that release resources when they stop,
// for whatever reason (Stop, a panic, the system's shutdown).
type PostStopper interface {
	PostStop(ctx *Context)
}

// Terminated is delivered to the watchers of an actor when it stops.
type Terminated struct {
	Ref Ref
}

// Ref names an actor. The zero Ref names nobody: every method works on it
// and does nothing (Tell, Stop and Run drop, Loop is nil, Done is closed).
// Refs are comparable and safe to use from any goroutine.
type Ref struct{ a *actor }

// IsZero reports whether r names no actor.
func (r Ref) IsZero() bool { return r.a == nil }

// Tell sends msg to the actor with no sender. It is safe from any goroutine
// and never blocks; a message to a stopped actor is dropped.
func (r Ref) Tell(msg any) {
	if r.a != nil {
		send(nil, nil, r.a, msg, kindUser)
	}
}

// Stop asks the actor to stop after the messages already queued for it.
func (r Ref) Stop() {
	if r.a != nil {
		send(nil, nil, r.a, nil, kindStop)
	}
}

// Done returns a channel that is closed once the actor has stopped and its
// PostStop has returned. The zero Ref's channel is closed: nobody is running.
func (r Ref) Done() <-chan struct{} {
	if r.a == nil {
		return closedDone
	}
	return r.a.doneChan()
}

// closedDone is the Done channel of actors that stopped before anyone asked.
var closedDone = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// doneChan makes the Done channel on first use: most actors are never
// asked, and a channel per connection is memory an idle server keeps.
func (a *actor) doneChan() chan struct{} {
	if p := a.done.Load(); p != nil {
		return *p
	}
	ch := make(chan struct{})
	if a.done.CompareAndSwap(nil, &ch) {
		return ch
	}
	return *a.done.Load()
}

// closeDone marks the actor stopped for Done's waiters.
func (a *actor) closeDone() {
	if p := a.done.Swap(&closedDone); p != nil && p != &closedDone {
		close(*p)
	}
}

// Loop returns the loop the actor is pinned to, or nil for a blocking actor
// and for the zero Ref.
func (r Ref) Loop() *Loop {
	if r.a == nil {
		return nil
	}
	return r.a.loop
}

// String names the actor for logs.
func (r Ref) String() string {
	if r.a == nil {
		return "actor(nil)"
	}
	return fmt.Sprintf("actor(%d)", r.a.id)
}

type actorState uint8

const (
	stateNew actorState = iota
	stateRunning
	stateStopped
)

type actor struct {
	// What every message and event touches first, in the first 32 bytes:
	// an actor is 160 bytes, so half of them start in the middle of a
	// cache line, and these are in one line either way (state was at
	// byte 64, a line of its own for every dispatch and Deliver).
	loop    *Loop      // nil for a blocking actor
	state   actorState // owned by the actor's goroutine
	stopReq bool
	busy    bool  // its code is on the loop's stack: a Deliver to it queues
	queued  int32 // envelopes to it in its loop's local queue
	impl    Actor
	// Then what a delivery touches.
	ctx       Context
	behaviors []ReceiveFunc // become stack; empty means impl.Receive

	id       uint64
	sys      *System
	g        *goMailbox                    // non-nil for a blocking actor
	done     atomic.Pointer[chan struct{}] // made lazily by Done
	watchers []*actor
	fds      []int
	dead     atomic.Bool // set when stopped; read by other goroutines
}

var actorIDs atomic.Uint64

func newActor(sys *System, l *Loop, impl Actor) *actor {
	var a *actor
	if co, ok := impl.(cellOwner); ok {
		if c := co.actorCell(); c.taken.CompareAndSwap(false, true) {
			a = &c.a
		}
	}
	if a == nil {
		a = new(actor)
	}
	a.id, a.sys, a.loop, a.impl = actorIDs.Add(1), sys, l, impl
	a.ctx.a = a
	return a
}

// ActorCell is the runtime's state of one actor, for embedding in the
// actor's own struct (by value): an actor that embeds one is spawned in it
// instead of in state allocated apart. An actor then is one object, and
// what a message touches — the state the loop checks, then the actor's own
// fields — lies together in memory: with many connections each object
// followed is a likely cache miss, and a socket actor with its handler
// were four objects per event. The zero value is ready; a cell serves the
// first actor spawned with it, and spawning the same value again allocates
// as usual. It holds no data of the actor's and has no methods to call.
type ActorCell struct {
	a     actor
	taken atomic.Bool
}

func (c *ActorCell) actorCell() *ActorCell { return c }

// cellOwner is an Actor that embeds an ActorCell.
type cellOwner interface{ actorCell() *ActorCell }

type kind uint8

const (
	kindUser kind = iota
	kindStart
	kindStop
	kindWatch
	kindUnwatch
	kindFunc
)

type envelope struct {
	to   *actor
	from *actor
	msg  any
	kind kind
}

// send routes one envelope. fromLoop is the loop of the calling goroutine when
// the caller is an actor of a loop, else nil.
func send(fromLoop *Loop, from, to *actor, msg any, k kind) {
	switch {
	case to.loop != nil && to.loop == fromLoop:
		fromLoop.local.push(to, from, msg, k)
	case to.loop != nil:
		to.loop.pushRemote(envelope{to: to, from: from, msg: msg, kind: k})
	default:
		to.g.push(envelope{to: to, from: from, msg: msg, kind: k})
		if fromLoop != nil {
			fromLoop.yield = true // the blocking actor's goroutine is runnable
		}
	}
}

// invoke delivers one envelope. It runs on the actor's goroutine; a panic in
// the actor's code propagates to the caller, which recovers it and calls
// failed (one deferred recover per queue drain, not one per message).
func (a *actor) invoke(e envelope) {
	if a.state == stateStopped {
		a.sys.deadLetters.Add(1)
		if e.kind == kindWatch && e.from != nil {
			send(a.loop, a, e.from, Terminated{Ref: Ref{a}}, kindUser)
		}
		return
	}
	a.busy = true
	a.invokeBusy(e)
	a.busy = false
}

// invokeBusy is invoke's body, run with a.busy set (failed clears it when
// the actor's code panics).
func (a *actor) invokeBusy(e envelope) {
	if a.state == stateNew {
		a.start()
		if a.state == stateStopped {
			return
		}
	}
	switch e.kind {
	case kindStart:
		return
	case kindStop:
		a.stop()
		return
	case kindWatch:
		a.watchers = append(a.watchers, e.from)
		return
	case kindUnwatch:
		for i, w := range a.watchers {
			if w == e.from {
				a.watchers = append(a.watchers[:i], a.watchers[i+1:]...)
				break
			}
		}
		return
	}
	a.ctx.sender = e.from
	switch {
	case e.kind == kindFunc:
		e.msg.(func(*Context))(&a.ctx)
	default:
		a.receive(e.msg)
	}
	a.ctx.sender = nil
	if a.stopReq {
		a.stop()
	}
}

// receive calls the current behaviour with msg.
func (a *actor) receive(msg any) {
	if n := len(a.behaviors); n > 0 {
		a.behaviors[n-1](&a.ctx, msg)
		return
	}
	a.impl.Receive(&a.ctx, msg)
}

// failed handles a panic recovered from the actor's code: log it and stop
// the actor, which closes what it owns.
func (a *actor) failed(r any) {
	a.sys.panics.Add(1)
	a.sys.logger.Error("netio: actor panicked; stopping it", "actor", a.id, "panic", r)
	a.ctx.sender = nil
	a.busy = false
	a.stop()
}

// safely runs f and turns a panic into a stop of the actor.
// recover is called only when f did not return: it costs more than the
// rest on a socket actor's path.
func (a *actor) safely(f func()) {
	done := false
	defer func() {
		if !done {
			r := recover()
			a.sys.panics.Add(1)
			a.sys.logger.Error("netio: actor panicked; stopping it", "actor", a.id, "panic", r)
			a.stopReq = true
		}
	}()
	f()
	done = true
}

func (a *actor) start() {
	a.state = stateRunning
	if a.loop != nil {
		a.loop.actors[a] = struct{}{}
	}
	if ps, ok := a.impl.(PreStarter); ok {
		a.safely(func() { ps.PreStart(&a.ctx) })
		if a.stopReq {
			a.stop()
		}
	}
}

func (a *actor) stop() {
	if a.state == stateStopped {
		return
	}
	if a.state == stateNew {
		a.state = stateRunning
	}
	a.stopReq = false
	if ps, ok := a.impl.(PostStopper); ok {
		a.safely(func() { ps.PostStop(&a.ctx) })
	}
	a.state = stateStopped
	a.dead.Store(true)
	for _, fd := range a.fds {
		a.loop.forget(fd)
		closeFD(fd)
	}
	a.fds = nil
	for _, w := range a.watchers {
		send(a.loop, a, w, Terminated{Ref: Ref{a}}, kindUser)
	}
	a.watchers = nil
	a.behaviors = nil
	if a.loop != nil {
		delete(a.loop.actors, a)
	}
	a.closeDone()
}

// discard stops an actor that never started because its loop had shut down:
// PostStop still runs (on the caller's goroutine; nothing else can touch the
// actor) so that it releases what it was given.
func (a *actor) discard() {
	a.state = stateRunning
	if ps, ok := a.impl.(PostStopper); ok {
		a.safely(func() { ps.PostStop(&a.ctx) })
	}
	a.state = stateStopped
	a.dead.Store(true)
	a.closeDone()
}

// Context is an actor's handle on the runtime. It is valid only on the actor's
// own goroutine, during Receive, PreStart, PostStop or an FDHandler callback.
type Context struct {
	a      *actor
	sender *actor
}

// Self returns the actor's own Ref.
func (c *Context) Self() Ref { return Ref{c.a} }

// Sender returns the sender of the current message; zero when it came from
// outside any actor (Ref.Tell) or from a socket event.
func (c *Context) Sender() Ref { return Ref{c.sender} }

// System returns the system the actor belongs to.
func (c *Context) System() *System { return c.a.sys }

// Loop returns the actor's loop, or nil for a blocking actor.
func (c *Context) Loop() *Loop { return c.a.loop }

// Logger returns the system's logger.
func (c *Context) Logger() *slog.Logger { return c.a.sys.logger }

// Now returns the time at the start of the current loop turn (cheap), or the
// wall clock for a blocking actor.
func (c *Context) Now() time.Time {
	if c.a.loop != nil {
		return c.a.loop.now
	}
	return time.Now()
}

// Tell sends msg to to, with this actor as the sender. To an actor of the same
// loop it is a local queue push.
func (c *Context) Tell(to Ref, msg any) {
	if to.a != nil {
		send(c.a.loop, c.a, to.a, msg, kindUser)
	}
}

// Forward sends msg to to, keeping the current message's sender.
func (c *Context) Forward(to Ref, msg any) {
	if to.a != nil {
		send(c.a.loop, c.sender, to.a, msg, kindUser)
	}
}

// Reply sends msg to the sender of the current message.
func (c *Context) Reply(msg any) { c.Tell(c.Sender(), msg) }

// Spawn starts an actor on the same loop as this one (a blocking actor spawns
// on the system's next loop).
func (c *Context) Spawn(a Actor) Ref {
	l := c.a.loop
	if l == nil {
		l = c.a.sys.nextLoop()
	}
	return c.SpawnOn(l, a)
}

// SpawnOn starts an actor on loop l.
func (c *Context) SpawnOn(l *Loop, impl Actor) Ref {
	a := newActor(c.a.sys, l, impl)
	send(c.a.loop, c.a, a, nil, kindStart)
	return Ref{a}
}

// Become replaces the current behaviour with f.
func (c *Context) Become(f ReceiveFunc) {
	if n := len(c.a.behaviors); n > 0 {
		c.a.behaviors[n-1] = f
		return
	}
	c.a.behaviors = append(c.a.behaviors, f)
}

// BecomeStacked pushes f on top of the current behaviour; Unbecome returns to
// the one below.
func (c *Context) BecomeStacked(f ReceiveFunc) { c.a.behaviors = append(c.a.behaviors, f) }

// Unbecome pops the behaviour pushed last; with none left, the actor's own
// Receive is used again.
func (c *Context) Unbecome() {
	if n := len(c.a.behaviors); n > 0 {
		c.a.behaviors[n-1] = nil
		c.a.behaviors = c.a.behaviors[:n-1]
	}
}

// Stop stops the actor once the current message has been handled.
func (c *Context) Stop() { c.a.stopReq = true }

// StopActor asks another actor to stop (the same as r.Stop, with this actor
// as the sender).
func (c *Context) StopActor(r Ref) {
	if r.a != nil {
		send(c.a.loop, c.a, r.a, nil, kindStop)
	}
}

// Watch asks for a [Terminated] message when r stops. Watching an actor that
// has already stopped delivers Terminated at once.
func (c *Context) Watch(r Ref) {
	if r.a != nil {
		send(c.a.loop, c.a, r.a, nil, kindWatch)
	}
}

// Unwatch cancels a Watch. A Terminated already on its way may still arrive.
func (c *Context) Unwatch(r Ref) {
	if r.a != nil {
		send(c.a.loop, c.a, r.a, nil, kindUnwatch)
	}
}

// Run queues f to run on r's goroutine as if it were a message from this
// actor: a closure message, for code that must touch another actor's state.
// It is also available as [Ref.Run] from any goroutine.
func (c *Context) Run(r Ref, f func(*Context)) {
	if r.a != nil {
		send(c.a.loop, c.a, r.a, f, kindFunc)
	}
}

// Run queues f to run on the actor's goroutine, with the actor's Context.
// Safe from any goroutine; dropped if the actor has stopped.
func (r Ref) Run(f func(*Context)) {
	if r.a != nil {
		send(nil, nil, r.a, f, kindFunc)
	}
}
