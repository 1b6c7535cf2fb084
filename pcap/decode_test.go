package pcap

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

var (
	client4 = netip.MustParseAddrPort("10.0.0.1:40000")
	gw4     = netip.MustParseAddrPort("10.0.0.2:9000")
	client6 = netip.MustParseAddrPort("[2001:db8::1]:40000")
	gw6     = netip.MustParseAddrPort("[2001:db8::2]:9000")
	t0      = time.Date(2026, 11, 23, 16, 36, 32, 123456789, time.UTC)
)

// ipv6Frame is an Ethernet frame with an IPv6 header whose next header is
// next, followed by rest.
func ipv6Frame(next byte, rest []byte) []byte {
	b := make([]byte, 14+40, 14+40+len(rest))
	copy(b[0:6], gatewayMAC)
	copy(b[6:12], clientMAC)
	binary.BigEndian.PutUint16(b[12:14], 0x86dd)
	ip := b[14:]
	ip[0] = 6 << 4
	binary.BigEndian.PutUint16(ip[4:6], uint16(len(rest)))
	ip[6], ip[7] = next, 64
	a, d := client6.Addr().As16(), gw6.Addr().As16()
	copy(ip[8:24], a[:])
	copy(ip[24:40], d[:])
	return append(b, rest...)
}

// udpSegment is a UDP header and payload without checksum.
func udpSegment(src, dst uint16, payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], src)
	binary.BigEndian.PutUint16(b[2:], dst)
	binary.BigEndian.PutUint16(b[4:], uint16(8+len(payload)))
	return append(b, payload...)
}

func TestDecode(t *testing.T) {
	hello := []byte("hello")
	eth4 := udpFrame(t, client4, gw4, hello)
	eth6 := udpFrame(t, client6, gw6, hello)
	ip4 := eth4[14:]
	ip6 := eth6[14:]
	vlan := append(append(append([]byte{}, eth4[:12]...), 0x81, 0x00, 0x00, 0x07, 0x08, 0x00), ip4...)
	sll := append([]byte{0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 0, 0, 1, 0x86, 0xdd}, ip6...)
	sll2 := append([]byte{0x08, 0x00, 0, 0, 0, 0, 0, 2, 0, 1, 0, 6, 2, 0, 0, 0, 0, 0, 0, 1}, ip4...)
	null := append([]byte{2, 0, 0, 0}, ip4...)
	loop6 := append([]byte{0, 0, 0, 30}, ip6...)
	padded := append(append([]byte{}, eth4...), make([]byte, 20)...)
	tcp := append([]byte{}, eth4...)
	tcp[14+9] = 6
	arp := append(append([]byte{}, eth4[:12]...), 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1)
	hopByHop := ipv6Frame(0, append([]byte{17, 0, 1, 4, 0, 0, 0, 0}, udpSegment(40000, 9000, hello)...))
	frag6 := ipv6Frame(44, append([]byte{17, 0, 0, 1, 0, 0, 0, 42}, udpSegment(40000, 9000, hello)...))
	badUDPLen := append([]byte{}, eth4...)
	binary.BigEndian.PutUint16(badUDPLen[14+20+4:], 7)
	longUDP := append([]byte{}, eth4...)
	binary.BigEndian.PutUint16(longUDP[14+20+4:], 200)

	tests := []struct {
		name     string
		link     layers.LinkType
		frame    []byte
		want     Reason
		src, dst netip.AddrPort
	}{
		{"ethernet ipv4", layers.LinkTypeEthernet, eth4, OK, client4, gw4},
		{"ethernet ipv6", layers.LinkTypeEthernet, eth6, OK, client6, gw6},
		{"802.1Q tag", layers.LinkTypeEthernet, vlan, OK, client4, gw4},
		{"ethernet padding", layers.LinkTypeEthernet, padded, OK, client4, gw4},
		{"linux cooked", layers.LinkTypeLinuxSLL, sll, OK, client6, gw6},
		{"linux cooked v2", layers.LinkTypeLinuxSLL2, sll2, OK, client4, gw4},
		{"bsd null", layers.LinkTypeNull, null, OK, client4, gw4},
		{"bsd loop ipv6", layers.LinkTypeLoop, loop6, OK, client6, gw6},
		{"raw ipv4", layers.LinkTypeRaw, ip4, OK, client4, gw4},
		{"raw ipv6", layers.LinkTypeIPv6, ip6, OK, client6, gw6},
		{"ipv6 hop-by-hop", layers.LinkTypeEthernet, hopByHop, OK, client6, gw6},
		{"tcp", layers.LinkTypeEthernet, tcp, NotUDP, netip.AddrPort{}, netip.AddrPort{}},
		{"arp", layers.LinkTypeEthernet, arp, NotIP, netip.AddrPort{}, netip.AddrPort{}},
		{"ipv6 fragment", layers.LinkTypeEthernet, frag6, Fragment, netip.AddrPort{}, netip.AddrPort{}},
		{"cut in the payload", layers.LinkTypeEthernet, eth4[:14+20+8+2], Truncated, netip.AddrPort{}, netip.AddrPort{}},
		{"cut in the ip header", layers.LinkTypeEthernet, eth4[:20], Truncated, netip.AddrPort{}, netip.AddrPort{}},
		{"cut in the ethernet header", layers.LinkTypeEthernet, eth4[:10], Truncated, netip.AddrPort{}, netip.AddrPort{}},
		{"udp length below 8", layers.LinkTypeEthernet, badUDPLen, Malformed, netip.AddrPort{}, netip.AddrPort{}},
		{"udp length beyond the packet", layers.LinkTypeEthernet, longUDP, Truncated, netip.AddrPort{}, netip.AddrPort{}},
		{"unknown link type", layers.LinkType(147), eth4, UnsupportedLink, netip.AddrPort{}, netip.AddrPort{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var dec Decoder
			var d Datagram
			got := dec.Decode(tt.link, t0, tt.frame, &d)
			if got != tt.want {
				t.Fatalf("Decode = %v, want %v", got, tt.want)
			}
			if got != OK {
				return
			}
			if d.Src != tt.src || d.Dst != tt.dst || !bytes.Equal(d.Payload, hello) || !d.Time.Equal(t0) {
				t.Errorf("got %v -> %v %q at %v, want %v -> %v %q", d.Src, d.Dst, d.Payload, d.Time, tt.src, tt.dst, hello)
			}
		})
	}
}

