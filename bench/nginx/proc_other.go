//go:build !unix

package nginx

import (
	"os"
	"syscall"
)

func procAttr() *syscall.SysProcAttr { return nil }

func terminate(p *os.Process) { p.Kill() }

func kill(p *os.Process) { p.Kill() }
