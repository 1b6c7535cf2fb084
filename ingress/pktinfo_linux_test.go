package ingress

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
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

// TestGroupSource: a datagram sent to an IPv4 group or broadcast address
// is answered from the interface's address its IP_PKTINFO names
// (ipi_spec_dst), an IPv6 group's from an address of the interface the
// kernel picks; a datagram sent to the node itself is answered from where
// it was sent.
func TestGroupSource(t *testing.T) {
	v4 := func(dst, spec string) []byte {
		b := make([]byte, unix.CmsgSpace(unix.SizeofInet4Pktinfo))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		p := (*unix.Inet4Pktinfo)(unsafe.Pointer(&b[unix.CmsgLen(0)]))
		p.Ifindex, p.Addr, p.Spec_dst = 3, netip.MustParseAddr(dst).As4(), netip.MustParseAddr(spec).As4()
		return b
	}
	v6 := func(dst string) []byte {
		b := make([]byte, unix.CmsgSpace(unix.SizeofInet6Pktinfo))
		h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
		h.Level, h.Type = unix.IPPROTO_IPV6, unix.IPV6_PKTINFO
		h.SetLen(unix.CmsgLen(unix.SizeofInet6Pktinfo))
		p := (*unix.Inet6Pktinfo)(unsafe.Pointer(&b[unix.CmsgLen(0)]))
		p.Ifindex, p.Addr = 3, netip.MustParseAddr(dst).As16()
		return b
	}
	for _, tc := range []struct {
		name string
		oob  []byte
		from string // "" for none
	}{
		{"IPv4 group", v4("224.0.1.187", "10.0.0.1"), "10.0.0.1:5683"},
		{"IPv4 subnet broadcast", v4("10.0.0.255", "10.0.0.1"), "10.0.0.1:5683"},
		{"IPv4 limited broadcast", v4("255.255.255.255", "10.0.0.1"), "10.0.0.1:5683"},
		{"IPv4 unicast", v4("10.0.0.1", "10.0.0.1"), ""},
		{"IPv6 group", v6("ff02::fd"), "[::]:5683"},
		{"IPv6 unicast", v6("2001:db8::1"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctl := parseControl(tc.oob)
			if ctl.ifindex != 3 {
				t.Errorf("ifindex %d, want 3", ctl.ifindex)
			}
			from, ok := groupSource(ctl, 5683)
			if got := from.String(); ok != (tc.from != "") || ok && got != tc.from {
				t.Errorf("groupSource = %s, %v; want %q", got, ok, tc.from)
			}
		})
	}
}
