package ingress

import (
	"context"
	"net"
	"testing"
	"time"
)

// TestReceiveBufferOverflowReported fills a tiny receive buffer with a
// burst nobody reads, then reads: the kernel's SO_RXQ_OVFL count of the
// datagrams it dropped arrives with the first datagram queued after the
// drops.
func TestReceiveBufferOverflowReported(t *testing.T) {
	c, err := Listen(context.Background(), "udp4", "127.0.0.1:0", 1) // the kernel's minimum
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cl, err := net.DialUDP("udp4", nil, c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	msg := make([]byte, 512)
	const burst = 200
	for range burst {
		cl.Write(msg)
	}
	buf, oob := make([]byte, 1024), make([]byte, oobSize)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	// Each round frees room for one datagram and sends one; the queued
	// burst drains, and the datagrams sent after it carry the count.
	for range burst + 1 {
		_, oobn, _, _, err := c.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		if ctl := parseControl(oob[:oobn]); ctl.dropsSeen {
			if ctl.drops == 0 || ctl.drops >= burst {
				t.Fatalf("drops = %d, want 1..%d", ctl.drops, burst-1)
			}
			if !ctl.dst.IsValid() {
				t.Error("no destination address next to the drop count")
			}
			return
		}
		cl.Write(msg)
	}
	t.Fatal("the kernel reported no drops")
}

// BenchmarkReadDatagram measures the read loop's first steps for one
// datagram on a wildcard socket: ReadMsgUDPAddrPort with its control
// messages (IP_PKTINFO, SO_RXQ_OVFL) and parseControl. Each round sends
// the datagram it reads, so the time includes one send.
func BenchmarkReadDatagram(b *testing.B) {
	c, err := Listen(context.Background(), "udp4", "0.0.0.0:0", 0)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	port := c.LocalAddr().(*net.UDPAddr).Port
	cl, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	msg := make([]byte, 64)
	buf, oob := make([]byte, DefaultMaxDatagram+1), make([]byte, oobSize)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cl.Write(msg); err != nil {
			b.Fatal(err)
		}
		_, oobn, _, _, err := c.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			b.Fatal(err)
		}
		if ctl := parseControl(oob[:oobn]); !ctl.dst.IsValid() {
			b.Fatal("no destination address")
		}
	}
}
