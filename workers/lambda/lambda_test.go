package lambda

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/lambda/types"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/message/pool"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
)

// TestRaw: a raw datagram goes to the function as a raw event matching the
// schema, and the function's string comes back from the port it was sent
// to, in a direct group and in a durable one.
func TestRaw(t *testing.T) {
	for _, delivery := range deliveries {
		t.Run(delivery.String(), func(t *testing.T) {
			f := newFakeLambda(t)
			f.handle("upper", func(event []byte) ([]byte, error) {
				var ev RawEvent
				if err := json.Unmarshal(event, &ev); err != nil {
					return nil, err
				}
				data, err := base64.StdEncoding.DecodeString(ev.Data)
				if err != nil {
					return nil, err
				}
				return jsonOf(strings.ToUpper(string(data))), nil
			})
			n := startGateway(t, schemas.ProtocolRaw)
			b := &Bridge{Client: f.client(), Function: "upper"}
			n.serve(t, delivery, "upper", n.subject(schemas.ProtocolRaw), b, 0)

			sent := time.Now()
			got, c, err := exchange(t, n.addr, []byte("hello, lambda"))
			if err != nil {
				t.Fatalf("no reply from %v: %v", n.addr, err)
			}
			if string(got) != "HELLO, LAMBDA" {
				t.Errorf("reply %q, want %q", got, "HELLO, LAMBDA")
			}

			events, _ := f.recorded("upper")
			if len(events) != 1 {
				t.Fatalf("%d invocations, want 1", len(events))
			}
			if err := valid(schema(t, "raw-event.schema.json"), events[0]); err != nil {
				t.Errorf("event %s does not match the schema: %v", events[0], err)
			}
			// A function written for the bare {"Port", "Data"} event.
			var bare struct {
				Port int
				Data []byte
			}
			var ev RawEvent
			if err := json.Unmarshal(events[0], &bare); err != nil || json.Unmarshal(events[0], &ev) != nil {
				t.Fatalf("event %s: %v", events[0], err)
			}
			if bare.Port != int(n.port) || string(bare.Data) != "hello, lambda" {
				t.Errorf("bare event: port %d data %q, want %d %q", bare.Port, bare.Data, n.port, "hello, lambda")
			}
			if ev.Remote != c.LocalAddr().String() || ev.Local != n.addr.String() || ev.ID == "" {
				t.Errorf("event Remote %q Local %q Id %q, want %q %q and an id", ev.Remote, ev.Local, ev.ID, c.LocalAddr(), n.addr)
			}
			// Between the send and the reply, give or take the stream's
			// clock (durable: when the capture stored the request).
			if at, err := time.Parse(time.RFC3339Nano, ev.ReceivedAt); err != nil || at.Before(sent.Add(-time.Second)) || at.After(time.Now()) {
				t.Errorf("ReceivedAt %q (sent at %v): %v", ev.ReceivedAt, sent, err)
			}
			if st := b.Stats(); st.Invocations != 1 || st.MaxInFlight != 1 {
				t.Errorf("stats %+v, want 1 invocation", st)
			}
		})
	}
}

// coapFunction serves the CoAP tests by path.
func coapFunction(event []byte) ([]byte, error) {
	var ev CoAPEvent
	if err := json.Unmarshal(event, &ev); err != nil {
		return nil, err
	}
	switch ev.Path {
	case "/time":
		return jsonOf(Result{Body: "2026-11-23T16:36:32Z", ContentFormat: new(0)}), nil
	case "/plain":
		return jsonOf("just a string"), nil
	case "/echo":
		return jsonOf(Result{Body: ev.Payload, IsBase64Encoded: true, ContentFormat: ev.ContentFormat}), nil
	case "/missing":
		return jsonOf(Result{Code: "4.04"}), nil
	case "/boom":
		return nil, functionError("boom")
	case "/bad":
		return []byte(`{"code": "9.99"}`), nil
	case "/null":
		return []byte("null"), nil
	}
	return nil, functionError("unexpected path " + ev.Path)
}

