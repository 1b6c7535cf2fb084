package workers_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
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

// exampleRequest does what the gateway does with a datagram: once group
// pulls, it stores a request and waits for the reply.
func exampleRequest(js jetstream.JetStream, group, body string) string {
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
	msg := nats.NewMsg(schemas.InSubject(schemas.DefaultPrefix, 9000))
	msg.Header.Set(schemas.HeaderID, "1")
	msg.Header.Set(schemas.HeaderListener, "9000/raw")
	msg.Header.Set(schemas.HeaderReply, replies.Subject)
	msg.Data = []byte(body)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		panic(err)
	}
	reply, err := replies.NextMsgWithContext(ctx)
	if err != nil {
		panic(err)
	}
	return string(reply.Data)
}
