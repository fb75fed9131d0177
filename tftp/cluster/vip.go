package cluster

import (
	"sync/atomic"
	"time"
)

// Address is a service address that moves with leadership: a virtual IP
// on this host's interface (package internal/vip implements it). [Serve]
// acquires it after it gains leadership, before it binds the TFTP port,
// and releases it after the port is released; a node releases any copy it
// holds when it starts.
type Address interface {
	// Acquire adds the address and sends its first announcement; since
	// is when the node gained leadership.
	Acquire(since time.Time) error
	// Release deletes the address from this host, whoever added it; it
	// reports whether there was one. It is idempotent.
	Release() (bool, error)
}

// AddressStatus is what /status reports of one virtual address on this
// node's host.
type AddressStatus struct {
	Addr      string `json:"addr"`
	Interface string `json:"interface"`
	// Held: the address is on the interface (read from the kernel).
	Held bool `json:"held"`
	// Owner: this node holds it as the leader and renews it.
	Owner bool `json:"owner"`
	// ValidLifetime is the kernel's remaining valid lifetime, in seconds.
	ValidLifetime int `json:"valid_lft,omitempty"`
}

// addressStatus is the node's source of [Status.VIPs]; nil: none.
type addressStatus = atomic.Pointer[func() []AddressStatus]

// SetAddressStatus makes /status report the virtual addresses as f
// returns them.
func (n *Node) SetAddressStatus(f func() []AddressStatus) { n.vips.Store(&f) }

func (n *Node) addressStatus() []AddressStatus {
	if f := n.vips.Load(); f != nil {
		return (*f)()
	}
	return nil
}
