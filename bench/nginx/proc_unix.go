//go:build unix

package nginx

import (
	"os"
	"syscall"
)

// terminate asks nginx's master process for a fast shutdown.
func terminate(p *os.Process) { p.Signal(syscall.SIGTERM) }

// kill kills nginx's process group: the master and its workers.
func kill(p *os.Process) {
	syscall.Kill(-p.Pid, syscall.SIGKILL)
	p.Kill()
}
