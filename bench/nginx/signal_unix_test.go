//go:build unix

package nginx

import "syscall"

// signalGroup checks whether process group pgid exists (signal 0).
func signalGroup(pgid int) error { return syscall.Kill(-pgid, 0) }
