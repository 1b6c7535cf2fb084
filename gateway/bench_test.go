package gateway

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// The round-trip benchmarks send one 64-byte request at a time from a
// connected socket and wait for its reply. BenchmarkRoundTripUDPEcho is the
// baseline: a plain Go UDP echo server in the same process. Compare the two
// as a ratio from one run (docs/performance.md); allocations are those of
// the whole process per request (client, gateway, NATS server, worker).

func BenchmarkRoundTripUDPEcho(b *testing.B) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			srv.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	roundTrips(b, srv.LocalAddr().(*net.UDPAddr))
}

func BenchmarkRoundTripGateway(b *testing.B) {
	s := natstest.RunServer(b)
	g := &Gateway{}
	addrs := testGateway(b, s, g, "127.0.0.1:0")
	contractWorker(b, s, "echo", schemas.InSubject("udpgate", uint16(addrs[0].Port)), func(m *nats.Msg) []byte { return m.Data })
	roundTrips(b, addrs[0])
}

func roundTrips(b *testing.B, addr *net.UDPAddr) {
	c, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := make([]byte, 64)
	buf := make([]byte, 2048)
	// Warm up, and make sure the path works before timing it.
	c.Write(req)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(buf); err != nil {
		b.Fatalf("no reply: %v", err)
	}
	b.ReportAllocs()
	lost := 0
	for b.Loop() {
		c.Write(req)
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(buf); err != nil {
			lost++
		}
	}
	b.ReportMetric(float64(lost), "lost")
}
