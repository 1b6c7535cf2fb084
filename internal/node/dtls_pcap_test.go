package node

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/udpgate/udpgate/pcap"
	"github.com/udpgate/udpgate/schemas"
)

// TestNodeCoAPSExportedPlain: what a coaps listener captured is the
// decrypted request, so `pcap export` writes it as plain CoAP over UDP to
// the listener's port, with the worker's reply after it: the pcap holds
// no DTLS record.
func TestNodeCoAPSExportedPlain(t *testing.T) {
	n, calls := startDTLSNode(t, "127.0.0.1:1/coaps", "alice:s3cret\n", "udpgate.in.PORT.GET.whoami")
	port := n.Ports[0].Port()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out := libcoapPSK(t, "coaps://"+n.Ports[0].String()+"/whoami", "alice", "s3cret")
	if !strings.Contains(out, "hello alice") || calls.Load() != 1 {
		t.Fatalf("coap-client: %q, want the worker's answer", out)
	}
	js, err := jetstream.New(n.Conn)
	if err != nil {
		t.Fatal(err)
	}
	var file bytes.Buffer
	for range 100 { // the reply's record may trail the answer a little
		file.Reset()
		st, err := (&pcap.Exporter{JetStream: js, RepliesStream: schemas.StreamReplies}).Export(ctx, &file)
		if err != nil {
			t.Fatal(err)
		}
		if st.Requests == 1 && st.Replies == 1 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	r, err := pcap.NewReader(bytes.NewReader(file.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		data, _, link, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		u, ok := gopacket.NewPacket(data, link, gopacket.Default).Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok {
			t.Fatal("a frame without UDP")
		}
		m := message.Message{Options: make(message.Options, 0, 16)}
		if _, err := coder.DefaultCoder.Decode(u.Payload, &m); err != nil {
			t.Fatalf("a datagram that is not plain CoAP (% x): %v", u.Payload, err)
		}
		switch {
		case uint16(u.DstPort) == port && m.Code == codes.GET:
			got = append(got, "request")
		case uint16(u.SrcPort) == port && m.Code == codes.Content && strings.HasPrefix(string(m.Payload), "hello alice"):
			got = append(got, "reply")
		default:
			t.Errorf("unexpected datagram %d>%d %v", u.SrcPort, u.DstPort, m.Code)
		}
	}
	if strings.Join(got, ",") != "request,reply" {
		t.Errorf("the pcap holds %q, want the plain request to port %d and its reply", got, port)
	}
}
