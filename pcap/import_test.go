package pcap

import (
	"bytes"
	"context"
	"encoding/base64"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// fixture is what testdata/datagrams.hex holds.
var fixture = []struct {
	at      string
	payload []byte
}{
	{"2026-11-23T16:36:32.123456Z", []byte("hello udpgate")},
	{"2026-11-23T16:36:33.5Z", []byte(`[42, "what time is it?"]`)},
	{"2026-11-23T16:36:33.500000001Z", []byte{0, 1, 2, 3, 0xff, 0xfe, 0xfd}},
	{"2026-11-23T16:36:40Z", []byte("now")},
	{"2026-11-23T16:37:00.25Z", bytes.Repeat([]byte("A"), 64)},
}

func importFile(t testing.TB, im *Importer, path string) ImportStats {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, err := im.Import(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestImportText2pcap imports captures written by Wireshark's text2pcap
// (pcapng and pcap, IPv4 and IPv6) and checks every request message
// against the wire contract.
func TestImportText2pcap(t *testing.T) {
	tests := []struct {
		name          string
		args          []string
		remote, local string
		resolution    time.Duration // of the file's timestamps
	}{
		{"pcapng ipv4", []string{"-u", "40000,9000", "-4", "10.0.0.1,10.0.0.2"}, "10.0.0.1:40000", "10.0.0.2:9000", time.Nanosecond},
		{"pcap ipv6", []string{"-F", "pcap", "-u", "40001,9000", "-6", "2001:db8::1,2001:db8::2"}, "[2001:db8::1]:40001", "[2001:db8::2]:9000", time.Microsecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			capture := text2pcap(t, "datagrams.hex", tt.args...)
			nc, js := testStreams(t, "udpgate")
			im := &Importer{NATS: nc, Stream: schemas.StreamIn, Listeners: map[uint16]string{9000: schemas.ProtocolRaw}}
			st := importFile(t, im, capture)
			if st.Frames != 5 || st.Requests != 5 || st.Published != 5 || st.SkippedTotal() != 0 || st.Failed != 0 {
				t.Fatalf("stats %+v, want 5 frames published", st)
			}
			msgs := storedMsgs(t, js, schemas.StreamIn)
			if len(msgs) != len(fixture) {
				t.Fatalf("%d messages stored, want %d", len(msgs), len(fixture))
			}
			ids := map[string]bool{}
			for i, m := range msgs {
				want := fixture[i]
				at, _ := time.Parse(time.RFC3339Nano, want.at)
				at = at.Truncate(tt.resolution)
				h := m.Header
				if m.Subject != "udpgate.in.9000" || !bytes.Equal(m.Data, want.payload) {
					t.Errorf("message %d: %s %q, want udpgate.in.9000 %q", i, m.Subject, m.Data, want.payload)
				}
				id := h.Get(schemas.HeaderID)
				if id == "" || ids[id] {
					t.Errorf("message %d: ce-id %q: want one, unique", i, id)
				}
				ids[id] = true
				wantHeaders := map[string]string{
					schemas.HeaderSpecVersion: "1.0",
					schemas.HeaderSource:      "udpgate://pcap/9000/raw",
					schemas.HeaderType:        schemas.TypeRaw,
					schemas.HeaderTime:        at.Format(time.RFC3339Nano),
					schemas.HeaderRemote:      tt.remote,
					schemas.HeaderLocal:       tt.local,
					schemas.HeaderDeadline:    strconv.FormatInt(at.Add(5*time.Second).UnixMilli(), 10),
					schemas.HeaderReply:       "udpgate.reply.pcap." + id,
				}
				for k, v := range wantHeaders {
					if got := h.Get(k); got != v {
						t.Errorf("message %d: %s = %q, want %q", i, k, got, v)
					}
				}
				if len(h) != len(wantHeaders)+1 {
					t.Errorf("message %d: headers %v, want only the contract's", i, h)
				}
			}
		})
	}
}

// TestImportSkips checks the counts of what an import leaves out, on
// captures made by Wireshark's tools: TCP and non-IP frames from
// text2pcap, and frames truncated by editcap's snapshot length.
func TestImportSkips(t *testing.T) {
	editcap := tool(t, "editcap", "wireshark-common")
	truncated := func(t *testing.T) string {
		in := text2pcap(t, "datagrams.hex", "-u", "40000,9000", "-4", "10.0.0.1,10.0.0.2")
		out := filepath.Join(t.TempDir(), "cut.pcapng")
		// 56 bytes keep the 13-, 7- and 3-byte datagrams (and cut only the
		// Ethernet padding of their frames), not the 24- and 64-byte ones.
		run(t, editcap, "-s", "56", in, out)
		return out
	}
	tests := []struct {
		name      string
		capture   func(t *testing.T) string
		published uint64
		check     func(st ImportStats) bool
	}{
		{"tcp", func(t *testing.T) string { return text2pcap(t, "datagrams.hex", "-T", "40000,9000") }, 0,
			func(st ImportStats) bool { return st.Skipped[NotUDP] == 5 }},
		{"arp", func(t *testing.T) string { return text2pcap(t, "datagrams.hex", "-e", "0x806") }, 0,
			func(st ImportStats) bool { return st.Skipped[NotIP] == 5 }},
		{"other port", func(t *testing.T) string { return text2pcap(t, "datagrams.hex", "-u", "40000,9001") }, 0,
			func(st ImportStats) bool { return st.OtherPort == 5 }},
		{"truncated by editcap", truncated, 3,
			func(st ImportStats) bool { return st.Skipped[Truncated] == 2 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			capture := tt.capture(t)
			nc, _ := testStreams(t, "udpgate")
			im := &Importer{NATS: nc, Listeners: map[uint16]string{9000: schemas.ProtocolRaw}}
			st := importFile(t, im, capture)
			if st.Frames != 5 || st.Published != tt.published || !tt.check(st) || st.SkippedTotal() != 5-tt.published {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

func coapDatagram(t testing.TB, typ message.Type, code codes.Code, mid uint16, token []byte, path []string, query []string, payload []byte) []byte {
	t.Helper()
	var opts message.Options
	for _, p := range path {
		opts = opts.Add(message.Option{ID: message.URIPath, Value: []byte(p)})
	}
	for _, q := range query {
		opts = opts.Add(message.Option{ID: message.URIQuery, Value: []byte(q)})
	}
	if payload != nil {
		opts = opts.Add(message.Option{ID: message.ContentFormat, Value: []byte{0}})
	}
	b, err := encodeCoAP(message.Message{Type: typ, Code: code, MessageID: int32(mid), Token: token, Options: opts, Payload: payload})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rpcDatagram(t testing.TB, id uint64, service, method string, params []byte) []byte {
	t.Helper()
	b, err := proto.Marshal(&rpcpb.Call{Id: id, Service: service, Method: method, Params: params})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// protocolCapture is a capture with CoAP and RPC traffic, and frames to
// skip.
func protocolCapture(t testing.TB) (frames []frame, coapGet, coapPost, call []byte) {
	coapGW := netip.MustParseAddrPort("10.0.0.2:5683")
	rpcGW := netip.MustParseAddrPort("[2001:db8::2]:7000")
	coapGet = coapDatagram(t, message.Confirmable, codes.GET, 40121, []byte{0xa1, 0xb2}, []string{"sensors", "a b"}, []string{"unit=C"}, nil)
	coapPost = coapDatagram(t, message.NonConfirmable, codes.POST, 7, nil, []string{"echo"}, nil, []byte("hi there"))
	call = rpcDatagram(t, 8123984, "InterestingPlaces", "GetRandom", []byte{8, 2})
	ping := []byte{0x40, 0, 0x12, 0x34}
	tcp := udpFrame(t, client4, gw4, []byte("tcp"))
	tcp[14+9] = 6
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	frames = []frame{
		{at: at(0), src: client4, dst: coapGW, payload: coapGet},
		{at: at(1000), src: client4, dst: coapGW, payload: coapGet}, // retransmission
		{at: at(1100), src: client4, dst: coapGW, payload: ping},
		{at: at(1200), src: client6, dst: rpcGW, payload: call},
		{at: at(1300), src: client6, dst: rpcGW, payload: []byte("not a call")},
		{at: at(1400), src: client4, dst: coapGW, payload: coapPost},
		{at: at(1500), src: client4, dst: gw4, payload: []byte("raw")},
		{at: at(1600), src: client4, dst: netip.MustParseAddrPort("10.0.0.2:9999"), payload: []byte("other")},
		{at: at(1700), raw: tcp},
		{at: at(1800), src: client4, dst: gw4, payload: []byte("cut short"), cut: 14 + 20 + 8 + 3},
	}
	return frames, coapGet, coapPost, call
}

var protocolListeners = map[uint16]string{9000: schemas.ProtocolRaw, 5683: schemas.ProtocolCoAP, 7000: schemas.ProtocolRPC}

// TestImportProtocols imports CoAP and RPC datagrams through the listeners'
// edges and checks the messages have the gateway's layout.
func TestImportProtocols(t *testing.T) {
	frames, coapGet, coapPost, call := protocolCapture(t)
	capture := filepath.Join(t.TempDir(), "protocols.pcap")
	if err := os.WriteFile(capture, writePcap(t, frames), 0o644); err != nil {
		t.Fatal(err)
	}
	nc, js := testStreams(t, "udpgate")
	im := &Importer{NATS: nc, Stream: schemas.StreamIn, Listeners: protocolListeners}
	st := importFile(t, im, capture)
	if st.Frames != 10 || st.Published != 4 || st.NotRequest != 3 || st.OtherPort != 1 ||
		st.Skipped[NotUDP] != 1 || st.Skipped[Truncated] != 1 || st.SkippedTotal() != 6 {
		t.Errorf("stats %+v", st)
	}
	if st.CoAP.Duplicates != 1 || st.CoAP.Pings != 1 || st.RPC.Malformed != 1 {
		t.Errorf("edge stats: coap %+v, rpc %+v", st.CoAP, st.RPC)
	}
	msgs := storedMsgs(t, js, schemas.StreamIn)
	if len(msgs) != 4 {
		t.Fatalf("%d messages, want 4", len(msgs))
	}
	get, rpcMsg, post := msgs[0], msgs[1], msgs[2]
	wantGet := map[string]string{
		schemas.HeaderType:              schemas.TypeCoAP,
		schemas.HeaderSource:            "udpgate://pcap/5683/coap",
		schemas.HeaderCoAPRequest:       "GET /sensors/a%20b?unit=C",
		schemas.HeaderRemote:            "10.0.0.1:40000",
		schemas.HeaderLocal:             "10.0.0.2:5683",
		schemas.HeaderTime:              t0.Format(time.RFC3339Nano),
		jetstream.MsgIDHeader:           "",
		schemas.HeaderCoAPAccept:        "",
		schemas.HeaderCoAPContentFormat: "",
	}
	checkHeaders(t, "coap GET", get, "udpgate.in.5683.GET.sensors.a~20b", wantGet)
	head, _ := base64.StdEncoding.DecodeString(get.Header.Get(schemas.HeaderDatagramHead))
	if !bytes.Equal(append(head, get.Data...), coapGet) {
		t.Errorf("coap GET: head+body %x, want the datagram %x", append(head, get.Data...), coapGet)
	}
	checkHeaders(t, "coap POST", post, "udpgate.in.5683.POST.echo", map[string]string{
		schemas.HeaderCoAPRequest: "POST /echo", schemas.HeaderCoAPContentFormat: "0",
	})
	head, _ = base64.StdEncoding.DecodeString(post.Header.Get(schemas.HeaderDatagramHead))
	if !bytes.Equal(post.Data, []byte("hi there")) || !bytes.Equal(append(head, post.Data...), coapPost) {
		t.Errorf("coap POST: body %q, head+body %x, want %x", post.Data, append(head, post.Data...), coapPost)
	}
	checkHeaders(t, "rpc", rpcMsg, "udpgate.in.7000.InterestingPlaces.GetRandom", map[string]string{
		schemas.HeaderType: schemas.TypeRPC, schemas.HeaderSource: "udpgate://pcap/7000/rpc",
		schemas.HeaderRPCService: "InterestingPlaces", schemas.HeaderRPCMethod: "GetRandom", schemas.HeaderRPCID: "8123984",
		schemas.HeaderRemote: "[2001:db8::1]:40000", schemas.HeaderLocal: "[2001:db8::2]:7000",
	})
	if !bytes.Equal(rpcMsg.Data, []byte{8, 2}) {
		t.Errorf("rpc body %x, want the params 0802", rpcMsg.Data)
	}
	_ = call
}

func checkHeaders(t *testing.T, what string, m *jetstream.RawStreamMsg, subject string, want map[string]string) {
	t.Helper()
	if m.Subject != subject {
		t.Errorf("%s: subject %s, want %s", what, m.Subject, subject)
	}
	for k, v := range want {
		if got := nats.Header(m.Header).Get(k); got != v {
			t.Errorf("%s: %s = %q, want %q", what, k, got, v)
		}
	}
}
