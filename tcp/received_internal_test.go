package tcp

import "testing"

// A Received is one pointer wide, so boxing it in an interface (handing it
// to a handler as a message) allocates nothing: delivering it as a value,
// like every other event, costs what delivering a *Received did.
func TestReceivedBoxesWithoutAllocating(t *testing.T) {
	c := &conn{}
	c.rs.data = make([]byte, 64)
	var sink any
	if n := testing.AllocsPerRun(1000, func() { sink = Received{&c.rs} }); n != 0 {
		t.Fatalf("%v allocations per boxed Received, want 0", n)
	}
	if r, ok := sink.(Received); !ok || len(r.Data()) != 64 {
		t.Fatalf("boxed %T %v", sink, sink)
	}
}
