package pcap

import (
	"encoding/binary"
	"net"
	"net/netip"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/ip4defrag"
	"github.com/gopacket/gopacket/layers"
)

// Datagram is one UDP datagram found in a capture.
type Datagram struct {
	Time    time.Time
	Src     netip.AddrPort // the sender
	Dst     netip.AddrPort // where it was sent
	Payload []byte         // the UDP payload; aliases the frame or a reassembly buffer
}

// Reason is what Decode made of a frame: a datagram (OK), a fragment held
// for reassembly, or why the frame is skipped.
type Reason uint8

// Reasons returned by Decode.
const (
	OK              Reason = iota // a datagram
	Held                          // an IPv4 fragment, taken by the reassembler (Decoder.Dropped counts those that make no datagram)
	NotIP                         // the link layer carries something else (ARP, LLDP, ...)
	NotUDP                        // an IP packet of another protocol (TCP, ICMP, ...)
	Fragment                      // an IPv6 fragment: not reassembled
	Truncated                     // the capture holds fewer bytes than the headers announce
	Malformed                     // IP or UDP headers that do not parse
	UnsupportedLink               // a link type the decoder does not know
	numReasons
)

var reasonNames = [numReasons]string{
	OK: "ok", Held: "held", NotIP: "not IP", NotUDP: "not UDP", Fragment: "fragment",
	Truncated: "truncated", Malformed: "malformed", UnsupportedLink: "unsupported link type",
}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "reason?"
}

// fragmentTimeout is how long an incomplete IPv4 datagram's fragments are
// kept, in capture time: Linux's ipfrag_time.
const fragmentTimeout = 30 * time.Second

// Decoder finds the UDP datagram in link-layer frames: Ethernet (with
// 802.1Q/802.1ad tags), Linux cooked captures (SLL, SLL2), BSD loopback and
// raw IP; then IPv4 (with IPv6 extension headers skipped) and UDP. IPv4
// fragments are reassembled with gopacket's ip4defrag (RFC 791 keys; an
// incomplete datagram is dropped 30 s of capture time after its last
// fragment); IPv6 fragments are skipped. UDP checksums are not verified:
// captures taken on the sending host often hold checksums its network card
// fills in later. The zero value is ready to use; it is not safe for
// concurrent use.
type Decoder struct {
	defrag *ip4defrag.IPv4Defragmenter
	held   map[fragKey]heldFrags // fragments given to defrag, per datagram
	ip4    layers.IPv4
	seen   int

	// Reassembled counts datagrams rebuilt from fragments, Reused the
	// fragments they took, and Dropped the fragments that made no datagram
	// (refused, timed out, or left when Flush is called).
	Reassembled, Reused, Dropped uint64
}

type fragKey struct {
	src, dst [4]byte
	id       uint16
	proto    uint8
}

type heldFrags struct {
	n    int
	last time.Time
}

// Decode finds the UDP datagram in frame, a frame of link type link read at
// at. On OK, d holds the datagram; its Payload aliases frame, or a buffer of
// the decoder's for a reassembled datagram.
func (dec *Decoder) Decode(link layers.LinkType, at time.Time, frame []byte, d *Datagram) Reason {
	b, ethertype, r := linkLayer(link, frame)
	if r != OK {
		return r
	}
	switch ethertype {
	case 0x0800:
		return dec.ipv4(b, at, d)
	case 0x86dd:
		return ipv6(b, at, d)
	}
	return NotIP
}

// linkLayer strips the link-layer header and returns the network packet
// with its EtherType (0x0800 IPv4, 0x86dd IPv6).
func linkLayer(link layers.LinkType, b []byte) ([]byte, uint16, Reason) {
	switch link {
	case layers.LinkTypeEthernet:
		if len(b) < 14 {
			return nil, 0, Truncated
		}
		et := binary.BigEndian.Uint16(b[12:14])
		b = b[14:]
		for et == 0x8100 || et == 0x88a8 || et == 0x9100 { // VLAN tags
			if len(b) < 4 {
				return nil, 0, Truncated
			}
			et = binary.BigEndian.Uint16(b[2:4])
			b = b[4:]
		}
		return b, et, OK
	case layers.LinkTypeLinuxSLL:
		if len(b) < 16 {
			return nil, 0, Truncated
		}
		return b[16:], binary.BigEndian.Uint16(b[14:16]), OK
	case layers.LinkTypeLinuxSLL2:
		if len(b) < 20 {
			return nil, 0, Truncated
		}
		return b[20:], binary.BigEndian.Uint16(b[0:2]), OK
	case layers.LinkTypeNull, layers.LinkTypeLoop:
		if len(b) < 4 {
			return nil, 0, Truncated
		}
		// AF_ value in the capturing host's byte order (Null) or network
		// order (Loop): 2 is IPv4; 10, 24, 28 and 30 are IPv6 somewhere.
		family := binary.LittleEndian.Uint32(b)
		if family > 0xffff {
			family = binary.BigEndian.Uint32(b)
		}
		switch family {
		case 2:
			return b[4:], 0x0800, OK
		case 10, 24, 28, 30:
			return b[4:], 0x86dd, OK
		}
		return nil, 0, NotIP
	case layers.LinkTypeRaw, layers.LinkTypeIPv4, layers.LinkTypeIPv6, 12, 14: // 12, 14: DLT_RAW on some systems
		if len(b) < 1 {
			return nil, 0, Truncated
		}
		switch b[0] >> 4 {
		case 4:
			return b, 0x0800, OK
		case 6:
			return b, 0x86dd, OK
		}
		return nil, 0, NotIP
	}
	return nil, 0, UnsupportedLink
}

