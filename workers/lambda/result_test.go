package lambda

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// recorder is a workers.ResponseWriter for unit tests.
type recorder struct {
	header nats.Header
	body   []byte
	wrote  bool
}

func (r *recorder) Header() nats.Header {
	if r.header == nil {
		r.header = nats.Header{}
	}
	return r.header
}

func (r *recorder) Write(p []byte) (int, error) {
	r.wrote = true
	r.body = append(r.body, p...)
	return len(p), nil
}

// TestParseResult checks how each native result becomes a reply for each
// protocol, and that the Bridge accepts exactly the results that
// result.schema.json allows.
func TestParseResult(t *testing.T) {
	sch := schema(t, "result.schema.json")
	raw := &workers.Request{}
	coap := &workers.Request{CoAP: &workers.CoAPRequest{Method: "GET"}}
	rpc := &workers.Request{RPC: &workers.RPCRequest{Service: "S", Method: "M"}}
	tests := []struct {
		name   string
		result string
		bad    bool
		// The reply per protocol: headers as "key=value" joined by ",",
		// then the body; "-" for no reply.
		raw, coap, rpc string
	}{
		{name: "string", result: `"hi"`, raw: " hi", coap: " hi", rpc: " hi"},
		{name: "empty string", result: `""`, raw: " ", coap: " ", rpc: " "},
		{name: "null", result: `null`, raw: "-", coap: "udpgate-coap-code=5.04 ", rpc: "udpgate-rpc-error=no reply from the function,udpgate-rpc-status=4 "},
		{name: "nothing", result: ``, raw: "-", coap: "udpgate-coap-code=5.04 ", rpc: "udpgate-rpc-error=no reply from the function,udpgate-rpc-status=4 "},
		{name: "empty object", result: `{}`, raw: " ", coap: " ", rpc: " "},
		{name: "body", result: `{"body": "text"}`, raw: " text", coap: " text", rpc: " text"},
		{name: "base64 body", result: `{"body": "AAH/", "isBase64Encoded": true}`, raw: " \x00\x01\xff", coap: " \x00\x01\xff", rpc: " \x00\x01\xff"},
		{name: "CoAP fields", result: `{"code": "4.04", "content_format": 50, "body": "{}"}`,
			raw: " {}", coap: "udpgate-coap-code=4.04,udpgate-coap-content-format=50 {}", rpc: " {}"},
		{name: "RPC status", result: `{"status": 3, "error": "bad limit"}`,
			raw: " ", coap: " ", rpc: "udpgate-rpc-error=bad limit,udpgate-rpc-status=3 "},
		{name: "RPC error alone", result: `{"error": "oops"}`, raw: " ", coap: " ", rpc: "udpgate-rpc-error=oops,udpgate-rpc-status=2 "},
		{name: "unknown fields", result: `{"statusCode": 200, "headers": {}}`, raw: " ", coap: " ", rpc: " "},
		{name: "whitespace", result: " \n\"hi\"\n", raw: " hi", coap: " hi", rpc: " hi"},

		{name: "number", result: `42`, bad: true},
		{name: "array", result: `["hi"]`, bad: true},
		{name: "boolean", result: `true`, bad: true},
		{name: "not JSON", result: `hello`, bad: true},
		{name: "truncated", result: `{"body": "x`, bad: true},
		{name: "body not a string", result: `{"body": 5}`, bad: true},
		{name: "bad base64", result: `{"body": "not base64!", "isBase64Encoded": true}`, bad: true},
		{name: "isBase64Encoded not a boolean", result: `{"isBase64Encoded": "yes"}`, bad: true},
		{name: "code class", result: `{"code": "3.00"}`, bad: true},
		{name: "code detail", result: `{"code": "4.32"}`, bad: true},
		{name: "code as number", result: `{"code": 205}`, bad: true},
		{name: "content_format too large", result: `{"content_format": 65536}`, bad: true},
		{name: "content_format negative", result: `{"content_format": -1}`, bad: true},
		{name: "status too large", result: `{"status": 17}`, bad: true},
		{name: "status fraction", result: `{"status": 1.5}`, bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.result != "" {
				err := valid(sch, []byte(tt.result))
				if (err != nil) != tt.bad {
					t.Errorf("schema: %v, want bad %v", err, tt.bad)
				}
			}
			rp, err := parseResult([]byte(tt.result))
			if (err != nil) != tt.bad {
				t.Fatalf("parseResult: %v, want bad %v", err, tt.bad)
			}
			if tt.bad {
				return
			}
			for _, p := range []struct {
				name string
				req  *workers.Request
				want string
			}{{"raw", raw, tt.raw}, {"coap", coap, tt.coap}, {"rpc", rpc, tt.rpc}} {
				w := &recorder{}
				rp.write(w, p.req)
				if got := show(w); got != p.want {
					t.Errorf("%s reply %q, want %q", p.name, got, p.want)
				}
			}
		})
	}
}

