package udp

// SetFaultHook installs a fault injector on the send system calls: h is asked
// how many of want datagrams the kernel takes; fewer makes the call send that
// many (sendmmsg) or fail with EAGAIN. Call it only while no socket exists
// (before NewSystem, after Shutdown).
func SetFaultHook(h func(want int) (allow int)) { faultHook = h }
