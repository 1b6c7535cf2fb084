package workers_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log"
	"net/netip"
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
// listener 9000/raw. Each copy of it is an instance of group "upper": a
// NATS queue subscription, so the copies share the work, and each reply
// goes back with the NATS reply idiom.
func Example() {
	nc, stop := exampleGateway() // NATS with the gateway's stream, for the example
	defer stop()

	srv := &workers.Server{
		NATS:     nc,
		Group:    "upper",
		Subjects: []string{"udpgate.in.9000"},
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			_, err := w.Write(bytes.ToUpper(r.Body))
			return err
		}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx) }()
	<-srv.Ready()

	fmt.Println(exampleRequest(nc, "hello, udpgate"))
	cancel()
	fmt.Println(<-done)
	// Output:
	// HELLO, UDPGATE
	// <nil>
}

// The one-call start: a worker that upper-cases every datagram sent to the
// gateway's listener 9000/raw, as an instance of group "upper", connected
// to the NATS server in UDPGATE_NATS_URL, until SIGINT or SIGTERM.
func ExampleListenAndServe() {
	err := workers.ListenAndServe("udpgate.in.9000", "upper", workers.HandlerFunc(
		func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			_, err := w.Write(bytes.ToUpper(r.Body))
			return err
		}))
	if !errors.Is(err, workers.ErrStopped) {
		log.Fatal(err)
	}
}

// A Server's ListenAndServe starts a worker configured beyond
// ListenAndServe's defaults: here a Durable group, which keeps its backlog
// in the capture stream and gets every request at least once, for an
// ingest-only port whose readings it saves without answering.
func ExampleServer_ListenAndServe() {
	srv := &workers.Server{
		Group:       "readings",
		Delivery:    workers.Durable,
		Subjects:    []string{"udpgate.in.9200"},
		Concurrency: 4,
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			return saveReading(ctx, r.Remote, r.Body) // no reply; an error wrapping ErrRetry: redelivered
		}),
	}
	if err := srv.ListenAndServe(); !errors.Is(err, workers.ErrStopped) {
		log.Fatal(err)
	}
}

// saveReading stands for a database write.
func saveReading(ctx context.Context, from netip.AddrPort, reading []byte) error { return nil }

// A Durable group reads the capture stream through a JetStream consumer
// named after it: a request whose instance dies is redelivered to another,
// and requests wait in the stream while every instance is busy. The
// handler is the same as for a Direct group.
func ExampleServer_durable() {
	nc, stop := exampleGateway() // NATS with the gateway's stream, for the example
	defer stop()

	srv := &workers.Server{
		NATS:     nc,
		Delivery: workers.Durable,
		Group:    "upper-durable",
		Subjects: []string{"udpgate.in.9000"},
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			_, err := fmt.Fprintf(w, "%s (delivery %d)", bytes.ToUpper(r.Body), r.Delivery)
			return err
		}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx) }()
	<-srv.Ready()

	fmt.Println(exampleCapture(nc, "hello, udpgate"))
	cancel()
	fmt.Println(<-done)
	// Output:
	// HELLO, UDPGATE (delivery 1)
	// <nil>
}

// A CoAP worker: a Mux routes the requests of the gateway's listener
// 5683/coap by method and path, and its group subscribes to only the
// subjects of its patterns.
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

	srv := &workers.Server{
		NATS:     nc,
		Group:    "hello",
		Subjects: mux.Subjects(schemas.DefaultPrefix, 5683),
		Handler:  mux,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx) }()
	<-srv.Ready()

	fmt.Println(srv.Subjects)
	fmt.Println(exampleCoAPRequest(nc, "GET", []string{"hello", "ana"}, ""))
	fmt.Println(exampleCoAPRequest(nc, "POST", []string{"items"}, "an item"))
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

	srv := &workers.Server{
		NATS:     nc,
		Group:    "sensors",
		Subjects: mux.Subjects(schemas.DefaultPrefix, 5683),
		Handler:  mux,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx) }()
	<-srv.Ready()

	fmt.Println(exampleCoAPRequest(nc, "GET", []string{".well-known", "core"}, ""))
	cancel()
	fmt.Println(<-done)
	// Output:
	// 2.05 </sensors/1>;rt="temperature";ct=0,</sensors/2>;rt="humidity";ct=0,</status>
	// <nil>
}