// fragments returns the Ethernet frames of one UDP datagram split into
// IPv4 fragments of at most size bytes of IP payload each.
func fragments(t testing.TB, id uint16, payload []byte, size int) [][]byte {
	t.Helper()
	seg := udpSegment(client4.Port(), gw4.Port(), payload)
	var out [][]byte
	for off := 0; off < len(seg); off += size {
		end := min(off+size, len(seg))
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: id, Protocol: layers.IPProtocolUDP,
			SrcIP: client4.Addr().AsSlice(), DstIP: gw4.Addr().AsSlice(), FragOffset: uint16(off / 8)}
		if end < len(seg) {
			ip.Flags = layers.IPv4MoreFragments
		}
		eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: gatewayMAC, EthernetType: layers.EthernetTypeIPv4}
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			eth, ip, gopacket.Payload(seg[off:end])); err != nil {
			t.Fatal(err)
		}
		out = append(out, append([]byte(nil), buf.Bytes()...))
	}
	return out
}

func TestDecodeReassemblesIPv4Fragments(t *testing.T) {
	payload := bytes.Repeat([]byte("0123456789abcdef"), 200) // 3200 bytes: 3 fragments of 1480
	frags := fragments(t, 77, payload, 1480)
	if len(frags) != 3 {
		t.Fatalf("%d fragments, want 3", len(frags))
	}
	var dec Decoder
	var d Datagram
	for i, f := range [][]byte{frags[2], frags[0]} { // out of order
		if r := dec.Decode(layers.LinkTypeEthernet, t0, f, &d); r != Held {
			t.Fatalf("fragment %d: %v, want held", i, r)
		}
	}
	if r := dec.Decode(layers.LinkTypeEthernet, t0, frags[1], &d); r != OK {
		t.Fatalf("last fragment: %v, want ok", r)
	}
	if !bytes.Equal(d.Payload, payload) || d.Src != client4 || d.Dst != gw4 {
		t.Errorf("reassembled %d bytes %v -> %v, want %d bytes %v -> %v", len(d.Payload), d.Src, d.Dst, len(payload), client4, gw4)
	}
	if dec.Reassembled != 1 || dec.Reused != 3 || dec.Dropped != 0 {
		t.Errorf("reassembled %d from %d, dropped %d; want 1 from 3, 0", dec.Reassembled, dec.Reused, dec.Dropped)
	}

	// An incomplete datagram's fragments are dropped at the end.
	frags = fragments(t, 78, payload, 1480)
	dec.Decode(layers.LinkTypeEthernet, t0, frags[0], &d)
	dec.Decode(layers.LinkTypeEthernet, t0, frags[2], &d)
	dec.Flush()
	if dec.Dropped != 2 {
		t.Errorf("dropped %d, want 2", dec.Dropped)
	}
}

func FuzzDecode(f *testing.F) {
	hello := []byte("hello")
	f.Add(uint16(layers.LinkTypeEthernet), udpFrame(f, client4, gw4, hello))
	f.Add(uint16(layers.LinkTypeEthernet), udpFrame(f, client6, gw6, hello))
	f.Add(uint16(layers.LinkTypeRaw), udpFrame(f, client4, gw4, hello)[14:])
	f.Add(uint16(layers.LinkTypeLinuxSLL2), append(make([]byte, 20), udpFrame(f, client6, gw6, hello)[14:]...))
	f.Add(uint16(layers.LinkTypeEthernet), ipv6Frame(0, append([]byte{17, 0, 1, 4, 0, 0, 0, 0}, udpSegment(1, 2, hello)...)))
	for _, fr := range fragments(f, 9, bytes.Repeat([]byte("x"), 100), 48) {
		f.Add(uint16(layers.LinkTypeEthernet), fr)
	}
	f.Fuzz(func(t *testing.T, link uint16, frame []byte) {
		var dec Decoder
		var d Datagram
		// Twice, so that a fragment meets its own copy.
		for range 2 {
			if r := dec.Decode(layers.LinkType(link), t0, frame, &d); r == OK {
				if len(d.Payload) > len(frame) && dec.Reassembled == 0 {
					t.Fatalf("payload of %d bytes from a frame of %d", len(d.Payload), len(frame))
				}
				if !d.Src.IsValid() || !d.Dst.IsValid() {
					t.Fatalf("invalid addresses %v -> %v", d.Src, d.Dst)
				}
			} else if r >= numReasons {
				t.Fatalf("reason %d", r)
			}
		}
		dec.Flush()
	})
}
