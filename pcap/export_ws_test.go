package pcap

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// TestExportSkipsWS: what a ws listener received, a call, its reply and
// connection events (whatever their headers), is counted and left out;
// the rpc call beside it is written.
func TestExportSkipsWS(t *testing.T) {
	_, js := testStreams(t, "udpgate")
	call := &rpcpb.Call{Id: 5, Service: "InterestingPlaces", Method: "GetRandom", Params: []byte{8, 1}}
	callBytes, _ := proto.Marshal(call)
	rpcHeaders := func(subject string) map[string]string {
		return map[string]string{
			"subject": subject, schemas.HeaderType: schemas.TypeRPC,
			schemas.HeaderRPCService: call.Service, schemas.HeaderRPCMethod: call.Method, schemas.HeaderRPCID: "5",
		}
	}
	wsCall := rpcHeaders("udpgate.capture.8080.InterestingPlaces.GetRandom")
	wsCall[schemas.HeaderWSConnection] = "c1"
	// Events as ws listeners will publish them: no rpc headers, no
	// addresses.
	event := func(id, name string) *nats.Msg {
		m := captureCopy(id, time.Time{}, "", "", "8080/ws", nil, map[string]string{
			"subject": "udpgate.capture.8080.~24" + name, schemas.HeaderType: "io.udpgate.ws." + name,
		})
		m.Header.Del(schemas.HeaderRemote)
		m.Header.Del(schemas.HeaderLocal)
		m.Header.Del(schemas.HeaderReply)
		return m
	}
	publish(t, js,
		event("w-0", "connect"),
		captureCopy("w-1", time.Time{}, "10.0.0.1:40000", "10.0.0.2:8080", "8080/ws", call.Params, wsCall),
		captureCopy("r-1", time.Time{}, "10.0.0.1:40001", "10.0.0.2:7000", "7000/rpc", call.Params, rpcHeaders("udpgate.capture.7000.InterestingPlaces.GetRandom")),
		event("w-2", "disconnect"),
	)
	publish(t, js,
		reply("w-1", []byte{10, 0}, nil),
		reply("r-1", []byte{10, 0}, nil),
	)

	var out bytes.Buffer
	st, err := (&Exporter{JetStream: js, RepliesStream: schemas.StreamReplies}).Export(context.Background(), &out)
	if err != nil {
		t.Fatal(err)
	}
	want := ExportStats{Requests: 1, Replies: 1, WS: 3, WSReplies: 1}
	if st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	rpcReply, _ := proto.Marshal(&rpcpb.Reply{Id: 5, Body: []byte{10, 0}})
	got := udpPayloads(t, out.Bytes())
	if len(got) != 2 || got[0] != "40001>7000 "+string(callBytes) || got[1] != "7000>40001 "+string(rpcReply) {
		t.Errorf("the pcap holds %q, want the rpc call and its reply", got)
	}
}

// udpPayloads reads a pcap with Reader and returns its UDP datagrams as
// "SRCPORT>DSTPORT PAYLOAD".
func udpPayloads(t testing.TB, file []byte) []string {
	t.Helper()
	r, err := NewReader(bytes.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for {
		data, _, link, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		p := gopacket.NewPacket(data, link, gopacket.Default)
		u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok {
			t.Fatalf("a frame without UDP: %v", p)
		}
		out = append(out, strconv.Itoa(int(u.SrcPort))+">"+strconv.Itoa(int(u.DstPort))+" "+string(u.Payload))
	}
}
