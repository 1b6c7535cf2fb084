//go:build !linux

package ingress

import (
	"errors"
	"net/netip"
)

// oobSize is 0: without Linux's packet-info options a wildcard bind answers
// from the address the kernel picks.
const oobSize = 0

func setSocketOptions(fd int, network string, rcvbuf int) error { return nil }

// control is what the control messages of one datagram say: nothing here.
type control struct {
	dst       netip.Addr
	spec      netip.Addr
	ifindex   int
	drops     uint32
	dropsSeen bool
}

func parseControl(oob []byte) control { return control{} }

var errUnsupported = errors.New("not supported on this system")

func joinGroup(fd int, group netip.Addr, ifindex int) error { return errUnsupported }

func dontFragment(fd int, v4 bool) error { return errUnsupported }
