//go:build !linux

package ingress

import "net/netip"

// oobSize is 0: without Linux's packet-info options a wildcard bind answers
// from the address the kernel picks.
const oobSize = 0

func setSocketOptions(fd int, network string, rcvbuf int) error { return nil }

func parseDestination(oob []byte) (netip.Addr, int, bool) { return netip.Addr{}, 0, false }
