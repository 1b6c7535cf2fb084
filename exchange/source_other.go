//go:build !linux

package exchange

const oobSize = 0

// sourceOOB is empty where udpgate does not set the source address: a
// wildcard bind answers from the address the kernel picks.
func sourceOOB(dst []byte, ex Exchange) []byte { return nil }
