//go:build unix && !linux

package nginx

import "syscall"

// procAttr puts nginx (master and workers) in a process group of its own,
// so that kill reaches the workers too.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