// show renders a reply as the table of TestParseResult does.
func show(w *recorder) string {
	if !w.wrote && len(w.header) == 0 {
		return "-"
	}
	var b bytes.Buffer
	for _, k := range []string{schemas.HeaderCoAPCode, schemas.HeaderCoAPContentFormat, schemas.HeaderRPCError, schemas.HeaderRPCStatus} {
		if v := w.header.Get(k); v != "" {
			if b.Len() > 0 {
				b.WriteByte(',')
			}
			b.WriteString(k + "=" + v)
		}
	}
	b.WriteByte(' ')
	b.Write(w.body)
	return b.String()
}

// TestParseBatch checks how a batch result becomes one outcome per
// message, and that the Bridge accepts the whole results that
// batch-result.schema.json allows.
func TestParseBatch(t *testing.T) {
	sch := schema(t, "batch-result.schema.json")
	tests := []struct {
		name   string
		result string
		bad    bool     // the whole batch fails
		want   []string // per message: the body, "-" for no reply, "!" for an error
		logged uint64   // bad replies counted
	}{
		{name: "all", result: `{"Replies": [{"Tag": "1", "Data": "Yg=="}, {"Tag": "0", "Data": "YQ=="}]}`, want: []string{"a", "b", "-"}},
		{name: "null", result: `null`, want: []string{"-", "-", "-"}},
		{name: "nothing", result: ``, want: []string{"-", "-", "-"}},
		{name: "no Replies", result: `{}`, want: []string{"-", "-", "-"}},
		{name: "null Data", result: `{"Replies": [{"Tag": "2", "Data": null}, {"Tag": "1", "Data": ""}]}`, want: []string{"-", "", "-"}},
		{name: "unknown Tag", result: `{"Replies": [{"Tag": "3", "Data": "YQ=="}, {"Tag": "01", "Data": "YQ=="}, {"Tag": "x"}]}`, want: []string{"-", "-", "-"}, logged: 3},
		{name: "second reply", result: `{"Replies": [{"Tag": "0", "Data": "YQ=="}, {"Tag": "0", "Data": "Yg=="}]}`, want: []string{"a", "-", "-"}, logged: 1},
		{name: "bad base64", result: `{"Replies": [{"Tag": "0", "Data": "%%%"}, {"Tag": "1", "Data": "Yg=="}]}`, want: []string{"!", "b", "-"}, logged: 1},
		{name: "array", result: `[]`, bad: true},
		{name: "string", result: `"hi"`, bad: true},
		{name: "Replies not an array", result: `{"Replies": {}}`, bad: true},
		{name: "Tag not a string", result: `{"Replies": [{"Tag": 0, "Data": "YQ=="}]}`, bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.result != "" {
				err := valid(sch, []byte(tt.result))
				if bad := tt.bad || tt.name == "bad base64"; (err != nil) != bad {
					t.Errorf("schema: %v, want bad %v", err, bad)
				}
			}
			b := &Bridge{Function: "f", Log: slog.New(slog.DiscardHandler)}
			b.init()
			out, err := b.parseBatch([]byte(tt.result), 3)
			if (err != nil) != tt.bad {
				t.Fatalf("parseBatch: %v, want bad %v", err, tt.bad)
			}
			if tt.bad {
				return
			}
			for i, o := range out {
				got := string(o.reply.body)
				switch {
				case o.err != nil:
					got = "!"
				case o.reply.none:
					got = "-"
				}
				if got != tt.want[i] {
					t.Errorf("message %d: %q, want %q", i, got, tt.want[i])
				}
			}
			if n := b.Stats().BadOutput; n != tt.logged {
				t.Errorf("%d bad replies counted, want %d", n, tt.logged)
			}
		})
	}
}

