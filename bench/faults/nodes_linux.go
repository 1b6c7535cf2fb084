package faults

import "syscall"

// faultNodeProcAttr puts a child NATS server of the fault suite in its own
// process group, so that a terminal's interrupt reaches the parent alone
// (which kills its children), and has the kernel send it SIGTERM if the
// parent dies first: it shuts down and removes its store.
func faultNodeProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