// exampleGateway starts an embedded NATS server with the gateway's
// capture stream and connects to it.
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
		Subjects: []string{schemas.CaptureWildcard(schemas.DefaultPrefix)},
		SubjectTransform: &jetstream.SubjectTransformConfig{
			Source:      schemas.CaptureWildcard(schemas.DefaultPrefix),
			Destination: schemas.InWildcard(schemas.DefaultPrefix),
		},
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

// exampleMsg returns a request message for a datagram that node1's
// listener (PORT/PROTOCOL) received, with id 1.
func exampleMsg(subject, listener, typ, body string) *nats.Msg {
	msg := nats.NewMsg(subject)
	msg.Header.Set(schemas.HeaderSpecVersion, schemas.SpecVersion)
	msg.Header.Set(schemas.HeaderID, "1")
	msg.Header.Set(schemas.HeaderSource, schemas.Source("node1", listener))
	msg.Header.Set(schemas.HeaderType, typ)
	msg.Header.Set(schemas.HeaderRemote, "192.0.2.7:40000")
	msg.Data = []byte(body)
	return msg
}

// exampleRequest does what the gateway does with a datagram on 9000/raw
// for direct groups: a core NATS request (the gateway's reply subject is
// udpgate.reply.NODE.ID, this one an inbox). It returns the reply's body.
func exampleRequest(nc *nats.Conn, body string) string {
	msg := exampleMsg(schemas.InSubject(schemas.DefaultPrefix, 9000), "9000/raw", schemas.TypeRaw, body)
	reply, err := nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		panic(err)
	}
	return string(reply.Data)
}

// exampleCoAPRequest does what the gateway does with a CON request on
// 5683/coap, and returns the reply's code and body.
func exampleCoAPRequest(nc *nats.Conn, method string, segments []string, body string) string {
	msg := exampleMsg(schemas.CoAPSubject(schemas.DefaultPrefix, 5683, method, segments), "5683/coap", schemas.TypeCoAP, body)
	msg.Header.Set(schemas.HeaderCoAPRequest, method+" /"+strings.Join(segments, "/"))
	// The datagram's CoAP header: CON, message id 1, no token.
	msg.Header.Set(schemas.HeaderDatagramHead, base64.StdEncoding.EncodeToString([]byte{0x40, 0x01, 0x00, 0x01}))
	reply, err := nc.RequestMsg(msg, 10*time.Second)
	if err != nil {
		panic(err)
	}
	code := cmp.Or(reply.Header.Get(schemas.HeaderCoAPCode), schemas.CoAPDefaultCode)
	if loc := reply.Header.Get(schemas.HeaderCoAPLocationPath); loc != "" {
		return code + " location " + loc
	}
	return code + " " + string(reply.Data)
}

// exampleCapture does what the gateway does with a datagram on 9000/raw
// for durable groups: it publishes its capture copy, which the stream
// stores under udpgate.in.9000, with the reply subject in udpgate-reply.
// It returns the reply's body.
func exampleCapture(nc *nats.Conn, body string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	js, _ := jetstream.New(nc)
	replies, err := nc.SubscribeSync(schemas.ReplySubject(schemas.DefaultPrefix, "node1") + ".1")
	if err != nil {
		panic(err)
	}
	defer replies.Unsubscribe()
	msg := exampleMsg(schemas.InSubject(schemas.DefaultPrefix, 9000), "9000/raw", schemas.TypeRaw, body)
	msg.Subject = schemas.CaptureSubject(schemas.DefaultPrefix, msg.Subject)
	msg.Header.Set(schemas.HeaderReply, replies.Subject)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		panic(err)
	}
	reply, err := replies.NextMsgWithContext(ctx)
	if err != nil {
		panic(err)
	}
	return string(reply.Data)
}
