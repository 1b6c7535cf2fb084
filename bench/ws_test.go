package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// wsServer answers Calls in binary WebSocket messages as rpcServer does,
// each one from a goroutine of its own (replies come out of order), and
// counts the connections it accepted and the most calls one of them had
// in flight at once. The connections it accepts after the first closeAfter
// calls of a connection are closed (0: never).
func wsServer(t *testing.T, closeAfter int) (url string, conns, maxInFlight *atomic.Int64) {
	conns, maxInFlight = new(atomic.Int64), new(atomic.Int64)
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		conns.Add(1)
		defer c.CloseNow()
		var (
			wg       sync.WaitGroup
			inFlight atomic.Int64
		)
		defer wg.Wait()
		for n := 1; ; n++ {
			_, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if closeAfter > 0 && n > closeAfter {
				c.Close(websocket.StatusGoingAway, "enough")
				return
			}
			var call rpcpb.Call
			if proto.Unmarshal(b, &call) != nil {
				return
			}
			if v := inFlight.Add(1); v > maxInFlight.Load() {
				maxInFlight.Store(v) // a lower bound is enough for the test
			}
			wg.Go(func() {
				rep := &rpcpb.Reply{Id: call.Id, Body: call.Params}
				if call.Method != "Ok" {
					rep.Status = rpcpb.Status_STATUS_UNIMPLEMENTED
				}
				out, _ := proto.Marshal(rep)
				inFlight.Add(-1)
				c.Write(r.Context(), websocket.MessageBinary, out)
			})
		}
	}))
	t.Cleanup(s.Close)
	return "ws" + strings.TrimPrefix(s.URL, "http"), conns, maxInFlight
}

func TestWS(t *testing.T) {
	for _, tt := range []struct {
		method                string
		sockets               int
		answered, fail, conns int64
	}{
		{"Ok", 0, 3000, 0, 1}, // 64 in flight: one connection by default
		{"Ok", 4, 3000, 0, 4},
		{"Nope", 2, 0, 3000, 2},
	} {
		t.Run(fmt.Sprintf("%s/%d", tt.method, tt.sockets), func(t *testing.T) {
			url, conns, inFlight := wsServer(t, 0)
			res := runBench(t, Config{Target: url + "/path/Svc/" + tt.method, Concurrency: 64, Sockets: tt.sockets, Count: 3000})
			if res.Answered != tt.answered || res.Failed != tt.fail || res.Lost != 0 || res.Sent != 3000 {
				t.Errorf("sent %d answered %d failed %d lost %d (%s)", res.Sent, res.Answered, res.Failed, res.Lost, res.FirstError)
			}
			if conns.Load() != tt.conns || res.SocketsOpened != tt.conns || int64(res.Sockets) != tt.conns {
				t.Errorf("%d connections accepted, %d opened, %d sockets; want %d", conns.Load(), res.SocketsOpened, res.Sockets, tt.conns)
			}
			if inFlight.Load() < 2 {
				t.Errorf("at most %d calls in flight on a connection", inFlight.Load())
			}
		})
	}
}

func TestWSOpenLoop(t *testing.T) {
	url, conns, _ := wsServer(t, 0)
	res := runBench(t, Config{Target: url + "/Svc/Ok", Rate: 2000, Count: 200})
	if res.Mode != "open" || res.Answered != 200 || res.Lost != 0 || conns.Load() != DefaultOpenSockets {
		t.Errorf("%s: answered %d lost %d on %d connections (%s)", res.Mode, res.Answered, res.Lost, conns.Load(), res.FirstError)
	}
}

// TestWSConnectionLost: a listener that closes each connection after 100
// calls loses what was in flight; the run counts the error and opens a
// new connection.
func TestWSConnectionLost(t *testing.T) {
	url, conns, _ := wsServer(t, 100)
	res := runBench(t, Config{Target: url + "/Svc/Ok", Concurrency: 8, Count: 1000})
	if res.Answered < 900 || res.Answered+res.Lost+res.Failed != res.Sent || res.Errors == 0 || conns.Load() < 2 || res.SocketsOpened != conns.Load() {
		t.Errorf("sent %d answered %d lost %d errors %d, %d connections (%d opened): %s",
			res.Sent, res.Answered, res.Lost, res.Errors, conns.Load(), res.SocketsOpened, res.FirstError)
	}
}

func TestWSBadTargets(t *testing.T) {
	url, _, _ := wsServer(t, 0)
	for _, cfg := range []Config{
		{Target: "ws://127.0.0.1:1/OnlyMethod"},
		{Target: url + "/Svc/Ok", NoReply: true},
	} {
		if _, err := Run(context.Background(), cfg); err == nil {
			t.Errorf("%+v: no error", cfg)
		}
	}
}

// TestWSUnresponsive: a listener that accepts connections and then
// neither reads nor answers loses every call, and the run still ends
// soon after its timeout: its connections close without waiting long
// for a close frame that does not come.
func TestWSUnresponsive(t *testing.T) {
	stop := make(chan struct{})
	s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		<-stop
	}))
	defer s.Close()
	defer close(stop)
	start := time.Now()
	res := runBench(t, Config{Target: "ws" + strings.TrimPrefix(s.URL, "http") + "/Svc/Ok", Concurrency: 8, Sockets: 8, Count: 16, Timeout: 100 * time.Millisecond})
	if res.Lost != 16 || res.Answered != 0 {
		t.Errorf("sent %d answered %d lost %d", res.Sent, res.Answered, res.Lost)
	}
	// Eight close handshakes of 5 s each, one after the other, would
	// take 40 s; the run takes about 2 s.
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the run took %s", d)
	}
}
