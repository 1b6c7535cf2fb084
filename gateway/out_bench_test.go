package gateway

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// What push=on adds to the read loop of a listener: recording the
// datagram's source in the peer table (the listener's Tap). A listener
// without push=on has no Tap and pays nothing.

func BenchmarkPeersRecordOneSource(b *testing.B) {
	pt := newPeers(0, DefaultPushWindow, 10)
	remote := netip.MustParseAddrPort("192.0.2.7:40000")
	local := netip.MustParseAddrPort("198.51.100.1:9000")
	b.ReportAllocs()
	now := time.Now().UnixNano()
	for b.Loop() {
		now += 1000
		pt.record(remote, local, now, 64)
	}
}

// Many sources: every datagram from another address, evicting.
func BenchmarkPeersRecordManySources(b *testing.B) {
	pt := newPeers(0, DefaultPushWindow, 10)
	local := netip.MustParseAddrPort("198.51.100.1:9000")
	b.ReportAllocs()
	now := time.Now().UnixNano()
	i := uint32(0)
	for b.Loop() {
		i++
		now += 1000
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		pt.record(netip.AddrPortFrom(a, uint16(i)), local, now, 64)
	}
}

// The whole round trip through a raw listener with push=on (compare with
// BenchmarkRoundTripGateway, the same without).
func BenchmarkRoundTripGatewayPush(b *testing.B) {
	s := natstest.RunServer(b)
	g := &Gateway{NATS: natstest.Connect(b, s), Node: "node-1"}
	c, err := ingress.Listen(context.Background(), "udp4", "127.0.0.1:0", 0)
	if err != nil {
		b.Fatal(err)
	}
	g.Listeners = append(g.Listeners, Listener{Conn: c, Protocol: schemas.ProtocolRaw, Push: true})
	serveGateway(b, g)
	addr := c.LocalAddr().(*net.UDPAddr)
	contractWorker(b, s, "echo", schemas.InSubject("udpgate", uint16(addr.Port)), func(m *nats.Msg) []byte { return m.Data })
	roundTrips(b, addr)
}
