package coap

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/udpgate/udpgate/schemas"
)

// BenchmarkExchange measures one CoAP GET /time through the edge as the
// gateway runs it: Receive a request datagram, Started (a CON's piggyback
// window), Reply with a 20-byte body and Content-Format 0, as egress does,
// and the client socket reads the response. The edge writes to a real
// loopback socket. Each request has a new message id, so the dedupe cache
// fills and then evicts as under load.
func BenchmarkExchange(b *testing.B) {
	// A NON's response takes a message id of the gateway's, about 61,000
	// per peer in EXCHANGE_LIFETIME at most: the benchmark sends CONs.
	for _, tt := range []struct {
		name string
		typ  byte
	}{
		{"CON", 0x42}, // CON, token length 2
	} {
		b.Run(tt.name, func(b *testing.B) {
			te := newTestEdge(b, Config{})
			// GET /time, token 0xbeef.
			req := []byte{tt.typ, 0x01, 0, 0, 0xbe, 0xef, 0xb4, 't', 'i', 'm', 'e'}
			header := map[string][]string{schemas.HeaderCoAPContentFormat: {"0"}}
			body := []byte("2026-11-23T00:00:00Z")
			buf := make([]byte, 2048)
			te.client.SetReadDeadline(time.Now().Add(10 * time.Minute))
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				binary.BigEndian.PutUint16(req[2:], uint16(i))
				r := te.Receive(req, te.remote, te.local, 0, time.Now())
				if r == nil {
					b.Fatal("not published")
				}
				r.Started()
				if err := r.Reply(schemas.StatusOK, header, body); err != nil {
					b.Fatal(err)
				}
				n, err := te.client.Read(buf)
				if err != nil {
					b.Fatal(err)
				}
				if n != 4+2+2+1+len(body) && n != 4+2+1+1+len(body) {
					b.Fatalf("answer % x", buf[:n])
				}
			}
		})
	}
}

// BenchmarkReceive measures Receive alone for a CON GET /time with an
// 8-byte token, as go-coap's client sends it: decoding, the dedupe cache
// and the Request handed to ingress. Nothing is sent.
func BenchmarkReceive(b *testing.B) {
	te := newTestEdge(b, Config{})
	req := []byte{0x48, 0x01, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0xb4, 't', 'i', 'm', 'e'}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		binary.BigEndian.PutUint16(req[2:], uint16(i))
		r := te.Receive(req, te.remote, te.local, 0, time.Now())
		if r == nil {
			b.Fatal("not published")
		}
		r.done = true // answered elsewhere
	}
}
