package pcap

import (
	"bytes"
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/udpgate/udpgate/schemas"
)

// benchPackets is the size of BenchmarkImport's capture.
const benchPackets = 100_000

// benchCapture writes a pcap of n raw requests to port 9000, 1 ms apart,
// from 1,000 clients, 32 to 96 bytes each.
func benchCapture(b *testing.B, n int) []byte {
	var out bytes.Buffer
	w := pcapgo.NewWriterNanos(&out)
	if err := w.WriteFileHeader(snaplen, layers.LinkTypeEthernet); err != nil {
		b.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 6)
	for i := range n {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i % 1000 >> 8), byte(i % 1000)}), uint16(40000+i%1000))
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: gw4.Addr().AsSlice()}
		u := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: 9000}
		u.SetNetworkLayerForChecksum(ip)
		eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: gatewayMAC, EthernetType: layers.EthernetTypeIPv4}
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			eth, ip, u, gopacket.Payload(payload[:32+i%64])); err != nil {
			b.Fatal(err)
		}
		at := t0.Add(time.Duration(i) * time.Millisecond)
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: at, CaptureLength: len(buf.Bytes()), Length: len(buf.Bytes())}, buf.Bytes()); err != nil {
			b.Fatal(err)
		}
	}
	return out.Bytes()
}

// BenchmarkImport imports a 100,000-packet capture of raw requests into a
// capture stream on file storage (an embedded NATS server, same process)
// and reports packets per second, publish acknowledgements included.
func BenchmarkImport(b *testing.B) {
	capture := benchCapture(b, benchPackets)
	nc, js := testStreams(b, "udpgate")
	stream, err := js.Stream(context.Background(), schemas.StreamIn)
	if err != nil {
		b.Fatal(err)
	}
	im := &Importer{NATS: nc, Stream: schemas.StreamIn, Listeners: map[uint16]string{9000: schemas.ProtocolRaw}}
	b.ReportAllocs()
	b.SetBytes(int64(len(capture)))
	b.ResetTimer()
	for range b.N {
		st, err := im.Import(context.Background(), bytes.NewReader(capture))
		if err != nil {
			b.Fatal(err)
		}
		if st.Published != benchPackets {
			b.Fatalf("published %d of %d: %+v", st.Published, benchPackets, st)
		}
		b.StopTimer()
		if err := stream.Purge(context.Background()); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(benchPackets*b.N)/b.Elapsed().Seconds(), "packets/s")
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/import")
}

// BenchmarkDecode reads and decodes a capture of raw requests, without
// NATS: the pcap reader and Decoder alone.
func BenchmarkDecode(b *testing.B) {
	capture := benchCapture(b, 10_000)
	b.ReportAllocs()
	b.SetBytes(int64(len(capture)))
	var n int
	for range b.N {
		r, err := NewReader(bytes.NewReader(capture))
		if err != nil {
			b.Fatal(err)
		}
		var dec Decoder
		var d Datagram
		for {
			data, ci, link, err := r.Next()
			if err != nil {
				break
			}
			if dec.Decode(link, ci.Timestamp, data, &d) == OK {
				n++
			}
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "packets/s")
}
