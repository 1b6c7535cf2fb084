//go:build !linux

package client

import (
	"errors"
	"net"
)

var errUnsupported = errors.New("not supported on this system")

func dontFragment(c *net.UDPConn, v6 bool) error { return errUnsupported }

func pathMTU(c *net.UDPConn, v6 bool) (int, error) { return 0, errUnsupported }

func broadcast(c *net.UDPConn) error { return errUnsupported }
