// Command raftkv is a replicated key-value store on hashicorp/raft, with
// raft-boltdb stores and this module's raft transport (package raft), and
// a load generator for it.
//
// # Usage
//
//	raftkv node -id a -data /tmp/kv/a -raft 127.0.0.1:7001 -http 127.0.0.1:8001
//	raftkv node -id b -data /tmp/kv/b -raft 127.0.0.1:7002 -http 127.0.0.1:8002 -join 127.0.0.1:8001
//	raftkv cluster -n 3 -data /tmp/kv      # three nodes on loopback, in one process
//	raftkv load -nodes 127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003 -users 100 -ramp 20s -duration 30s -writes 0.5
//
// A node without state bootstraps a one-node cluster, or joins through
// -join (any member: a follower forwards the join to the leader). A node
// with state in -data rejoins from its log, on the same -raft address.
// `cluster` starts -n nodes that bootstrap together with one static
// configuration; it records their (free, loopback) ports in
// DIR/cluster.json, so a restart finds them again, and prints the nodes'
// HTTP addresses as the -nodes argument of `load`. SIGINT or SIGTERM stops
// a node gracefully: it hands leadership over if it leads, drains the
// requests in progress (-drain-timeout), then shuts raft and the
// transport down; a second signal kills the process.
//
// `load` ramps up to -users concurrent users over -ramp, each in a closed
// loop: a random node, a random key among -keys, a write with probability
// -writes (else a read). It prints a progress line each second on a
// terminal (ops/s, p50, p99, failures) and, at the end, a Markdown table
// of throughput, p50 / p99 / p99.9 latency and failures per time bucket.
// A request fails on a transport error, a status other than 204 (PUT) or
// 200 / 404 (GET), or after -timeout.
//
// # HTTP API
//
//	PUT /kv/{key}          body: the value. 204 once committed and applied on the leader.
//	GET /kv/{key}          200 with the value, or 404. Linearizable.
//	GET /kv/{key}?stale=1  the same from the node's own state: fast, possibly stale.
//	GET /status            the node's view: state, term, leader, indexes, voters, members.
//	POST /join             {"id","raft_addr","http_addr"}: add a voter (used by -join).
//	GET /metrics           Prometheus.
//
// A follower forwards PUT, GET and POST /join to the leader over HTTP,
// with -request-timeout; the leader refuses to forward a forwarded request
// again. Failures are 503 (no leader, leadership lost, shutting down),
// 502 (the leader did not answer), 504 (timeout). A failed write carries
// X-Raftkv-Not-Applied: 1 when it certainly did not reach the log (raft
// refused it before appending, or nobody was asked) and may be retried;
// without it, its outcome is unknown.
//
// # Consistency
//
// Writes go through the leader's log: raft.Apply returns once the entry is
// committed and the leader's FSM applied it. Linearizable reads do not
// write to the log. The leader of term t answers from its FSM once
//
//  1. its FSM has applied a command of term t (on election the node applies
//     a no-op command for this; any write of the term does as well), so
//     every entry committed before term t, which precedes it in the log,
//     is applied — and every write acknowledged in term t was applied by
//     this FSM before it was acknowledged;
//  2. raft.VerifyLeader, called after that, confirms with a quorum of
//     heartbeats that it still leads;
//  3. the term read before step 1 is still the current term, so the
//     confirmation in step 2 spoke for term t.
//
// This is raft's ReadIndex (§6.4 of Ongaro's thesis) with the wait for
// the commit index replaced by the wait for the leader's first command,
// and a round of heartbeats (shared by concurrent reads) instead of a log
// write and an fsync per read. Reading through the log would be simpler to
// argue but costs a disk write per read; the test suite checks the result
// with porcupine under leader kills and restarts.
//
// # Metrics
//
// Each node registers, on the registry main creates for it:
// ioactor_raftkv_requests_total{op,result},
// ioactor_raftkv_request_duration_seconds{op},
// ioactor_raftkv_forwards_total{result}, ioactor_raftkv_raft_state{state},
// ioactor_raftkv_raft_term, ioactor_raftkv_raft_index{kind},
// ioactor_raftkv_keys, and the transport's ioactor_raft_transport_*
// metrics, plus the Go and process collectors.
//
// # Limitations
//
// The read check is as strong as hashicorp/raft's VerifyLeader, which
// counts a heartbeat answer already in flight when the check began: a
// leader process paused for longer than the election timeout could, on
// waking, count an acknowledgement given before a newer leader was
// elected. raft's leader lease (half the election timeout here) makes
// this need a pause of the whole process between two lease checks.
//
// A demo: no authentication, no TLS, keys are one path segment, values at
// most 1 MiB, the whole state lives in memory (snapshots copy it). raft's
// own go-metrics are not bridged to Prometheus (go-metrics has one
// process-wide sink). Membership only grows: there is no remove. In
// `cluster` mode the free ports are picked, released and bound again, so
// another process could take one in between.
package main