func (dec *Decoder) ipv4(b []byte, at time.Time, d *Datagram) Reason {
	if len(b) < 20 {
		return Truncated
	}
	ihl := int(b[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(b[2:4]))
	switch {
	case b[0]>>4 != 4 || ihl < 20 || total < ihl:
		return Malformed
	case len(b) < ihl || len(b) < total:
		return Truncated
	}
	b = b[:total] // without the link layer's padding
	proto := b[9]
	src := netip.AddrFrom4([4]byte(b[12:16]))
	dst := netip.AddrFrom4([4]byte(b[16:20]))
	flagsOffset := binary.BigEndian.Uint16(b[6:8])
	if flagsOffset&0x3fff != 0 { // more fragments, or an offset
		if proto != 17 {
			return NotUDP
		}
		return dec.fragment(b, at, d)
	}
	if proto != 17 {
		return NotUDP
	}
	return udp(b[ihl:], src, dst, at, d)
}

// fragment gives an IPv4 fragment to the defragmenter and decodes the
// datagram once it is complete.
func (dec *Decoder) fragment(b []byte, at time.Time, d *Datagram) Reason {
	if dec.defrag == nil {
		dec.defrag = ip4defrag.NewIPv4Defragmenter()
		dec.held = make(map[fragKey]heldFrags)
	}
	if dec.seen++; dec.seen%1024 == 0 {
		dec.expire(at)
	}
	ip := &dec.ip4
	if err := ip.DecodeFromBytes(b, gopacket.NilDecodeFeedback); err != nil {
		return Malformed
	}
	// ip4defrag keeps the fragment: give it its own copy of the bytes.
	own := *ip
	own.BaseLayer = layers.BaseLayer{Payload: append([]byte(nil), ip.Payload...)}
	own.SrcIP = append(net.IP(nil), ip.SrcIP...)
	own.DstIP = append(net.IP(nil), ip.DstIP...)
	own.Options = nil
	key := fragKey{src: [4]byte(b[12:16]), dst: [4]byte(b[16:20]), id: ip.Id, proto: b[9]}
	out, err := dec.defrag.DefragIPv4WithTimestamp(&own, at)
	h := dec.held[key]
	switch {
	case err != nil:
		// The defragmenter dropped this datagram's fragments.
		dec.Dropped += uint64(h.n) + 1
		delete(dec.held, key)
		return Held
	case out == nil:
		dec.held[key] = heldFrags{n: h.n + 1, last: at}
		return Held
	}
	delete(dec.held, key)
	dec.Reassembled++
	dec.Reused += uint64(h.n) + 1
	src := netip.AddrFrom4(key.src)
	dst := netip.AddrFrom4(key.dst)
	return udp(out.Payload, src, dst, at, d)
}

// expire drops the fragments of datagrams not completed within
// fragmentTimeout of capture time.
func (dec *Decoder) expire(now time.Time) {
	cutoff := now.Add(-fragmentTimeout)
	dec.defrag.DiscardOlderThan(cutoff)
	for k, h := range dec.held {
		if h.last.Before(cutoff) {
			dec.Dropped += uint64(h.n)
			delete(dec.held, k)
		}
	}
}

// Flush drops the fragments of datagrams still incomplete, at the end of a
// capture, and counts them in Dropped.
func (dec *Decoder) Flush() {
	for k, h := range dec.held {
		dec.Dropped += uint64(h.n)
		delete(dec.held, k)
	}
	if dec.defrag != nil {
		dec.defrag = ip4defrag.NewIPv4Defragmenter()
	}
}

func ipv6(b []byte, at time.Time, d *Datagram) Reason {
	if len(b) < 40 {
		return Truncated
	}
	if b[0]>>4 != 6 {
		return Malformed
	}
	plen := int(binary.BigEndian.Uint16(b[4:6]))
	if plen == 0 {
		return Malformed // a jumbogram, or nothing: no UDP datagram either way
	}
	if len(b) < 40+plen {
		return Truncated
	}
	src := netip.AddrFrom16([16]byte(b[8:24]))
	dst := netip.AddrFrom16([16]byte(b[24:40]))
	next := b[6]
	p := b[40 : 40+plen]
	for {
		switch next {
		case 17:
			return udp(p, src, dst, at, d)
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(p) < 8 {
				return Truncated
			}
			n := (int(p[1]) + 1) * 8
			if len(p) < n {
				return Truncated
			}
			next, p = p[0], p[n:]
		case 51: // authentication header
			if len(p) < 8 {
				return Truncated
			}
			n := (int(p[1]) + 2) * 4
			if len(p) < n {
				return Truncated
			}
			next, p = p[0], p[n:]
		case 44:
			return Fragment
		default:
			return NotUDP
		}
	}
}

func udp(b []byte, src, dst netip.Addr, at time.Time, d *Datagram) Reason {
	if len(b) < 8 {
		return Truncated
	}
	n := int(binary.BigEndian.Uint16(b[4:6]))
	switch {
	case n < 8:
		return Malformed
	case n > len(b):
		return Truncated
	}
	*d = Datagram{
		Time:    at,
		Src:     netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[0:2])),
		Dst:     netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[2:4])),
		Payload: b[8:n],
	}
	return OK
}
