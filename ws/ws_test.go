package ws

import (
	"encoding/base64"
	"net/netip"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/schemas/rpcpb"
)

var peer = netip.MustParseAddrPort("127.0.0.1:40000")

func TestDecodeText(t *testing.T) {
	call, _ := proto.Marshal(&rpcpb.Call{Id: 1, Service: "InterestingPlaces", Method: "GetRandom", Params: []byte{8, 2}})
	tests := []struct {
		name string
		in   string
		want []byte
		ok   bool
	}{
		{"padded", base64.StdEncoding.EncodeToString(call), call, true},
		{"unpadded", base64.RawStdEncoding.EncodeToString(call), call, true},
		{"empty", "", []byte{}, true},
		{"not base64", "not base64!", nil, false},
		{"url alphabet", "-_-_", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeText(make([]byte, 1024), []byte(tt.in))
			if (err == nil) != tt.ok || tt.ok && string(got) != string(tt.want) {
				t.Fatalf("decodeText(%q) = % x, %v", tt.in, got, err)
			}
		})
	}
	if got, err := decodeText(make([]byte, 4), []byte(base64.StdEncoding.EncodeToString(call))); err != nil || len(got) <= 3 {
		t.Fatalf("over the limit: %d bytes, %v; want more than the limit", len(got), err)
	}
}

// FuzzFrame decodes a message of either kind as the read loop does: it
// never panics, never decodes beyond its buffer, and accepts only calls
// with a service and a method.
func FuzzFrame(f *testing.F) {
	call, _ := proto.Marshal(&rpcpb.Call{Id: 1, Service: "InterestingPlaces", Method: "GetRandom", Params: []byte{8, 2}})
	f.Add(call, false)
	f.Add([]byte(base64.StdEncoding.EncodeToString(call)), true)
	f.Add([]byte(base64.RawStdEncoding.EncodeToString(call)), true)
	f.Add([]byte("=="), true)
	f.Add([]byte{}, false)
	const max = 64
	s := &Server{}
	f.Fuzz(func(t *testing.T, b []byte, text bool) {
		dst := make([]byte, max+1)
		if text {
			var err error
			if b, err = decodeText(dst, b); err != nil {
				return
			}
			if len(b) > max+1 {
				t.Fatalf("decoded %d bytes into %d", len(b), max+1)
			}
		}
		if len(b) > max {
			return
		}
		c := s.edge.Decode(b, "c-1", peer, peer, func([]byte) error { return nil })
		if c != nil && (c.Service == "" || c.Method == "" || c.Connection != "c-1") {
			t.Fatalf("accepted %+v", c)
		}
	})
}