// TestCoAP: CoAP requests from a real client get the function's code,
// Content-Format and body; a function error gives 5.00, bad output 5.00
// and a log line naming the function, null 5.04.
func TestCoAP(t *testing.T) {
	f := newFakeLambda(t)
	f.handle("coap-fn", coapFunction)
	n := startGateway(t, schemas.ProtocolCoAP)
	var logs logBuffer
	b := &Bridge{Client: f.client(), Function: "coap-fn", Log: slog.New(slog.NewTextHandler(&logs, nil))}
	n.serve(t, workers.Direct, "coap", n.subject(schemas.ProtocolCoAP), b, 0)

	co, err := coapudp.Dial(n.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { co.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	tests := []struct {
		name, path string
		post       string // POST this payload (Content-Format text/plain); "" for GET
		code       codes.Code
		cf         int // -1 for none
		body       string
	}{
		{name: "GET /time", path: "/time", code: codes.Content, cf: 0, body: "2026-11-23T16:36:32Z"},
		{name: "string result", path: "/plain", code: codes.Content, cf: -1, body: "just a string"},
		{name: "POST /echo", path: "/echo", post: "ping", code: codes.Content, cf: 0, body: "ping"},
		{name: "code from result", path: "/missing", code: codes.NotFound, cf: -1},
		{name: "function error", path: "/boom", code: codes.InternalServerError, cf: -1},
		{name: "bad output", path: "/bad", code: codes.InternalServerError, cf: -1},
		{name: "null", path: "/null", code: codes.GatewayTimeout, cf: -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp *pool.Message
			start := time.Now()
			if tt.post != "" {
				resp, err = co.Post(ctx, tt.path, message.TextPlain, strings.NewReader(tt.post),
					message.Option{ID: message.URIQuery, Value: []byte("a=1")},
					message.Option{ID: message.URIQuery, Value: []byte("b")})
			} else {
				resp, err = co.Get(ctx, tt.path)
			}
			if err != nil {
				t.Fatal(err)
			}
			body, _ := resp.ReadBody()
			cf := -1
			if v, err := resp.ContentFormat(); err == nil {
				cf = int(v)
			}
			if resp.Code() != tt.code || cf != tt.cf || string(body) != tt.body {
				t.Errorf("%v cf %d %q, want %v cf %d %q", resp.Code(), cf, body, tt.code, tt.cf, tt.body)
			}
			// The gateway's deadline is 5 s: an answer in less than 2 s
			// came from the bridge, not from the gateway giving up.
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("answered after %v", d)
			}
		})
	}

	sch := schema(t, "coap-event.schema.json")
	events, _ := f.recorded("coap-fn")
	if len(events) != len(tests) {
		t.Errorf("%d invocations, want %d", len(events), len(tests))
	}
	for _, e := range events {
		if err := valid(sch, e); err != nil {
			t.Errorf("event %s does not match the schema: %v", e, err)
		}
	}
	var echo CoAPEvent
	for _, e := range events {
		if bytes.Contains(e, []byte(`"/echo"`)) {
			json.Unmarshal(e, &echo)
		}
	}
	if echo.Code != "POST" || echo.Payload != "cGluZw==" || echo.ContentFormat == nil || *echo.ContentFormat != 0 ||
		strings.Join(echo.Query, "&") != "a=1&b" || echo.Port != n.port {
		t.Errorf("POST /echo event %+v", echo)
	}
	if !strings.Contains(logs.String(), "function=coap-fn") {
		t.Errorf("no log line naming the function for bad output: %q", logs.String())
	}
	if st := b.Stats(); st.FunctionErrors != 1 || st.BadOutput != 1 {
		t.Errorf("stats %+v, want 1 function error and 1 bad output", st)
	}

	t.Run("message id and token", func(t *testing.T) {
		// CON GET /time, message id 1234, token ab cd.
		req := []byte{0x42, 0x01, 0, 0, 0xab, 0xcd, 0xb4, 't', 'i', 'm', 'e'}
		binary.BigEndian.PutUint16(req[2:], 1234)
		got, _, err := exchange(t, n.addr, req)
		if err != nil {
			t.Fatal(err)
		}
		// ACK 2.05, same message id and token, Content-Format 0.
		if len(got) < 6 || got[0] != 0x62 || got[1] != 0x45 || binary.BigEndian.Uint16(got[2:]) != 1234 || got[4] != 0xab {
			t.Errorf("response % x", got)
		}
		events, _ := f.recorded("coap-fn")
		var ev CoAPEvent
		json.Unmarshal(events[len(events)-1], &ev)
		if ev.MessageID != 1234 || ev.Token != "q80=" || ev.Code != "GET" || ev.Path != "/time" || len(ev.Query) != 0 {
			t.Errorf("event %s", events[len(events)-1])
		}
	})

	t.Run("block1 upload", func(t *testing.T) {
		// Larger than a block: go-coap uploads it block-wise, the gateway
		// reassembles it, and the request has no datagram head.
		big := bytes.Repeat([]byte("0123456789abcdef"), 256)
		resp, err := co.Post(ctx, "/echo", message.AppOctets, bytes.NewReader(big))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := resp.ReadBody()
		if resp.Code() != codes.Content || !bytes.Equal(body, big) {
			t.Errorf("%v, %d bytes, want 2.05 and the %d bytes", resp.Code(), len(body), len(big))
		}
		events, _ := f.recorded("coap-fn")
		e := events[len(events)-1]
		var ev CoAPEvent
		json.Unmarshal(e, &ev)
		if ev.MessageID != 0 || ev.Token != "" || ev.Code != "POST" || ev.Path != "/echo" || ev.Payload != base64.StdEncoding.EncodeToString(big) {
			t.Errorf("event %.200s...: want message id 0 and no token", e)
		}
		if err := valid(sch, e); err != nil {
			t.Errorf("event does not match the schema: %v", err)
		}
	})
}

