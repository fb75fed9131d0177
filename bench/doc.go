// Package bench holds the echo contenders that ioactor is measured against,
// and the benchmark suites that drive them with the shared load generator
// (internal/loadgen).
//
// # Contenders
//
//   - ioactor-ack, ioactor-nack, ioactor-pull: [backpressure.EchoServer] in
//     each flow on a [netio.System] (one loop per core);
//   - gnet: a raw gnet v2 echo with gnet's own API, multicore (one event loop
//     per core), as in gnet's README;
//   - net: a goroutine per connection with a read/write loop on a 32 KiB
//     buffer (io.Copy's size; io.Copy itself would splice on Linux).
//
// All of them set TCP_NODELAY on accepted connections (the net package and
// gnet do by default, package tcp always does).
//
// # Usage
//
// The short matrix, in process (client and server share the machine and the
// process; allocs/op counts both, and the client allocates nothing per
// message):
//
//	go test -run '^$' -bench Throughput -benchtime 1s ./bench/
//
// The full comparison, with every server in a process of its own so that its
// CPU time and RSS can be read from /proc, is cmd/bench:
//
//	go run ./cmd/bench -rounds 3 -duration 5s -plot docs/bench
//
// # Limitations
//
// Linux only. On loopback the kernel's TCP stack and the load generator take
// most of the CPU of a small machine; compare server CPU per message, not
// only throughput.
package bench
