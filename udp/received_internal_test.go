package udp

import (
	"net/netip"
	"testing"
)

// A Received is one pointer wide, so boxing it in an interface (handing it
// to a handler as a message) allocates nothing: delivering it as a value,
// like every other event, costs what delivering a *Received did.
func TestReceivedBoxesWithoutAllocating(t *testing.T) {
	d := &datagram{data: make([]byte, 64), sender: netip.MustParseAddrPort("127.0.0.1:69")}
	var sink any
	if n := testing.AllocsPerRun(1000, func() { sink = Received{d} }); n != 0 {
		t.Fatalf("%v allocations per boxed Received, want 0", n)
	}
	if r, ok := sink.(Received); !ok || len(r.Data()) != 64 || r.Sender().Port() != 69 {
		t.Fatalf("boxed %T %v", sink, sink)
	}
	var zero Received
	if zero.Data() != nil || zero.Sender().IsValid() {
		t.Fatal("the zero Received is not empty")
	}
}
