package replay_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/replay"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

func TestParseSpeed(t *testing.T) {
	tests := []struct {
		in   string
		want replay.Speed
		ok   bool
	}{
		{"original", replay.Original, true},
		{"max", replay.Max, true},
		{"2x", 2, true},
		{"0.5x", 0.5, true},
		{"3", 3, true},
		{"0x", 0, false},
		{"-1x", 0, false},
		{"fast", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := replay.ParseSpeed(tt.in)
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("ParseSpeed(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestParseTime(t *testing.T) {
	now := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
		ok   bool
	}{
		{"10m", now.Add(-10 * time.Minute), true},
		{"1h30m", now.Add(-90 * time.Minute), true},
		{"2026-11-23T15:00:00Z", now.Add(-time.Hour), true},
		{"2026-11-23T17:00:00+02:00", now.Add(-time.Hour), true},
		{"-5m", time.Time{}, false},
		{"yesterday", time.Time{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := replay.ParseTime(tt.in, now)
			if (err == nil) != tt.ok || !got.Equal(tt.want) {
				t.Errorf("ParseTime(%q) = %v, %v; want %v, ok %v", tt.in, got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestParsePortsAndTo(t *testing.T) {
	if p, err := replay.ParsePorts("9000, 5683"); err != nil || !slices.Equal(p, []uint16{9000, 5683}) {
		t.Errorf("ParsePorts = %v, %v", p, err)
	}
	for _, bad := range []string{"", "0", "65536", "x", "9000,"} {
		if _, err := replay.ParsePorts(bad); err == nil {
			t.Errorf("ParsePorts(%q): no error", bad)
		}
	}
	if a, err := replay.ParseTo("udp://127.0.0.1:7777"); err != nil || a != netip.MustParseAddrPort("127.0.0.1:7777") {
		t.Errorf("ParseTo = %v, %v", a, err)
	}
	if a, err := replay.ParseTo("udp://[::1]:7777"); err != nil || a != netip.MustParseAddrPort("[::1]:7777") {
		t.Errorf("ParseTo = %v, %v", a, err)
	}
	for _, bad := range []string{"127.0.0.1:7777", "coap://127.0.0.1:5683", "udp://127.0.0.1", "udp://127.0.0.1:7777/x"} {
		if _, err := replay.ParseTo(bad); err == nil {
			t.Errorf("ParseTo(%q): no error", bad)
		}
	}
}

func TestDatagram(t *testing.T) {
	head := []byte{0x42, 0x02, 0x12, 0x34, 0xab, 0xcd, 0xb4, 'e', 'c', 'h', 'o', 0xff}
	call := &rpcpb.Call{Id: 7, Service: "S", Method: "M", Params: []byte{1, 2}}
	callBytes, _ := proto.Marshal(call)
	tests := []struct {
		name   string
		header nats.Header
		body   []byte
		want   []byte
		err    error
	}{
		{"raw", nats.Header{schemas.HeaderType: {schemas.TypeRaw}}, []byte{0, 1}, []byte{0, 1}, nil},
		{"raw by source", nats.Header{schemas.HeaderSource: {"udpgate://gw-1/9000/raw"}}, []byte("x"), []byte("x"), nil},
		{"coap by source", nats.Header{schemas.HeaderSource: {"udpgate://gw-1/5683/coap"}, schemas.HeaderDatagramHead: {base64.StdEncoding.EncodeToString(head)}},
			nil, bytes.Clone(head), nil},
		{"coap", nats.Header{schemas.HeaderType: {schemas.TypeCoAP}, schemas.HeaderDatagramHead: {base64.StdEncoding.EncodeToString(head)}},
			[]byte("hi"), append(bytes.Clone(head), "hi"...), nil},
		{"coap block1 upload", nats.Header{schemas.HeaderType: {schemas.TypeCoAP}}, []byte("big"), nil, replay.ErrNoDatagram},
		{"rpc", nats.Header{schemas.HeaderType: {schemas.TypeRPC}, schemas.HeaderRPCID: {"7"},
			schemas.HeaderRPCService: {"S"}, schemas.HeaderRPCMethod: {"M"}}, []byte{1, 2}, callBytes, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := replay.Datagram(tt.header, tt.body)
			if !errors.Is(err, tt.err) || !bytes.Equal(got, tt.want) {
				t.Errorf("Datagram = %x, %v; want %x, %v", got, err, tt.want, tt.err)
			}
		})
	}
	if _, err := replay.Datagram(nats.Header{schemas.HeaderType: {schemas.TypeRPC}, schemas.HeaderRPCID: {"x"}}, nil); err == nil {
		t.Error("Datagram of an RPC call with a bad id: no error")
	}
}
