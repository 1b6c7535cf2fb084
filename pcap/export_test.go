package pcap

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
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

// captureCopy is the capture copy of a request as the gateway publishes
// it (to udpgate.capture.PORT…, stored as udpgate.in.PORT…). A live
// request has no ce-time: at, if not zero, makes it an imported one.
func captureCopy(id string, at time.Time, remote, local, listener string, body []byte, extra map[string]string) *nats.Msg {
	port, _, _ := strings.Cut(listener, "/")
	deadline := at
	if at.IsZero() {
		deadline = time.Now()
	}
	m := &nats.Msg{
		Subject: "udpgate.capture." + port,
		Data:    body,
		Header: nats.Header{
			schemas.HeaderSpecVersion: {schemas.SpecVersion},
			schemas.HeaderID:          {id},
			schemas.HeaderSource:      {"udpgate://gw-1/" + listener},
			schemas.HeaderType:        {schemas.TypeRaw},
			schemas.HeaderRemote:      {remote},
			schemas.HeaderLocal:       {local},
			schemas.HeaderDeadline:    {strconv.FormatInt(deadline.Add(time.Minute).UnixMilli(), 10)},
			schemas.HeaderReply:       {"udpgate.reply.gw-1." + id},
		},
	}
	if !at.IsZero() {
		m.Header.Set(schemas.HeaderTime, at.UTC().Format(time.RFC3339Nano))
	}
	for k, v := range extra {
		if k == "subject" {
			m.Subject = v
			continue
		}
		m.Header.Set(k, v)
	}
	return m
}

func publish(t testing.TB, js jetstream.JetStream, msgs ...*nats.Msg) {
	t.Helper()
	for _, m := range msgs {
		if _, err := js.PublishMsg(context.Background(), m); err != nil {
			t.Fatalf("publish %s: %v", m.Subject, err)
		}
	}
}

// reply is a worker's reply to request id, as the replies stream records
// it: the reply subject names the request, no header is needed.
func reply(id string, body []byte, extra map[string]string) *nats.Msg {
	m := &nats.Msg{Subject: "udpgate.reply.gw-1." + id, Data: body, Header: nats.Header{}}
	for k, v := range extra {
		m.Header.Set(k, v)
	}
	return m
}

type packet struct{ src, dst, payload, time string }

// tsharkUDP returns the UDP packets tshark reads in file.
func tsharkUDP(t testing.TB, file string) []packet {
	t.Helper()
	bin := tool(t, "tshark", "tshark")
	out := run(t, bin, "-r", file, "-Y", "udp", "-T", "fields",
		"-e", "udp.srcport", "-e", "udp.dstport", "-e", "udp.payload", "-e", "frame.time_epoch")
	var pkts []packet
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 4 {
			t.Fatalf("tshark line %q", line)
		}
		pkts = append(pkts, packet{f[0], f[1], f[2], f[3]})
	}
	return pkts
}