func invokeInput(function string) *awslambda.InvokeInput {
	return &awslambda.InvokeInput{FunctionName: aws.String(function), Payload: []byte("{}")}
}

// TestRPC: an RPC call goes to the function as an RPC event; the body,
// status and error of the result come back in the Reply envelope.
func TestRPC(t *testing.T) {
	f := newFakeLambda(t)
	f.handle("rpc-fn", func(event []byte) ([]byte, error) {
		var ev RPCEvent
		if err := json.Unmarshal(event, &ev); err != nil {
			return nil, err
		}
		if ev.Method == "Fail" {
			return jsonOf(Result{Status: new(5), Error: "no such thing"}), nil
		}
		return jsonOf(Result{Body: ev.Params, IsBase64Encoded: true}), nil
	})
	n := startGateway(t, schemas.ProtocolRPC)
	b := &Bridge{Client: f.client(), Function: "rpc-fn"}
	n.serve(t, workers.Direct, "rpc", n.subject(schemas.ProtocolRPC), b, 0)

	tests := []struct {
		method string
		id     uint64
		params []byte
		status rpcpb.Status
		errMsg string
		body   []byte
	}{
		{"Echo", 1<<63 + 5, []byte{0x08, 0x01, 0xff}, rpcpb.Status_STATUS_OK, "", []byte{0x08, 0x01, 0xff}},
		{"Fail", 42, nil, rpcpb.Status_STATUS_NOT_FOUND, "no such thing", nil},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			call, _ := proto.Marshal(&rpcpb.Call{Id: tt.id, Service: "Things", Method: tt.method, Params: tt.params})
			got, _, err := exchange(t, n.addr, call)
			if err != nil {
				t.Fatal(err)
			}
			var r rpcpb.Reply
			if err := proto.Unmarshal(got, &r); err != nil {
				t.Fatal(err)
			}
			if r.Id != tt.id || r.Status != tt.status || r.Error != tt.errMsg || !bytes.Equal(r.Body, tt.body) {
				t.Errorf("reply %v, want id %d status %v error %q body %x", &r, tt.id, tt.status, tt.errMsg, tt.body)
			}
		})
	}
	events, _ := f.recorded("rpc-fn")
	sch := schema(t, "rpc-event.schema.json")
	for _, e := range events {
		if err := valid(sch, e); err != nil {
			t.Errorf("event %s does not match the schema: %v", e, err)
		}
	}
	var ev RPCEvent
	json.Unmarshal(events[0], &ev)
	if ev.Service != "Things" || ev.Method != "Echo" || ev.ID != "9223372036854775813" || ev.Params != "CAH/" {
		t.Errorf("event %s", events[0])
	}
}

