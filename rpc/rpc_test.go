package rpc

import (
	"net/netip"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

var peer = netip.MustParseAddrPort("127.0.0.1:40000")

func TestReceive(t *testing.T) {
	call := func(c *rpcpb.Call) []byte {
		b, _ := proto.Marshal(c)
		return b
	}
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"a call", call(&rpcpb.Call{Id: 9, Service: "S", Method: "M", Params: []byte{1, 2}}), true},
		{"no params", call(&rpcpb.Call{Service: "S", Method: "M"}), true},
		{"empty", nil, false},
		{"no service", call(&rpcpb.Call{Method: "M"}), false},
		{"no method", call(&rpcpb.Call{Service: "S"}), false},
		{"service too long", call(&rpcpb.Call{Service: string(make([]byte, 256)), Method: "M"}), false},
		{"not protobuf", []byte{0xff, 0xff, 0xff}, false},
		{"truncated", call(&rpcpb.Call{Service: "Service", Method: "Method"})[:8], false},
	}
	e := &Edge{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := e.Receive(tt.in, peer, peer, 0)
			if (c != nil) != tt.ok {
				t.Fatalf("Receive = %v, want ok %v", c, tt.ok)
			}
		})
	}
	if st := e.Stats(); st.Calls != 2 || st.Malformed != uint64(len(tests)-2) {
		t.Errorf("stats %+v", st)
	}
}

func FuzzReceive(f *testing.F) {
	for _, c := range []*rpcpb.Call{
		{Id: 1, Service: "InterestingPlaces", Method: "GetRandom", Params: []byte{8, 2}},
		{Service: "a.b", Method: "*"},
	} {
		b, _ := proto.Marshal(c)
		f.Add(b)
	}
	f.Add([]byte{})
	e := &Edge{}
	f.Fuzz(func(t *testing.T, b []byte) {
		c := e.Receive(b, peer, peer, 0)
		if c == nil {
			return
		}
		if c.Service == "" || c.Method == "" || !utf8.ValidString(c.Service) || len(c.Method) > 255 {
			t.Fatalf("accepted a call with service %q method %q", c.Service, c.Method)
		}
	})
}

func TestDecodeRepliesThroughWrite(t *testing.T) {
	b, _ := proto.Marshal(&rpcpb.Call{Id: 7, Service: "S", Method: "M"})
	e := &Edge{}
	var got [][]byte
	c := e.Decode(b, "conn-1", peer, peer, func(b []byte) error { got = append(got, b); return nil })
	if c == nil || c.Connection != "conn-1" {
		t.Fatalf("Decode = %+v", c)
	}
	if err := c.Reply("ok", nil, []byte("body")); err != nil {
		t.Fatal(err)
	}
	c.Fail(exchange.NoAnswer) // answered already: nothing more
	if len(got) != 1 {
		t.Fatalf("%d replies written, want 1", len(got))
	}
	var r rpcpb.Reply
	if err := proto.Unmarshal(got[0], &r); err != nil || r.Id != 7 || string(r.Body) != "body" {
		t.Fatalf("reply %v, %v", &r, err)
	}
	if e.Decode([]byte{0xff}, "conn-1", peer, peer, nil) != nil {
		t.Fatal("Decode accepted a bad envelope")
	}
}
