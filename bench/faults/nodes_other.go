//go:build !linux

package faults

import "syscall"

// faultNodeProcAttr: on systems without a parent-death signal, a child NATS
// server of the fault suite stops when its standard input, a pipe from
// the parent, reaches its end, as it does when the parent dies.
func faultNodeProcAttr() *syscall.SysProcAttr { return nil }
