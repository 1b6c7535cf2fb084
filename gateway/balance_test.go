package gateway

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// TestCountersBalance: every datagram a raw listener reads is counted
// exactly once where it ends, so the counters add up per listener:
//
//	received  = published + too_large + queue_full + table_full + listener_full + nats_down + publish_failed
//	published = sent + worker_error + no_answer + no_worker + send_errors + expired + pending
//
// with a mixed load: answered, answered with an error, unanswered, too
// large, and a listener no group serves.
func TestCountersBalance(t *testing.T) {
	s := natstest.RunServer(t)
	g := &Gateway{Deadline: 300 * time.Millisecond, MaxDatagram: 64}
	addrs := testGateway(t, s, g, "127.0.0.1:0", "127.0.0.1:0")
	served, nobody := addrs[0], addrs[1]
	nc := natstest.Connect(t, s)
	if _, err := nc.QueueSubscribe(schemas.InSubject("udpgate", uint16(served.Port)), "mixed", func(m *nats.Msg) {
		switch {
		case bytes.HasPrefix(m.Data, []byte("drop")):
			// no answer: the exchange expires
		case bytes.HasPrefix(m.Data, []byte("fail")):
			m.RespondMsg(&nats.Msg{Header: nats.Header{schemas.HeaderStatus: {schemas.StatusError}}})
		default:
			m.Respond(m.Data)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	send := func(to *net.UDPAddr, payloads ...string) {
		c, err := net.DialUDP("udp", nil, to)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, p := range payloads {
			c.Write([]byte(p))
		}
	}
	var load []string
	for i := range 30 {
		load = append(load, "ok"+itoa(i), "fail"+itoa(i), "drop"+itoa(i))
	}
	load = append(load, string(bytes.Repeat([]byte("x"), 100)), string(bytes.Repeat([]byte("y"), 65)))
	send(served, load...)
	send(nobody, "a", "b", "c")

	// An exchange leaves the table before its outcome is counted: wait for
	// the counts too (for at most waitFor's limit; past it the sums below
	// say which does not add up).
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := g.Stats()
		var received, published, settled uint64
		for name, in := range st.Ingress {
			eg := st.EgressByListener[name]
			received += in.Received
			published += in.Published
			settled += eg.Sent + eg.WorkerError + eg.NoAnswer + eg.NoWorker + eg.SendErrors + in.Expired
		}
		if received == uint64(len(load)+3) && st.Pending == 0 && settled == published || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	st := g.Stats()
	for name, in := range st.Ingress {
		eg := st.EgressByListener[name]
		if got := in.Published + in.TooLarge + in.QueueFull + in.TableFull + in.ListenerFull + in.NATSDown + in.PublishFailed; got != in.Received {
			t.Errorf("%s: %d datagrams read, %d accounted for: %+v", name, in.Received, got, in)
		}
		if got := eg.Sent + eg.WorkerError + eg.NoAnswer + eg.NoWorker + eg.SendErrors + in.Expired + uint64(in.Pending); got != in.Published {
			t.Errorf("%s: %d published, %d settled: ingress %+v, egress %+v", name, in.Published, got, in, eg)
		}
	}
	// And each outcome was seen, so the sums above are not trivially met.
	a, b := itoa(served.Port)+"/raw", itoa(nobody.Port)+"/raw"
	if in, eg := st.Ingress[a], st.EgressByListener[a]; in.TooLarge != 2 || eg.Sent != 30 || eg.WorkerError != 30 || eg.NoAnswer != 30 {
		t.Errorf("%s: ingress %+v, egress %+v; want 2 too large, 30 sent, 30 worker errors, 30 unanswered", a, in, eg)
	}
	if eg := st.EgressByListener[b]; eg.NoWorker != 3 {
		t.Errorf("%s: egress %+v; want 3 without a worker", b, eg)
	}
}
