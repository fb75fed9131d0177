//go:build !linux

package main

import "errors"

// dropPrivileges is only implemented on Linux.
func dropPrivileges(name string) error {
	return errors.New("-user is only supported on Linux")
}
