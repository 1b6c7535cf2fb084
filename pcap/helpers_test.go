package pcap

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// tool returns the path of a Wireshark command-line tool. CI installs them
// (.ci/run: tshark, wireshark-common); there a missing tool fails the test.
func tool(t testing.TB, name, pkg string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s missing in CI: .ci/run installs the Debian package %s", name, pkg)
	}
	t.Skipf("needs %s: apt-get install %s", name, pkg)
	return ""
}

// run runs a tool with TZ=UTC and returns its standard output.
func run(t testing.TB, path string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "TZ=UTC")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %q: %v\n%s", filepath.Base(path), args, err, stderr.Bytes())
	}
	return out
}

// text2pcap turns a hex dump fixture into a capture with text2pcap's own
// Ethernet, IP and UDP headers; args choose them.
func text2pcap(t testing.TB, fixture string, args ...string) string {
	t.Helper()
	bin := tool(t, "text2pcap", "wireshark-common")
	out := filepath.Join(t.TempDir(), "capture")
	args = append([]string{"-q", "-t", "%Y-%m-%dT%H:%M:%S.%f"}, args...)
	run(t, bin, append(args, filepath.Join("testdata", fixture), out)...)
	return out
}

// testStreams starts a NATS server and creates the capture and replies
// streams for prefix as the gateway does.
func testStreams(t testing.TB, prefix string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	s := natstest.RunServer(t)
	nc, js := natstest.JetStream(t, s)
	ensureStreams(t, js, prefix, schemas.StreamIn, schemas.StreamReplies)
	return nc, js
}

func ensureStreams(t testing.TB, js jetstream.JetStream, prefix, in, replies string) {
	t.Helper()
	ctx := context.Background()
	if _, err := ingress.EnsureStream(ctx, js, ingress.StreamConfig{
		Name: in, Subject: schemas.CaptureWildcard(prefix), Stores: schemas.InWildcard(prefix),
	}); err != nil {
		t.Fatal(err)
	}
	if replies == "" {
		return
	}
	if _, err := ingress.EnsureStream(ctx, js, ingress.StreamConfig{Name: replies, Subject: schemas.ReplyWildcard(prefix)}); err != nil {
		t.Fatal(err)
	}
}

// storedMsgs returns every message of stream, in order.
func storedMsgs(t testing.TB, js jetstream.JetStream, stream string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// frame is a test frame: a UDP datagram on Ethernet unless raw is set.
type frame struct {
	at       time.Time
	src, dst netip.AddrPort
	payload  []byte
	raw      []byte // a whole frame, used as is
	cut      int    // keep only this many bytes (a truncated capture)
}

// udpFrame builds an Ethernet/IP/UDP frame.
func udpFrame(t testing.TB, src, dst netip.AddrPort, payload []byte) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: clientMAC, DstMAC: gatewayMAC}
	u := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
	var ip gopacket.SerializableLayer
	if src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		u.SetNetworkLayerForChecksum(ip4)
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolUDP, SrcIP: src.Addr().AsSlice(), DstIP: dst.Addr().AsSlice()}
		u.SetNetworkLayerForChecksum(ip6)
		ip = ip6
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, u, gopacket.Payload(payload)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// writePcap writes frames as a pcap file with gopacket's writer.
func writePcap(t testing.TB, frames []frame) []byte {
	t.Helper()
	var b bytes.Buffer
	w := pcapgo.NewWriterNanos(&b)
	if err := w.WriteFileHeader(snaplen, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for _, f := range frames {
		data := f.raw
		if data == nil {
			data = udpFrame(t, f.src, f.dst, f.payload)
		}
		ci := gopacket.CaptureInfo{Timestamp: f.at, CaptureLength: len(data), Length: len(data)}
		if f.cut > 0 {
			data, ci.CaptureLength = data[:f.cut], f.cut
		}
		if err := w.WritePacket(ci, data); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}
