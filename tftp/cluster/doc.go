// Package cluster is the replicated mode of the TFTP server: nodes form a
// hashicorp/raft cluster, the leader is the singleton that holds the TFTP
// port, and every transfer's identity and progress is committed through raft
// so that the next leader can finish it from the same address and port.
//
// # Usage
//
// [StartNode] starts a member: alone (a new cluster), or joining any
// member's HTTP address (like a seed node). [Node.Leadership] tells the
// owner when to bind and when to unbind the TFTP port; [Node.Begin],
// [Node.Progress] and [Node.End] replicate a transfer's record.
//
// # Limitations
//
// Across hosts the TFTP address moves with the leader: [ServeConfig.Address]
// (a virtual IP, package internal/vip) is acquired before the port is bound
// and released after it is; on one host every node binds the same loopback
// address in turn.
package cluster
