package main

import (
	"fmt"
	"os/user"
	"strconv"
	"syscall"
)

// dropPrivileges makes the process run as the named user and its primary
// group, with no supplementary groups. On Linux, Go's syscall.Setuid and
// friends apply to every thread of the process (since Go 1.16), so no
// thread keeps root.
func dropPrivileges(name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("-user: %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return fmt.Errorf("-user %s: uid %q: %w", name, u.Uid, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return fmt.Errorf("-user %s: gid %q: %w", name, u.Gid, err)
	}
	if err := syscall.Setgroups([]int{gid}); err != nil {
		return fmt.Errorf("-user %s: setgroups: %w", name, err)
	}
	if err := syscall.Setgid(gid); err != nil {
		return fmt.Errorf("-user %s: setgid: %w", name, err)
	}
	if err := syscall.Setuid(uid); err != nil {
		return fmt.Errorf("-user %s: setuid: %w", name, err)
	}
	// A process that can become root again has not dropped anything.
	if err := syscall.Setuid(0); err == nil && uid != 0 {
		return fmt.Errorf("-user %s: still able to become root after setuid", name)
	}
	return nil
}