// TestRetry: throttling, a service error and an invocation slower than
// InvokeTimeout are each retried, and each request is answered once.
func TestRetry(t *testing.T) {
	f := newFakeLambda(t)
	var (
		mu    sync.Mutex // guards tries
		tries = map[string]int{}
	)
	f.handle("flaky", func(event []byte) ([]byte, error) {
		var ev RawEvent
		json.Unmarshal(event, &ev)
		data, _ := base64.StdEncoding.DecodeString(ev.Data)
		mu.Lock()
		tries[string(data)]++
		first := tries[string(data)] == 1
		mu.Unlock()
		if first {
			switch string(data) {
			case "throttle":
				return nil, errThrottled
			case "unavailable":
				return nil, errUnavailable
			case "slow":
				time.Sleep(600 * time.Millisecond) // longer than InvokeTimeout
			}
		}
		return jsonOf("ok " + string(data)), nil
	})
	n := startGateway(t, schemas.ProtocolRaw)
	b := &Bridge{Client: f.client(), Function: "flaky", InvokeTimeout: 200 * time.Millisecond}
	srv := n.serve(t, workers.Direct, "flaky", n.subject(schemas.ProtocolRaw), b, 0)

	cases := []string{"throttle", "unavailable", "slow"}
	for _, c := range cases {
		t.Run(c, func(t *testing.T) {
			got, _, err := exchange(t, n.addr, []byte(c))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != "ok "+c {
				t.Errorf("reply %q", got)
			}
			_, results := f.recorded("flaky")
			ok := 0
			for _, r := range results {
				if string(r) == `"ok `+c+`"` {
					ok++
				}
			}
			if ok != 1 && c != "slow" { // the slow first try also succeeds, too late
				t.Errorf("%d successful invocations, want 1", ok)
			}
		})
	}
	eventually(t, "requests acked", func() bool { return srv.Stats().Replied == uint64(len(cases)) })
	eventually(t, "replies counted", func() bool { return n.g.Stats().Egress.Sent == uint64(len(cases)) })
	if eg := n.g.Stats().Egress; eg.Sent != uint64(len(cases)) || eg.Duplicate != 0 || eg.WorkerError != 0 {
		t.Errorf("egress %+v, want %d sent, nothing else", eg, len(cases))
	}
	if st := b.Stats(); st.Throttles != 1 || st.Timeouts != 1 || st.Retries != 3 || st.Invocations != 6 {
		t.Errorf("stats %+v, want 1 throttle, 1 timeout, 3 retries of 6 invocations", st)
	}
}

