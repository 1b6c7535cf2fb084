package bridge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var update = flag.Bool("update", false, "rewrite testdata/decode.golden")

// decoded describes what the decoders make of body, for the golden file.
func decoded(kind string, body []byte) string {
	describe := func(e *Error) string { return fmt.Sprintf("%d %s: %s", e.Status, e.Reason, e.Msg) }
	switch kind {
	case "bind":
		r, e := DecodeBind(body)
		if e != nil {
			return describe(e)
		}
		addr, lease, e := r.check()
		if e != nil {
			return describe(e)
		}
		return fmt.Sprintf("bind %s lease %v", addr, lease)
	default:
		r, dest, payload, e := DecodeSend(body)
		if e != nil {
			return describe(e)
		}
		return fmt.Sprintf("send id %q to %s payload %x", r.ID, dest, payload)
	}
}

// TestDecodeGolden decodes every request of testdata/bind and
// testdata/send and compares with testdata/decode.golden (go test
// -update rewrites it).
func TestDecodeGolden(t *testing.T) {
	var out strings.Builder
	for _, kind := range []string{"bind", "send"} {
		files, err := filepath.Glob(filepath.Join("testdata", kind, "*.json"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no testdata/%s: %v", kind, err)
		}
		for _, f := range files {
			body, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&out, "%s/%s: %s\n", kind, filepath.Base(f), decoded(kind, body))
		}
	}
	golden := filepath.Join("testdata", "decode.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(out.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if out.String() != string(want) {
		t.Errorf("decoded\n%s\nwant (testdata/decode.golden; -update rewrites it)\n%s", out.String(), want)
	}
}

func seeds(f *testing.F, kind string) {
	files, _ := filepath.Glob(filepath.Join("testdata", kind, "*.json"))
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// FuzzDecodeBind: any body is refused with a JSON error, or becomes an
// address to bind with a lease within the limits.
func FuzzDecodeBind(f *testing.F) {
	seeds(f, "bind")
	f.Fuzz(func(t *testing.T, body []byte) {
		r, e := DecodeBind(body)
		if e == nil {
			var addr netip.AddrPort
			var lease time.Duration
			if addr, lease, e = r.check(); e == nil {
				if lease <= 0 || lease > MaxLease || !addr.IsValid() {
					t.Fatalf("%q: bind %v lease %v", body, addr, lease)
				}
				return
			}
		}
		checkErrorBody(t, e)
	})
}

// FuzzDecodeSend: any body is refused with a JSON error, or becomes a
// destination with a port and a payload no larger than a datagram.
func FuzzDecodeSend(f *testing.F) {
	seeds(f, "send")
	f.Fuzz(func(t *testing.T, body []byte) {
		_, dest, payload, e := DecodeSend(body)
		if e != nil {
			checkErrorBody(t, e)
			return
		}
		if !dest.IsValid() || dest.Port() == 0 || dest.Addr().IsUnspecified() || len(payload) > MaxPayload {
			t.Fatalf("%q: dest %v, %d bytes", body, dest, len(payload))
		}
	})
}

func checkErrorBody(t *testing.T, e *Error) {
	t.Helper()
	var eb errorBody
	if err := json.Unmarshal(e.body(), &eb); err != nil || eb.Status != e.Status || eb.Reason == "" || eb.Error == "" || e.Status < 400 {
		t.Fatalf("error %+v has body %s (%v)", e, e.body(), err)
	}
}

// FuzzEvent: an SSE event made of any datagram from any source parses,
// with the test's SSE parser, to one datagram event that gives back the
// bytes.
func FuzzEvent(f *testing.F) {
	f.Add([]byte("hello"), "192.0.2.7:5000")
	f.Add([]byte("two\nlines\r\n\n"), "[2001:db8::1]:1")
	f.Add([]byte{0, 0xff, '\r'}, "data: x\n\nevent: y")
	f.Fuzz(func(t *testing.T, data []byte, src string) {
		frame := appendEvent(nil, "datagram", Event{
			BindingID: "id", Src: src, Payload: base64.StdEncoding.EncodeToString(data), ReceivedAt: time.Unix(1, 0).UTC(),
		})
		s := &sseStream{Events: make(chan sseEvent, 4)}
		s.read(bytes.NewReader(frame))
		var got []sseEvent
		for ev := range s.Events {
			got = append(got, ev)
		}
		if len(got) != 1 || got[0].Type != "datagram" {
			t.Fatalf("frame %q parsed as %+v", frame, got)
		}
		var ev Event
		if err := json.Unmarshal([]byte(got[0].Data), &ev); err != nil {
			t.Fatalf("data %q: %v", got[0].Data, err)
		}
		back, err := base64.StdEncoding.DecodeString(ev.Payload)
		if err != nil || !bytes.Equal(back, data) || (utf8.ValidString(src) && ev.Src != src) {
			t.Fatalf("got %q from %q, want %q from %q", back, ev.Src, data, src)
		}
	})
}
