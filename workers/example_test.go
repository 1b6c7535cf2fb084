package workers_test

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// A complete worker: it upper-cases every datagram sent to the gateway's
// listener 9000/raw. Several copies of it share the work of group "upper".
func Example() {
	nc, stop := exampleGateway() // NATS with the gateway's stream, for the example
	defer stop()

	js, _ := jetstream.New(nc)
	srv := &workers.Server{
		JetStream: js,
		Group:     "upper",
		Subjects:  []string{"udpgate.in.9000"},
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			_, err := w.Write(bytes.ToUpper(r.Body))
			return err
		}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx) }()

	fmt.Println(exampleRequest(js, "upper", "hello, udpgate"))
	cancel()
	fmt.Println(<-done)
	// Output:
	// HELLO, UDPGATE
	// <nil>
}

// A CoAP worker: a Mux routes the requests of the gateway's listener
// 5683/coap by method and path, and its group consumes only the subjects
// of its patterns.
func ExampleMux() {
	nc, stop := exampleGateway() // NATS with the gateway's stream, for the example
	defer stop()

	mux := workers.NewMux()
	mux.RouteFunc("GET /hello/{name}", func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		res := workers.NewCoAPResponse(w)
		res.SetContentFormat(0) // text/plain;charset=utf-8
		_, err := fmt.Fprintf(res, "hello, %s", r.PathValue("name"))
		return err
	})
	mux.RouteFunc("POST /items", func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		res := workers.NewCoAPResponse(w)
		res.SetCode(workers.Created)
		res.SetLocationPath("items", "1")
		return nil
	})

	js, _ := jetstream.New(nc)
	srv := &workers.Server{
		JetStream: js,
		Group:     "hello",
		Subjects:  mux.Subjects(schemas.DefaultPrefix, 5683),
		Handler:   mux,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx) }()

	fmt.Println(srv.Subjects)
	fmt.Println(exampleCoAPRequest(js, "hello", "GET", []string{"hello", "ana"}, ""))
	fmt.Println(exampleCoAPRequest(js, "hello", "POST", []string{"items"}, "an item"))
	cancel()
	fmt.Println(<-done)
	// Output:
	// [udpgate.in.5683.GET.hello.* udpgate.in.5683.POST.items]
	// 2.05 hello, ana
	// 2.01 location /items/1
	// <nil>
}

func ExampleMux_Discovery() {
	nc, stop := exampleGateway() // NATS with the gateway's stream, for the example
	defer stop()

	mux := workers.NewMux()
	mux.RouteFunc("GET /sensors/{id}", func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		_, err := fmt.Fprintf(w, "sensor %s", r.PathValue("id"))
		return err
	})
	mux.RouteFunc("GET /status", func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
		_, err := w.Write([]byte("ok"))
		return err
	})
	// Literal paths are listed by themselves; a wildcard pattern's
	// resources are listed through Links.
	mux.Route("GET "+workers.WellKnownCore, mux.Discovery(workers.Links{
		"/sensors/1": `rt="temperature";ct=0`,
		"/sensors/2": `rt="humidity";ct=0`,
	}))

	js, _ := jetstream.New(nc)
	srv := &workers.Server{
		JetStream: js,
		Group:     "sensors",
		Subjects:  mux.Subjects(schemas.DefaultPrefix, 5683),
		Handler:   mux,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx) }()

	fmt.Println(exampleCoAPRequest(js, "sensors", "GET", []string{".well-known", "core"}, ""))
	cancel()
	fmt.Println(<-done)
	// Output:
	// 2.05 </sensors/1>;rt="temperature";ct=0,</sensors/2>;rt="humidity";ct=0,</status>
	// <nil>
}

// exampleGateway starts an embedded NATS server with the request stream
// and connects to it.
func exampleGateway() (*nats.Conn, func()) {
	dir, err := os.MkdirTemp("", "workers-example")
	if err != nil {
		panic(err)
	}
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true,
	})
	if err != nil {
		panic(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		panic("nats server not ready")
	}
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		panic(err)
	}
	js, _ := jetstream.New(nc)
	_, err = js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name:     schemas.StreamIn,
		Subjects: []string{schemas.InWildcard(schemas.DefaultPrefix)},
	})
	if err != nil {
		panic(err)
	}
	return nc, func() {
		nc.Close()
		ns.Shutdown()
		ns.WaitForShutdown()
		os.RemoveAll(dir)
	}
}

// exampleRequest does what the gateway does with a datagram on 9000/raw:
// once group pulls, it stores a request and waits for the reply's body.
func exampleRequest(js jetstream.JetStream, group, body string) string {
	msg := nats.NewMsg(schemas.InSubject(schemas.DefaultPrefix, 9000))
	msg.Header.Set(schemas.HeaderListener, "9000/raw")
	msg.Data = []byte(body)
	return string(exampleExchange(js, group, msg).Data)
}

// exampleCoAPRequest does what the gateway does with a CoAP request on
// 5683/coap, and returns the reply's code and body.
func exampleCoAPRequest(js jetstream.JetStream, group, method string, segments []string, body string) string {
	msg := nats.NewMsg(schemas.CoAPSubject(schemas.DefaultPrefix, 5683, method, segments))
	msg.Header.Set(schemas.HeaderListener, "5683/coap")
	msg.Header.Set(schemas.HeaderType, schemas.TypeCoAP)
	msg.Header.Set(schemas.HeaderCoAPMethod, method)
	msg.Header.Set(schemas.HeaderCoAPPath, "/"+strings.Join(segments, "/"))
	msg.Header.Set(schemas.HeaderCoAPType, "CON")
	msg.Header.Set(schemas.HeaderCoAPMessageID, "1")
	msg.Data = []byte(body)
	reply := exampleExchange(js, group, msg)
	code := cmp.Or(reply.Header.Get(schemas.HeaderCoAPCode), schemas.CoAPDefaultCode)
	if loc := reply.Header.Get(schemas.HeaderCoAPLocationPath); loc != "" {
		return code + " location " + loc
	}
	return code + " " + string(reply.Data)
}

// exampleExchange publishes msg to the stream once group pulls, and waits
// for the reply.
func exampleExchange(js jetstream.JetStream, group string, msg *nats.Msg) *nats.Msg {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		c, err := js.Consumer(ctx, schemas.StreamIn, group)
		if err == nil && c.CachedInfo().NumWaiting > 0 {
			break
		}
		select {
		case <-ctx.Done():
			panic("worker not pulling")
		case <-time.After(5 * time.Millisecond):
		}
	}
	replies, err := js.Conn().SubscribeSync(schemas.ReplySubject(schemas.DefaultPrefix, "node1"))
	if err != nil {
		panic(err)
	}
	defer replies.Unsubscribe()
	msg.Header.Set(schemas.HeaderID, "1")
	msg.Header.Set(schemas.HeaderReply, replies.Subject)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		panic(err)
	}
	reply, err := replies.NextMsgWithContext(ctx)
	if err != nil {
		panic(err)
	}
	return reply
}
