package netio

// maxDeliverDepth bounds how deep direct deliveries nest (A delivers to B,
// which delivers to C, …) before Deliver falls back to the queue.
const maxDeliverDepth = 8

// Deliver sends msg to to, with this actor as the sender, like Tell; but
// when to is a running actor of this loop whose code is not on the stack
// and that has nothing queued, its Receive runs now, before Deliver returns:
// a direct call within this actor's turn instead of a hop through the local
// queue. Otherwise the message is queued as by Tell.
//
// The actor model holds either way: to handles one message at a time (an
// actor whose Receive, PreStart or FDHandler is running is never entered
// again; what it is sent meanwhile is queued), messages from one sender
// arrive in the order sent (a queued message is never overtaken), Become,
// Stop and death watch work as after a queued delivery, and a panic in to
// stops to, not the caller. What changes is only when to runs: the caller
// must not rely on its own code after Deliver running before to's Receive,
// so it should be the last thing the caller does with state to may see, and
// bytes passed by reference need only stay valid until Deliver returns.
//
// Socket actors use it to hand a handler its Received and its acks.
func (c *Context) Deliver(to Ref, msg any) {
	t := to.a
	if t == nil {
		return
	}
	l := c.a.loop
	if l == nil || t.loop != l || t.busy || t.queued != 0 || t.state != stateRunning || l.depth >= maxDeliverDepth {
		send(l, c.a, t, msg, kindUser)
		return
	}
	l.depth++
	l.delivered++
	t.deliver(c.a, msg)
	l.depth--
}

// deliver runs a direct delivery; a panic in the actor's code stops it.
// (recover is called only then: calling it costs more than the delivery's
// other bookkeeping).
func (a *actor) deliver(from *actor, msg any) {
	done := false
	defer func() {
		if !done {
			a.failed(recover())
		}
	}()
	a.busy = true
	a.ctx.sender = from
	a.receive(msg)
	a.ctx.sender = nil
	a.busy = false
	if a.stopReq {
		a.stop()
	}
	done = true
}

// HasQueued reports whether r, an actor of this loop, has messages waiting
// in the loop's local queue (from any sender); false for an actor of
// another loop. A socket actor uses it to take a command straight from its
// handler only when nothing the handler sent it earlier is still queued, so
// that the handler's commands keep their order.
func (c *Context) HasQueued(r Ref) bool {
	return r.a != nil && r.a.loop == c.a.loop && r.a.queued != 0
}
