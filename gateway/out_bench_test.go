package gateway

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/exchange"
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

// BenchmarkReadLoop measures a raw listener's read loop: a client sends
// b.N 64-byte datagrams, keeping at most 32 unread, and the benchmark
// waits until the listener has read them all (an ingest-only listener,
// so that no exchange is opened). The time per datagram includes the client's send; compare
// plain with push, which records each source in the peer table.
func BenchmarkReadLoop(b *testing.B) {
	for _, push := range []bool{false, true} {
		name := "plain"
		if push {
			name = "push"
		}
		b.Run(name, func(b *testing.B) {
			s := natstest.RunServer(b)
			conn, err := ingress.Listen(context.Background(), "udp4", "127.0.0.1:0", 0)
			if err != nil {
				b.Fatal(err)
			}
			in := &ingress.Server{Conn: conn, NATS: natstest.Connect(b, s), Table: exchangeTable(), Node: "bench", NoReply: true}
			if push {
				in.Tap = newOut(conn, nil, Push{}, 0, nil).tap(nil)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- in.Serve(ctx) }()
			defer func() { cancel(); <-done }()
			c, err := net.DialUDP("udp4", nil, conn.LocalAddr().(*net.UDPAddr))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, 64)
			b.ReportAllocs()
			b.ResetTimer()
			// At most 32 datagrams in the socket's buffer, so that the
			// kernel drops none and the read loop is the bottleneck; a
			// datagram lost all the same is counted, not waited for.
			lost := uint64(0)
			read := func(upTo uint64) {
				last, since := in.Stats().Received, time.Now()
				for last+lost < upTo {
					runtime.Gosched()
					if r := in.Stats().Received; r != last {
						last, since = r, time.Now()
					} else if time.Since(since) > 50*time.Millisecond {
						lost = upTo - last
					}
				}
			}
			for i := range b.N {
				if i%16 == 0 && i >= 32 {
					read(uint64(i - 32))
				}
				c.Write(msg)
			}
			read(uint64(b.N))
			b.ReportMetric(float64(lost), "lost")
			b.StopTimer()
		})
	}
}

func exchangeTable() *exchange.Table { return exchange.NewTable(1024) }
