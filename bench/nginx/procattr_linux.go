package nginx

import "syscall"

// procAttr puts nginx (master and workers) in a process group of its own,
// so that kill reaches the workers too, and has the master terminated if
// the process that started it dies without stopping it.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
