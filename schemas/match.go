package schemas

import "strings"

// Covers reports whether the subject pattern p matches every subject that
// the pattern q matches (NATS wildcards: * one token, > the rest), as a
// stream's subjects must cover what it is asked to store.
func Covers(p, q string) bool {
	pt, qt := strings.Split(p, "."), strings.Split(q, ".")
	for i, t := range pt {
		if t == ">" {
			return i < len(qt)
		}
		if i >= len(qt) {
			return false
		}
		if t != "*" && t != qt[i] || t == "*" && qt[i] == ">" {
			return false
		}
	}
	return len(pt) == len(qt)
}

// Overlap reports whether some subject matches both patterns a and b.
func Overlap(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; ; i++ {
		switch {
		case i == len(at) && i == len(bt):
			return true
		case i == len(at) || i == len(bt):
			return false
		case at[i] == ">" || bt[i] == ">":
			return true
		case at[i] == "*" || bt[i] == "*" || at[i] == bt[i]:
			continue
		default:
			return false
		}
	}
}