// TestSchemaExamples checks every example in schemas/lambda/README.md
// against the schema it is marked with.
func TestSchemaExamples(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "schemas", "lambda", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	examples := regexp.MustCompile("(?s)<!-- example: (\\S+) -->\n```json\n(.*?)```").FindAllSubmatch(readme, -1)
	if len(examples) < 8 {
		t.Fatalf("%d examples in the README, want one per schema at least", len(examples))
	}
	seen := map[string]bool{}
	for _, m := range examples {
		name, doc := string(m[1]), m[2]
		seen[name] = true
		if err := valid(schema(t, name), doc); err != nil {
			t.Errorf("example for %s does not match it: %v\n%s", name, err, doc)
		}
	}
	files, _ := filepath.Glob(filepath.Join("..", "..", "schemas", "lambda", "*.schema.json"))
	for _, f := range files {
		if !seen[filepath.Base(f)] {
			t.Errorf("no example for %s in the README", filepath.Base(f))
		}
	}
}

// TestDeadline: a function that is always throttled is retried with
// backoff until the request's deadline; Handle then returns an error that
// does not ask for a redelivery, which the SDK acks as expired.
func TestDeadline(t *testing.T) {
	f := newFakeLambda(t)
	f.handle("busy", func([]byte) ([]byte, error) { return nil, errThrottled })
	b := &Bridge{Client: f.client(), Function: "busy"}
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	w := &recorder{}
	err := b.Handle(ctx, w, &workers.Request{Body: []byte("x")})
	if err == nil || errors.Is(err, workers.ErrRetry) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Handle: %v, want the deadline, not ErrRetry", err)
	}
	st := b.Stats()
	// The last invocation may be cut short by the deadline.
	if st.Throttles < 2 || st.Retries < 2 || st.Throttles+1 < st.Invocations {
		t.Errorf("stats %+v, want several throttled invocations", st)
	}
	if w.wrote || len(w.header) > 0 {
		t.Error("wrote a reply")
	}
}

// blocked is an Invoker whose calls last until their context ends.
type blocked struct{ calls chan struct{} }

func (b blocked) Invoke(ctx context.Context, _ *awslambda.InvokeInput, _ ...func(*awslambda.Options)) (*awslambda.InvokeOutput, error) {
	b.calls <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestClose: Close cancels a batch in flight and fails the requests
// waiting for a batch, both with an error wrapping workers.ErrRetry, and
// later Handle calls return ErrClosed.
func TestClose(t *testing.T) {
	inv := blocked{calls: make(chan struct{}, 1)}
	b := &Bridge{Client: inv, Function: "f", Shape: ShapeBatch, BatchSize: 1, MaxInvocations: 1}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	errs := make(chan error, 2)
	for range 2 { // the first is invoked, the second waits in the batcher
		go func() { errs <- b.Handle(ctx, &recorder{}, &workers.Request{Body: []byte("x")}) }()
	}
	<-inv.calls
	b.Close()
	for range 2 {
		if err := <-errs; !errors.Is(err, workers.ErrRetry) {
			t.Errorf("Handle: %v, want ErrRetry", err)
		}
	}
	if err := b.Handle(ctx, &recorder{}, &workers.Request{}); !errors.Is(err, ErrClosed) || !errors.Is(err, workers.ErrRetry) {
		t.Errorf("Handle after Close: %v, want ErrClosed and ErrRetry", err)
	}
	b.Close() // idempotent
}

// TestConfiguration: a Bridge without a client or function, or with an
// unknown shape, fails every request.
func TestConfiguration(t *testing.T) {
	for _, b := range []*Bridge{
		{Function: "f"},
		{Client: blocked{}},
		{Client: blocked{}, Function: "f", Shape: "batched"},
	} {
		if err := b.Handle(context.Background(), &recorder{}, &workers.Request{}); err == nil || errors.Is(err, workers.ErrRetry) {
			t.Errorf("%+v: Handle: %v, want an error", b, err)
		}
	}
}
