package lambda

import (
	"log/slog"
	"testing"

	"github.com/udpgate/udpgate/workers"
)

// FuzzParseResult feeds arbitrary function output to the result decoders:
// they must never panic, and a result they accept has a valid code and
// status.
func FuzzParseResult(f *testing.F) {
	for _, s := range []string{
		`"hello"`, `null`, ``, `{"body":"aGk=","isBase64Encoded":true,"code":"2.05","content_format":0}`,
		`{"status":3,"error":"no"}`, `{"code":"9.99"}`, `[1,2]`, `{"Replies":[{"Tag":"0","Data":"aGk="}]}`,
		`{"Replies":null}`, `{"Replies":[{"Tag":"7"}]}`, "\x00", `"\ud800"`,
	} {
		f.Add([]byte(s))
	}
	b := &Bridge{Function: "fuzz", log: slog.New(slog.DiscardHandler)} // as Handle initialises it
	f.Fuzz(func(t *testing.T, p []byte) {
		if r, err := parseResult(p); err == nil {
			if r.hasStatus && (r.status < 0 || r.status > maxRPCStatus) {
				t.Fatalf("accepted status %d from %q", r.status, p)
			}
			if r.code != "" {
				if _, err := workers.ParseCode(string(r.code)); err != nil {
					t.Fatalf("accepted code %q from %q", r.code, p)
				}
			}
		}
		if outs, err := b.parseBatch(p, 4); err == nil && len(outs) != 4 {
			t.Fatalf("parseBatch returned %d outcomes for 4 messages", len(outs))
		}
	})
}