// TestRetryAfter: a throttle that asks for Retry-After: 1 is retried no
// sooner than a second later (the plain backoff would retry within 25 ms),
// and the request is still answered.
func TestRetryAfter(t *testing.T) {
	f := newFakeLambda(t)
	var (
		mu    sync.Mutex // guards calls
		calls []time.Time
	)
	f.handle("busy", func([]byte) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, time.Now())
		if len(calls) == 1 {
			return nil, errSlowDown
		}
		return jsonOf("ok"), nil
	})
	n := startGateway(t, schemas.ProtocolRaw)
	b := &Bridge{Client: f.client(), Function: "busy"}
	n.serve(t, workers.Direct, "busy", n.subject(schemas.ProtocolRaw), b, 0)

	got, _, err := exchange(t, n.addr, []byte("x"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "ok" {
		t.Errorf("reply %q, want ok", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 2 {
		t.Fatalf("%d invocations, want 2", len(calls))
	}
	if gap := calls[1].Sub(calls[0]); gap < time.Second {
		t.Errorf("retried after %v, before the 1 s Retry-After", gap)
	}
	if st := b.Stats(); st.Throttles != 1 || st.Retries != 1 {
		t.Errorf("stats %+v, want 1 throttle, 1 retry", st)
	}
}

func TestRetryAfterParse(t *testing.T) {
	secs := func(s string) error { return &types.TooManyRequestsException{RetryAfterSeconds: &s} }
	for _, c := range []struct {
		err  error
		want time.Duration
	}{
		{secs("2"), 2 * time.Second},
		{secs(" 0.5 "), 500 * time.Millisecond},
		{secs("3600"), maxRetryAfter},
		{secs("-1"), 0},
		{secs("NaN"), 0},
		{secs("soon"), 0},
		{&types.TooManyRequestsException{}, 0},
		{fmt.Errorf("wrapped: %w", secs("1")), time.Second},
		{errors.New("other"), 0},
	} {
		if got := retryAfter(c.err); got != c.want {
			t.Errorf("retryAfter(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestBatch: 10 requests sent at once are answered, each with the reply
// tagged for it, by fewer than 10 invocations; a request the function does
// not answer gets no reply. In a direct group and in a durable one.
func TestBatch(t *testing.T) {
	for _, delivery := range deliveries {
		t.Run(delivery.String(), func(t *testing.T) {
			f := newFakeLambda(t)
			f.handle("batch-fn", func(event []byte) ([]byte, error) {
				var ev BatchEvent
				if err := json.Unmarshal(event, &ev); err != nil {
					return nil, err
				}
				var res BatchResult
				for _, m := range slicesReverse(ev.Messages) { // any order
					data, _ := base64.StdEncoding.DecodeString(m.Data)
					if bytes.HasPrefix(data, []byte("skip")) {
						continue
					}
					reply := base64.StdEncoding.EncodeToString(append([]byte("re:"), data...))
					res.Replies = append(res.Replies, BatchReply{Tag: m.Tag, Data: &reply})
				}
				return jsonOf(res), nil
			})
			n := startGateway(t, schemas.ProtocolRaw)
			b := &Bridge{Client: f.client(), Function: "batch-fn", Shape: ShapeBatch,
				BatchSize: 10, BatchWindow: 300 * time.Millisecond, MaxInvocations: 2}
			srv := n.serve(t, delivery, "batch", n.subject(schemas.ProtocolRaw), b, 0)

			const requests = 10
			var wg sync.WaitGroup
			for i := range requests {
				wg.Go(func() {
					msg := fmt.Sprintf("request %d", i)
					got, _, err := exchange(t, n.addr, []byte(msg))
					if err != nil {
						t.Errorf("%s: %v", msg, err)
					} else if string(got) != "re:"+msg {
						t.Errorf("%s: reply %q", msg, got)
					}
				})
			}
			wg.Wait()
			events, results := f.recorded("batch-fn")
			if len(events) >= requests {
				t.Errorf("%d invocations for %d requests, want fewer", len(events), requests)
			}
			evSchema, resSchema := schema(t, "batch-event.schema.json"), schema(t, "batch-result.schema.json")
			for _, e := range events {
				if err := valid(evSchema, e); err != nil {
					t.Errorf("event %s does not match the schema: %v", e, err)
				}
			}
			for _, r := range results {
				if err := valid(resSchema, r); err != nil {
					t.Errorf("result %s does not match the schema: %v", r, err)
				}
			}

			// Unanswered: handled, no reply published.
			c, err := net.DialUDP("udp", nil, n.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.Write([]byte("skip me"))
			eventually(t, "the skipped request handled", func() bool { return srv.Stats().Handled == requests+1 })
			if st := srv.Stats(); st.Replied != requests || st.Failed != 0 {
				t.Errorf("worker stats %+v, want %d replied", st, requests)
			}
			t.Logf("%d requests in %d invocations", requests, len(events))
		})
	}
}

func slicesReverse[T any](s []T) []T {
	r := make([]T, len(s))
	for i, v := range s {
		r[len(s)-1-i] = v
	}
	return r
}

// TestBatchCoAP: in batch mode a CoAP request gets 2.05 with the reply's
// Data, and 5.04 at once when the function does not answer it.
func TestBatchCoAP(t *testing.T) {
	f := newFakeLambda(t)
	f.handle("batch-coap", func(event []byte) ([]byte, error) {
		var ev BatchEvent
		json.Unmarshal(event, &ev)
		var res BatchResult
		for _, m := range ev.Messages {
			if m.Data != "" { // a GET has no payload: answer only the POST
				res.Replies = append(res.Replies, BatchReply{Tag: m.Tag, Data: &m.Data})
			}
		}
		return jsonOf(res), nil
	})
	n := startGateway(t, schemas.ProtocolCoAP)
	b := &Bridge{Client: f.client(), Function: "batch-coap", Shape: ShapeBatch, BatchWindow: 10 * time.Millisecond}
	n.serve(t, workers.Direct, "batch-coap", n.subject(schemas.ProtocolCoAP), b, 0)
	co, err := coapudp.Dial(n.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	resp, err := co.Post(ctx, "/echo", message.TextPlain, strings.NewReader("hi"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := resp.ReadBody()
	if resp.Code() != codes.Content || string(body) != "hi" {
		t.Errorf("POST: %v %q, want 2.05 %q", resp.Code(), body, "hi")
	}
	start := time.Now()
	resp, err = co.Get(ctx, "/unanswered")
	if err != nil {
		t.Fatal(err)
	}
	if resp.Code() != codes.GatewayTimeout || time.Since(start) > 2*time.Second {
		t.Errorf("GET: %v after %v, want 5.04 well before the 5 s deadline", resp.Code(), time.Since(start))
	}
}

// TestConcurrencyBound: under load, never more than MaxInvocations
// invocations are in flight, in either shape, and every request is
// answered.
func TestConcurrencyBound(t *testing.T) {
	tests := []struct {
		name        string
		bridge      *Bridge
		concurrency int // of the workers.Server; 0 for Bridge.Concurrency
	}{
		// More handlers than invocations: the Bridge is what bounds them.
		{"native", &Bridge{MaxInvocations: 3}, 32},
		{"batch", &Bridge{MaxInvocations: 3, Shape: ShapeBatch, BatchSize: 4, BatchWindow: 5 * time.Millisecond}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeLambda(t)
			f.handle("slow", func(event []byte) ([]byte, error) {
				time.Sleep(30 * time.Millisecond) // overlap the invocations
				if tt.bridge.Shape != ShapeBatch {
					var ev RawEvent
					json.Unmarshal(event, &ev)
					return jsonOf(Result{Body: ev.Data, IsBase64Encoded: true}), nil
				}
				var ev BatchEvent
				json.Unmarshal(event, &ev)
				var res BatchResult
				for _, m := range ev.Messages {
					res.Replies = append(res.Replies, BatchReply{Tag: m.Tag, Data: &m.Data})
				}
				return jsonOf(res), nil
			})
			n := startGateway(t, schemas.ProtocolRaw)
			b := tt.bridge
			b.Client, b.Function = f.client(), "slow"
			n.serve(t, workers.Direct, "load", n.subject(schemas.ProtocolRaw), b, tt.concurrency)

			const requests = 50
			var answered atomic.Int64
			var wg sync.WaitGroup
			for i := range requests {
				wg.Go(func() {
					msg := "load " + strconv.Itoa(i)
					got, _, err := exchange(t, n.addr, []byte(msg))
					if err != nil || string(got) != msg {
						t.Errorf("%s: reply %q, %v", msg, got, err)
						return
					}
					answered.Add(1)
				})
			}
			wg.Wait()
			if answered.Load() != requests {
				t.Errorf("%d of %d answered", answered.Load(), requests)
			}
			maxSeen, st := f.maxInFlight.Load(), b.Stats()
			if maxSeen > 3 || st.MaxInFlight > 3 {
				t.Errorf("%d invocations at once at the endpoint, %d in the bridge; want at most 3", maxSeen, st.MaxInFlight)
			}
			if maxSeen < 2 {
				t.Errorf("at most %d invocation at once: the load did not overlap", maxSeen)
			}
			t.Logf("%d requests, %d invocations, at most %d at once", requests, st.Invocations, maxSeen)
		})
	}
}

// TestNewClient: NewClient takes region and credentials from the
// environment, the endpoint from AWS_ENDPOINT_URL_LAMBDA unless one is
// given, and does not retry.
func TestNewClient(t *testing.T) {
	f := newFakeLambda(t)
	f.handle("hello", func([]byte) ([]byte, error) { return jsonOf("hello"), nil })
	f.handle("throttled", func([]byte) ([]byte, error) { return nil, errThrottled })
	t.Setenv("AWS_REGION", "eu-central-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDUDPGATETEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()

	t.Setenv("AWS_ENDPOINT_URL_LAMBDA", f.URL)
	c, err := NewClient(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.Invoke(ctx, invokeInput("hello"))
	if err != nil || string(out.Payload) != `"hello"` {
		t.Fatalf("through AWS_ENDPOINT_URL_LAMBDA: %v, %v", out, err)
	}
	_, err = c.Invoke(ctx, invokeInput("throttled"))
	events, _ := f.recorded("throttled")
	if err == nil || len(events) != 1 {
		t.Errorf("throttled: %v after %d invocations, want an error after 1", err, len(events))
	}

	t.Setenv("AWS_ENDPOINT_URL_LAMBDA", "http://127.0.0.1:1")
	c, err = NewClient(ctx, f.URL)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := c.Invoke(ctx, invokeInput("hello")); err != nil || string(out.Payload) != `"hello"` {
		t.Fatalf("through the endpoint argument: %v, %v", out, err)
	}

	t.Setenv("AWS_REGION", "")
	if _, err := NewClient(ctx, f.URL); err == nil {
		t.Error("no error without a region")
	}
}

// An endpoint nobody answers is retried until the request's deadline, and
// said in the log: once at once, then at most a line every 10 s with a
// count, never a line per request.
func TestUnreachableEndpointLogged(t *testing.T) {
	t.Setenv("AWS_REGION", "eu-west-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, err := NewClient(ctx, "http://"+addr)
	if err != nil {
		t.Fatal(err)
	}
	var logs logBuffer
	b := &Bridge{Client: client, Function: "gone", Log: slog.New(slog.NewTextHandler(&logs, nil))}
	b.init()
	for range 3 {
		rctx, rcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, err := b.invoke(rctx, []byte(`{}`))
		rcancel()
		if err == nil {
			t.Fatal("an invocation to a closed port succeeded")
		}
	}
	out := logs.String()
	if !strings.Contains(out, "invocations failing") || !strings.Contains(out, "connection refused") {
		t.Errorf("the log does not say the endpoint fails:\n%s", out)
	}
	if n := strings.Count(out, "\n"); n != 1 {
		t.Errorf("%d log lines for 3 failing requests, want 1 (rate-limited):\n%s", n, out)
	}
	b.Close()
	if !strings.Contains(logs.String(), "count=") || strings.Count(logs.String(), "\n") != 2 {
		t.Errorf("Close does not log what it held back:\n%s", logs.String())
	}
}
