package bench

import (
	"context"
	"errors"
	"net"
)

// Echo is a plain UDP echo server: the baseline of the suite's udp-echo
// cases. Serve answers every datagram with itself, from one goroutine with
// one reused buffer, as a minimal Go UDP server does.
type Echo struct {
	// Conn is the bound socket; Serve closes it.
	Conn *net.UDPConn
	// Drop, if not nil, is called with each datagram's number (from 0)
	// and drops the datagram unanswered when it returns true.
	Drop func(n int) bool
}

// Serve answers datagrams until ctx ends, then returns nil.
func (e *Echo) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { e.Conn.Close() })
	defer stop()
	defer e.Conn.Close()
	buf := make([]byte, 65536)
	for n := 0; ; n++ {
		size, from, err := e.Conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			continue
		}
		if e.Drop != nil && e.Drop(n) {
			continue
		}
		e.Conn.WriteToUDPAddrPort(buf[:size], from)
	}
}
