package dtls

import (
	"testing"
)

// BenchmarkRoundTrip: one datagram through an established session and
// its answer back, on loopback with pion's client: the decryption,
// routing and encryption a coaps or dtls listener adds per request.
func BenchmarkRoundTrip(b *testing.B) {
	keys, err := LoadKeys(writeKeys(b, "alice:secret\n"))
	if err != nil {
		b.Fatal(err)
	}
	e := startEcho(b, &Config{Keys: keys})
	c, err := dial(b, udpSocket(b), e.addr, pskClient("alice", "secret")...)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 64)
	b.ReportAllocs()
	for b.Loop() {
		if got := roundTrip(b, c, payload); len(got) != len("alice ")+len(payload) {
			b.Fatalf("reply of %d bytes", len(got))
		}
	}
}
