package gateway

import (
	"context"
	"encoding/binary"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// TestShedAtTheDoor: a durable group offered twice its capacity tells the
// gateway, which answers the excess at once with 5.03 instead of letting
// it wait in the stream until a handler reaches it; the group still
// answers what it can, the shed requests are captured and skipped by the
// group, and every request is answered once.
func TestShedAtTheDoor(t *testing.T) {
	// 1 instance of 4 handlers of 100 ms: 40 requests/s, offered 80/s.
	shedAtTheDoor(t, doorLoad{handlerTime: 100 * time.Millisecond, instances: 1, concurrency: 4, rate: 80, duration: 3 * time.Second, deadline: time.Second})
}

// BenchmarkShedAtTheDoor is issue 17's overload case through a real
// gateway: 2 instances of 16 handlers of 1 s (32 requests/s) offered
// 64 requests/s of CoAP for 30 s, with a 5 s deadline. Run it with
// -benchtime 1x.
func BenchmarkShedAtTheDoor(b *testing.B) {
	for range b.N {
		shedAtTheDoor(b, doorLoad{handlerTime: time.Second, instances: 2, concurrency: 16, rate: 64, duration: 30 * time.Second, deadline: 5 * time.Second})
	}
}

// doorLoad is an overload of a durable group through a gateway.
type doorLoad struct {
	handlerTime            time.Duration
	instances, concurrency int
	rate                   int // requests per second
	duration, deadline     time.Duration
}

// shedAtTheDoor offers l's load and checks what TestShedAtTheDoor says.
func shedAtTheDoor(t testing.TB, l doorLoad) {
	handlerTime, concurrency, rate, duration, deadline := l.handlerTime, l.instances*l.concurrency, l.rate, l.duration, l.deadline
	s := natstest.RunServer(t)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(c.LocalAddr().(*net.UDPAddr).Port)
	g := &Gateway{Node: "door", Deadline: deadline, CoAP: coapConfig(time.Second)}
	g.NATS = natstest.Connect(t, s)
	g.Listeners = []Listener{{Conn: c, Protocol: schemas.ProtocolCoAP}}
	serveGateway(t, g)

	var ws []*workers.Server
	for range l.instances {
		_, js := natstest.JetStream(t, s)
		w := &workers.Server{
			JetStream:   js,
			Delivery:    workers.Durable,
			Group:       "slow",
			Subjects:    []string{schemas.InSubject("udpgate", port) + ".>"},
			Concurrency: l.concurrency,
			Handler: workers.HandlerFunc(func(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
				time.Sleep(handlerTime)
				_, err := w.Write([]byte("done"))
				return err
			}),
		}
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan struct{})
		go func() {
			defer close(served)
			if err := w.Serve(ctx); err != nil {
				t.Errorf("worker: %v", err)
			}
		}()
		t.Cleanup(func() { cancel(); <-served })
		select {
		case <-w.Ready():
		case <-time.After(10 * time.Second):
			t.Fatal("worker not ready")
		}
		ws = append(ws, w)
	}
	workerStats := func() workers.Stats {
		var sum workers.Stats
		for _, w := range ws {
			st := w.Stats()
			sum.Handled += st.Handled
			sum.Replied += st.Replied
			sum.Expired += st.Expired
			sum.Shed += st.Shed
			sum.ShedAtDoor += st.ShedAtDoor
			sum.Overloads += st.Overloads
		}
		return sum
	}

	client, err := net.DialUDP("udp4", nil, c.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	n := rate * int(duration/time.Second)
	sent := make([]time.Time, n)
	type answer struct {
		code  byte
		after time.Duration
		times int
	}
	var mu sync.Mutex // guards answers
	answers := make([]answer, n)
	read := make(chan struct{})
	go func() {
		defer close(read)
		buf := make([]byte, 1500)
		for {
			client.SetReadDeadline(time.Now().Add(deadline + 2*time.Second))
			m, err := client.Read(buf)
			if err != nil {
				return
			}
			if m < 8 || buf[0]&0x0f != 4 {
				continue
			}
			i := int(binary.BigEndian.Uint32(buf[4:8]))
			if i >= n {
				continue
			}
			mu.Lock()
			a := &answers[i]
			a.times++
			if a.times == 1 {
				a.code, a.after = buf[1], time.Since(sent[i])
			}
			mu.Unlock()
		}
	}()
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(rate))); d > 0 {
			time.Sleep(d)
		}
		// A NON GET /work with a 4-byte token: the request's number.
		b := []byte{0x54, 0x01, 0, 0, 0, 0, 0, 0, 0xB4, 'w', 'o', 'r', 'k'}
		binary.BigEndian.PutUint16(b[2:], uint16(i))
		binary.BigEndian.PutUint32(b[4:], uint32(i))
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		client.Write(b)
	}
	<-read

	const content, unavailable = 0x45, 0xA3 // 2.05, 5.03
	var ok, overloaded, other, twice int
	var shedAfter []time.Duration
	for _, a := range answers {
		switch {
		case a.times > 1:
			twice++
		case a.code == content:
			ok++
		case a.code == unavailable:
			overloaded++
			shedAfter = append(shedAfter, a.after)
		default:
			other++
		}
	}
	slices.Sort(shedAfter)
	st := g.Stats()
	in := st.Ingress[schemas.Listener(port, schemas.ProtocolCoAP)]
	capacity := concurrency * int(duration/handlerTime)
	t.Logf("sent %d: 2.05 %d (capacity %d), 5.03 %d (%d shed at the door), other %d (not answered or 5.04), twice %d",
		n, ok, capacity, overloaded, in.Shed, other, twice)
	if len(shedAfter) > 0 {
		t.Logf("5.03 after: median %v, p90 %v, max %v", shedAfter[len(shedAfter)/2], shedAfter[len(shedAfter)*9/10], shedAfter[len(shedAfter)-1])
	}
	if twice > 0 {
		t.Errorf("%d requests answered twice", twice)
	}
	if in.Shed == 0 {
		t.Fatal("the gateway shed nothing at the door")
	}
	// Goodput: at least 85% of the capacity (90%, less 5% for handler
	// timers that fire late on a loaded machine).
	if ok*100 < capacity*85 {
		t.Errorf("%d requests answered 2.05, want at least 85%% of the capacity %d", ok, capacity)
	}
	// Without shedding at the door, a 5.03 comes only when a handler
	// reaches the request, its deadline less the handler time after it
	// was sent: most come at once now.
	if med := shedAfter[len(shedAfter)/2]; med > deadline/4 {
		t.Errorf("the median 5.03 came %v after its request, want well before the %v a handler would take to reach it", med, deadline-handlerTime)
	}
	if got := in.Published + in.Shed; got != in.Received {
		t.Errorf("published %d + shed %d = %d, want the %d received", in.Published, in.Shed, got, in.Received)
	}
	// Every shed request was captured, and the group skipped it.
	waitFor(t, "the group to skip every request shed at the door", func() bool { return workerStats().ShedAtDoor == in.Shed })
	if st := workerStats(); st.Overloads == 0 {
		t.Errorf("worker stats %+v: want Overloads > 0", st)
	}
	t.Logf("workers: %+v; gateway listener: shed %d", workerStats(), in.Shed)
}
