package cli

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/udpgate/udpgate/internal/natstest"
)

// TestPcapCommands runs `udpgate pcap import FILE --port 9000` and
// `udpgate pcap export --since 10m -o FILE` against an embedded NATS
// server, as a user would.
func TestPcapCommands(t *testing.T) {
	defaults(t)
	s := natstest.RunServer(t)
	t.Setenv("UDPGATE_NATS_URL", s.ClientURL())
	dir := t.TempDir()

	// Three requests to 9000 and one to 9001, a minute ago.
	var capture bytes.Buffer
	w := pcapgo.NewWriter(&capture)
	if err := w.WriteFileHeader(65536, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	start := time.Now().Add(-time.Minute)
	for i, port := range []layers.UDPPort{9000, 9000, 9001, 9000} {
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: net.IPv4(10, 0, 0, 1), DstIP: net.IPv4(10, 0, 0, 2)}
		u := &layers.UDP{SrcPort: 40000, DstPort: port}
		u.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, u, gopacket.Payload("hello")); err != nil {
			t.Fatal(err)
		}
		at := start.Add(time.Duration(i) * time.Second)
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: at, CaptureLength: len(buf.Bytes()), Length: len(buf.Bytes())}, buf.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	in := filepath.Join(dir, "in.pcap")
	if err := os.WriteFile(in, capture.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	var stdout, stderr bytes.Buffer
	if err := Run(ctx, []string{"pcap", "import", in, "--port", "9000"}, &stdout, &stderr); err != nil {
		t.Fatalf("import: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	for _, want := range []string{"requests published  3", "stored  3", "other port  1"} {
		if !strings.Contains(strings.Join(strings.Fields(stdout.String()), "  "), strings.Join(strings.Fields(want), "  ")) {
			t.Errorf("import summary lacks %q:\n%s", want, stdout.String())
		}
	}

	out := filepath.Join(dir, "capture.pcap")
	stdout.Reset()
	if err := Run(ctx, []string{"pcap", "export", "--since", "10m", "-o", out}, &stdout, &stderr); err != nil {
		t.Fatalf("export: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	if !strings.Contains(stdout.String(), "3 packets (3 requests, 0 replies)") {
		t.Errorf("export summary: %s", stdout.String())
	}
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("tshark missing in CI: .ci/run installs the Debian package tshark")
		}
		t.Skip("needs tshark: apt-get install tshark")
	}
	got, err := exec.Command(tshark, "-r", out, "-Y", "udp", "-T", "fields", "-e", "udp.srcport", "-e", "udp.dstport").Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Repeat("40000\t9000\n", 3); string(got) != want {
		t.Errorf("tshark reads %q, want %q", got, want)
	}

	// Usage errors.
	for _, args := range [][]string{{"pcap"}, {"pcap", "import"}, {"pcap", "import", in}, {"pcap", "frobnicate"}} {
		if err := Run(ctx, args, &stdout, &stderr); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 11, 23, 16, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
		bad  bool
	}{
		{"", time.Time{}, false},
		{"10m", now.Add(-10 * time.Minute), false},
		{"2026-11-23T15:00:00Z", now.Add(-time.Hour), false},
		{"2026-11-23T17:00:00.5+02:00", time.Date(2026, 11, 23, 15, 0, 0, 5e8, time.UTC), false},
		{"-5m", time.Time{}, true},
		{"yesterday", time.Time{}, true},
	}
	for _, tt := range tests {
		got, err := parseWhen(tt.in, now)
		if (err != nil) != tt.bad || !got.Equal(tt.want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.bad)
		}
	}
}