// TestExportTshark exports a window of requests published with the
// contract's headers, imported ones (with ce-time) and live ones (without),
// and their recorded replies, and reads the file with tshark.
func TestExportTshark(t *testing.T) {
	tool(t, "tshark", "tshark")
	_, js := testStreams(t, "udpgate")
	now := time.Now().UTC().Truncate(time.Microsecond)
	coapHead := []byte{0x42, 0x01, 0x9c, 0xb9, 0xa1, 0xb2, 0xb4, 't', 'i', 'm', 'e'} // CON GET mid 40121 token a1b2 /time
	call := &rpcpb.Call{Id: 77, Service: "InterestingPlaces", Method: "GetRandom", Params: []byte{8, 2}}
	callBytes, _ := proto.Marshal(call)
	publish(t, js,
		captureCopy("b-1", now.Add(-2*time.Hour), "10.0.0.9:1", "10.0.0.2:9000", "9000/raw", []byte("too old"), nil),
		captureCopy("b-2", now.Add(-3*time.Second), "10.0.0.1:40000", "10.0.0.2:9000", "9000/raw", []byte("hello"), nil),
		captureCopy("b-3", now.Add(-2*time.Second), "[2001:db8::1]:40001", "[2001:db8::2]:9000", "9000/raw", []byte("hello v6"), nil),
		captureCopy("b-4", time.Time{}, "10.0.0.1:40002", "10.0.0.2:5683", "5683/coap", nil, map[string]string{
			"subject": "udpgate.capture.5683.GET.time", schemas.HeaderType: schemas.TypeCoAP,
			schemas.HeaderCoAPRequest:  "GET /time",
			schemas.HeaderDatagramHead: base64.StdEncoding.EncodeToString(coapHead),
		}),
		captureCopy("b-5", time.Time{}, "10.0.0.1:40003", "10.0.0.2:7000", "7000/rpc", call.Params, map[string]string{
			"subject": "udpgate.capture.7000.InterestingPlaces.GetRandom", schemas.HeaderType: schemas.TypeRPC,
			schemas.HeaderRPCService: call.Service, schemas.HeaderRPCMethod: call.Method, schemas.HeaderRPCID: "77",
		}),
		// Reassembled from a Block1 upload: no datagram head.
		captureCopy("b-6", time.Time{}, "10.0.0.1:40004", "10.0.0.2:5683", "5683/coap", []byte("the whole upload"), map[string]string{
			"subject": "udpgate.capture.5683.POST.up~20load", schemas.HeaderType: schemas.TypeCoAP,
			schemas.HeaderCoAPRequest: "POST /up%20load?x=1&name=a%26b", schemas.HeaderCoAPContentFormat: "0",
		}),
	)
	publish(t, js,
		reply("b-2", []byte("HELLO"), nil),
		reply("b-3", nil, map[string]string{schemas.HeaderStatus: schemas.StatusError}), // raw: nothing sent
		reply("b-4", []byte("16:36"), map[string]string{schemas.HeaderCoAPContentFormat: "0"}),
		reply("b-5", []byte{10, 0}, nil),
		reply("b-6", nil, map[string]string{schemas.HeaderCoAPCode: "2.04"}),
		reply("b-9", []byte("no such request"), nil),
	)
	stored := storedMsgs(t, js, schemas.StreamIn)

	file := filepath.Join(t.TempDir(), "capture.pcap")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	ex := &Exporter{JetStream: js, Since: now.Add(-10 * time.Minute), Until: now.Add(time.Minute), RepliesStream: schemas.StreamReplies}
	st, err := ex.Export(context.Background(), f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if st.Requests != 5 || st.Replies != 4 || st.Outside != 1 || st.NotSent != 1 || st.Unmatched != 1 || st.Undecodable != 0 {
		t.Errorf("stats %+v", st)
	}

	hexOf := func(b []byte) string { return hex.EncodeToString(b) }
	rpcReply, _ := proto.Marshal(&rpcpb.Reply{Id: 77, Body: []byte{10, 0}})
	coapReply, _ := encodeCoAP(message.Message{Type: message.Acknowledgement, Code: codes.Content, MessageID: 40121, Token: []byte{0xa1, 0xb2},
		Options: message.Options{{ID: message.ContentFormat, Value: nil}}, Payload: []byte("16:36")})
	upload, _ := encodeCoAP(message.Message{Type: message.Confirmable, Code: codes.POST, MessageID: 0, Options: message.Options{
		{ID: message.URIPath, Value: []byte("up load")}, {ID: message.ContentFormat, Value: nil},
		{ID: message.URIQuery, Value: []byte("x=1")}, {ID: message.URIQuery, Value: []byte("name=a&b")},
	}, Payload: []byte("the whole upload")})
	uploadReply, _ := encodeCoAP(message.Message{Type: message.Acknowledgement, Code: codes.Changed, MessageID: 0})
	want := []packet{
		{"40000", "9000", hexOf([]byte("hello")), ""},
		{"40001", "9000", hexOf([]byte("hello v6")), ""},
		{"40002", "5683", hexOf(coapHead), ""},
		{"40003", "7000", hexOf(callBytes), ""},
		{"40004", "5683", hexOf(upload), ""},
		{"9000", "40000", hexOf([]byte("HELLO")), ""},
		{"5683", "40002", hexOf(coapReply), ""},
		{"7000", "40003", hexOf(rpcReply), ""},
		{"5683", "40004", hexOf(uploadReply), ""},
	}
	got := tsharkUDP(t, file)
	if len(got) != len(want) {
		t.Fatalf("tshark sees %d UDP packets, want %d: %v", len(got), len(want), got)
	}
	// Imported requests keep their ce-time, live ones come at their stream
	// time; replies come at their stream time, after their request.
	for i, p := range got[:5] {
		at := now.Add(time.Duration(i-3) * time.Second)
		if i >= 2 {
			at = stored[i+1].Time // after b-1, left out
		}
		if p.time != fmt.Sprintf("%d.%09d", at.Unix(), at.Nanosecond()) {
			t.Errorf("request %d at %s, want %s", i, p.time, at.Format(time.RFC3339Nano))
		}
	}
	slices.SortFunc(got, func(a, b packet) int { return strings.Compare(a.src+a.dst, b.src+b.dst) })
	slices.SortFunc(want, func(a, b packet) int { return strings.Compare(a.src+a.dst, b.src+b.dst) })
	for i := range want {
		if got[i].src != want[i].src || got[i].dst != want[i].dst || got[i].payload != want[i].payload {
			t.Errorf("packet %s -> %s: payload %s, want %s -> %s %s", got[i].src, got[i].dst, got[i].payload, want[i].src, want[i].dst, want[i].payload)
		}
	}

	// tshark finds the checksums good.
	bin := tool(t, "tshark", "tshark")
	status := run(t, bin, "-r", file, "-o", "udp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
		"-Y", "udp.checksum.status != 1 || ip.checksum.status == 0", "-T", "fields", "-e", "frame.number")
	if s := strings.TrimSpace(string(status)); s != "" {
		t.Errorf("frames with checksums tshark does not find good: %s", s)
	}
}

// TestExportImportRoundTrip imports a capture, exports it and imports the
// export elsewhere: the messages are the same but for their ids.
func TestExportImportRoundTrip(t *testing.T) {
	frames, _, _, _ := protocolCapture(t)
	nc, js := testStreams(t, "udpgate")
	im := &Importer{NATS: nc, Listeners: protocolListeners}
	if _, err := im.Import(context.Background(), bytes.NewReader(writePcap(t, frames))); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	st, err := (&Exporter{JetStream: js}).Export(context.Background(), &out)
	if err != nil || st.Requests != 4 {
		t.Fatalf("export: %+v, %v", st, err)
	}
	ensureStreams(t, js, "again", "AGAIN", "")
	im2 := &Importer{NATS: nc, Prefix: "again", Stream: "AGAIN", Listeners: protocolListeners}
	st2, err := im2.Import(context.Background(), &out)
	if err != nil || st2.Published != 4 {
		t.Fatalf("import of the export: %+v, %v", st2, err)
	}
	first, second := storedMsgs(t, js, schemas.StreamIn), storedMsgs(t, js, "AGAIN")
	for i := range first {
		a, b := first[i], second[i]
		if "again"+strings.TrimPrefix(a.Subject, "udpgate") != b.Subject || !bytes.Equal(a.Data, b.Data) {
			t.Errorf("message %d: %s %q, then %s %q", i, a.Subject, a.Data, b.Subject, b.Data)
		}
		for k := range a.Header {
			switch k {
			case schemas.HeaderID, schemas.HeaderReply:
				continue
			}
			if !slices.Equal(a.Header[k], b.Header[k]) {
				t.Errorf("message %d: %s %q, then %q", i, k, a.Header[k], b.Header[k])
			}
		}
	}
}

// TestExportReplyStoredFirst: a direct worker can answer before the
// capture stores the request's copy; the reply is written all the same,
// just after its request. A reply whose request never comes is unmatched.
func TestExportReplyStoredFirst(t *testing.T) {
	_, js := testStreams(t, "udpgate")
	publish(t, js,
		reply("f-1", []byte("HELLO"), nil),
		reply("f-2", nil, nil), // a ws call's
		reply("f-9", []byte("no such request"), nil),
	)
	publish(t, js,
		captureCopy("f-1", time.Time{}, "10.0.0.1:40000", "10.0.0.2:9000", "9000/raw", []byte("hello"), nil),
		captureCopy("f-2", time.Time{}, "10.0.0.1:40001", "10.0.0.2:8080", "8080/ws", nil, map[string]string{
			"subject": "udpgate.capture.8080.S.M", schemas.HeaderType: schemas.TypeRPC,
		}),
	)
	var out bytes.Buffer
	st, err := (&Exporter{JetStream: js, RepliesStream: schemas.StreamReplies}).Export(context.Background(), &out)
	if err != nil {
		t.Fatal(err)
	}
	if want := (ExportStats{Requests: 1, Replies: 1, Unmatched: 1, WS: 1, WSReplies: 1}); st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	if got := udpPayloads(t, out.Bytes()); len(got) != 2 || got[0] != "40000>9000 hello" || got[1] != "9000>40000 HELLO" {
		t.Errorf("the pcap holds %q", got)
	}
}
