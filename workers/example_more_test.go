package workers_test

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// A worker that answers one datagram with several: a countdown, each
// number sent as it is ready with Request.ReplyMore, then the final
// reply, which ends the exchange. The gateway sends them to the client
// in this order.
func ExampleRequest_ReplyMore() {
	nc, stop := exampleGateway() // NATS with the gateway's stream, for the example
	defer stop()

	srv := &workers.Server{
		NATS:     nc,
		Group:    "countdown",
		Subjects: []string{"udpgate.in.9000"},
		Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
			for i := 3; i > 0; i-- {
				if err := r.ReplyMore(ctx, fmt.Appendf(nil, "%d", i)); err != nil {
					return err
				}
			}
			_, err := w.Write([]byte("liftoff"))
			return err
		}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- srv.Serve(ctx) }()
	<-srv.Ready()

	// What the gateway does: publish the request with its reply subject,
	// and take the replies until one without udpgate-more.
	reply := schemas.ReplySubject(schemas.DefaultPrefix, "node1") + ".1"
	replies, _ := nc.SubscribeSync(reply)
	msg := exampleMsg("udpgate.in.9000", "9000/raw", schemas.TypeRaw, "go")
	msg.Reply = reply
	nc.PublishMsg(msg)
	var got []string
	for {
		m, err := replies.NextMsg(10 * time.Second)
		if err != nil {
			panic(err)
		}
		got = append(got, string(m.Data))
		if m.Header.Get(schemas.HeaderMore) == "" {
			break
		}
	}
	fmt.Println(strings.Join(got, ", "))
	cancel()
	fmt.Println(<-done)
	// Output:
	// 3, 2, 1, liftoff
	// <nil>
}
