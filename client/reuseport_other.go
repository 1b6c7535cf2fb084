//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package client

import "syscall"

// reusePort is nil where SO_REUSEPORT is missing: a Conn has no watch
// socket, and replies from other addresses go unreported.
var reusePort func(network, address string, c syscall.RawConn) error
