// Package backpressure holds the three flow-control patterns of Akka I/O's
// TCP chapter as reusable parts, so a connection handler composes them
// instead of hand-writing buffers:
//
//   - [AckWriter]: one write in flight; the next leaves when the ack of the
//     previous one returns. Incoming data is buffered meanwhile; above the
//     high watermark reading is suspended, below the low watermark it
//     resumes, above the maximum the writer reports [ErrOverflow].
//   - [NackWriter]: writes optimistically; on the first CommandFailed it asks
//     for ResumeWriting, resends everything not yet acknowledged once
//     WritingResumed arrives, stays ACK-paced for a few writes, then goes
//     optimistic again. Every byte reaches the socket once, in order.
//   - [PullReader]: reads only when asked, one chunk at a time.
//
// The three echo handlers of the chapter are built from them: [NewAckEcho],
// [NewNackEcho], [NewPullEcho].
//
// # Usage
//
// A handler owns a writer and passes every message to its Handle method
// first; Handle returns true for the writer's own events (acks, NACKs,
// WritingResumed) and false for everything else:
//
//	func (h *handler) Receive(ctx *netio.Context, msg any) {
//		if h.w.Handle(ctx, msg) {
//			return
//		}
//		switch m := msg.(type) {
//		case tcp.Received:
//			if err := h.w.Write(ctx, m.Data()); err != nil { ... }
//		}
//	}
//
// Writers copy the data given to Write into buffers they own and recycle, so
// a steady flow allocates nothing.
//
// # Limitations
//
// A writer assumes it is the only writer of its connection and runs on one
// actor: its methods may be called only from that actor.
package backpressure
