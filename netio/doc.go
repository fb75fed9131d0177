// Package netio is the runtime of ioactor: event loops on epoll, actors pinned
// to those loops, and the plumbing that lets socket actors (package tcp, package
// udp) talk to their handlers through messages.
//
// # Model
//
// A [System] owns a fixed set of [Loop]s, one per core by default. Each loop is
// one goroutine blocked in epoll_wait; it runs the actors pinned to it, the
// file descriptors they registered, and their timers. An [Actor] is a value
// with a Receive method; messages are plain Go values matched with a type
// switch. A [Ref] names an actor and is safe to copy and share.
//
//   - A message between two actors of the same loop ([Context.Tell]) is a push
//     onto the loop's local queue: no lock, no goroutine switch, drained in the
//     same loop turn.
//   - [Context.Deliver] is a Tell that, to an actor of the same loop that is
//     not running and has nothing queued, calls its Receive at once (a direct
//     call instead of a queue hop); otherwise it queues. Socket actors hand
//     their handlers data and acks this way.
//   - [Ref.Tell] is safe from any goroutine: it appends to the loop's remote
//     queue under a mutex and wakes the loop through an eventfd, at most one
//     write per wake-up (a CAS coalesces concurrent senders).
//   - Messages from one sender to one receiver arrive in the order they were
//     sent, provided the sender uses one path (Context.Tell and
//     Context.Deliver, or Ref.Tell).
//   - [Context.Become], [Context.BecomeStacked] and [Context.Unbecome] swap
//     behaviour; [Context.Stop] stops; [Context.Watch] delivers [Terminated].
//   - [Context.After] and [Context.Every] are per-loop timers.
//   - A panic in an actor is recovered, logged, and stops that actor: its
//     PostStop runs and every file descriptor it registered is closed. The
//     loop carries on.
//   - [System.SpawnBlocking] runs an actor on a goroutine of its own, for work
//     that blocks (disk, DNS); it answers with messages like any other actor.
//   - An actor that embeds an [ActorCell] is spawned in it: its runtime
//     state and its own fields are one object (one allocation, and with
//     many actors one cache miss fewer per message). tcp's connections and
//     the echo handlers of package backpressure do.
//
// # Who may call what
//
// Methods of [Context] and of [Timer] may be called only from the actor that
// owns them, inside Receive, PreStart, PostStop or an [FDHandler] callback.
// [Ref] methods and [System] methods are safe from any goroutine.
//
// # Sockets
//
// Socket actors register file descriptors with [Context.Register]. The loop
// calls the [FDHandler] when the descriptor is ready and, after each call,
// drains its local queue completely before looking at the next descriptor.
// That invariant is what lets a socket actor read into the loop's shared buffer
// ([Loop.ReadBuffer]) and hand the bytes to a handler of the same loop without
// a copy: the bytes stay valid until that handler's Receive returns.
//
// # Cancellation
//
// [System.Shutdown] stops every actor (closing every descriptor they own),
// ends every loop and every blocking actor, and returns once all goroutines
// the system started have returned, or when its context is done.
//
// # Limitations
//
// Linux only (epoll, eventfd). There is no supervision hierarchy: a parent
// that cares about a child watches it.
package netio
