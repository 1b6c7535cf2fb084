package client_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/udpgate/udpgate/client"
)

// responder serves UDP on 127.0.0.1 until the test ends: for the n-th
// datagram it receives (counting from 1), answer returns the replies to send
// and, for each, whether to send it from a second socket on another port.
// It returns the addresses of both sockets.
func responder(t testing.TB, answer func(n int, req []byte) []reply) (main, other netip.AddrPort) {
	t.Helper()
	srv := listen(t)
	alt := listen(t)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65536)
		for n := 1; ; n++ {
			m, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			for _, r := range answer(n, buf[:m]) {
				c := srv
				if r.fromOther {
					c = alt
				}
				c.WriteToUDPAddrPort(r.body, from)
			}
		}
	}()
	t.Cleanup(func() {
		srv.Close()
		wg.Wait()
	})
	return addrOf(srv), addrOf(alt)
}

type reply struct {
	body      []byte
	fromOther bool
}

func listen(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func addrOf(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

func dial(t testing.TB, url string, opts client.Options) *client.Conn {
	t.Helper()
	c, err := client.Dial(context.Background(), url, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return c
}

func TestAnswerToThirdCopy(t *testing.T) {
	addr, _ := responder(t, func(n int, req []byte) []reply {
		if n < 3 {
			return nil
		}
		return []reply{{body: bytes.ToUpper(req)}}
	})
	c := dial(t, "udp://"+addr.String(), client.Options{Wait: 50 * time.Millisecond, Timeout: 10 * time.Second})
	res, err := c.Do(context.Background(), []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if string(res.Body) != "HELLO" || res.Tries != 3 || res.From != addr || len(res.Rejected) != 0 {
		t.Errorf("result %+v, want HELLO after 3 tries from %s", res, addr)
	}
	if res.Latency < 150*time.Millisecond { // 50 ms, then 100 ms before the third copy
		t.Errorf("latency %v, shorter than the waits before the third copy", res.Latency)
	}
}

func TestBackoffAndGiveUp(t *testing.T) {
	var mu sync.Mutex
	var arrivals []time.Time
	addr, _ := responder(t, func(int, []byte) []reply {
		mu.Lock()
		arrivals = append(arrivals, time.Now())
		mu.Unlock()
		return nil
	})
	c := dial(t, "udp://"+addr.String(), client.Options{Wait: 20 * time.Millisecond, Factor: 3, Timeout: 500 * time.Millisecond})
	start := time.Now()
	res, err := c.Do(context.Background(), []byte("anyone?"))
	if !errors.Is(err, client.ErrNoReply) {
		t.Fatalf("error %v, want ErrNoReply", err)
	}
	if took := time.Since(start); took < 500*time.Millisecond {
		t.Errorf("gave up after %v, before the 500ms give-up time", took)
	}
	// Copies at 0, 20, 80 and 260 ms; the next (at 800 ms) is past the give-up time.
	if res.Tries != 4 {
		t.Errorf("%d tries, want 4", res.Tries)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(arrivals) > res.Tries {
		t.Errorf("responder saw %d copies, client counted %d", len(arrivals), res.Tries)
	}
	// Each copy waits at least its turn: 20, 60, 180 ms after the one
	// before, so copy i+1 leaves 20, 80, 260 ms after the start. Measured
	// from the start, not from the previous copy's arrival: a copy
	// delivered late (a loaded machine) makes the next gap look short.
	wait, due := 20*time.Millisecond, time.Duration(0)
	for i := 1; i < len(arrivals); i++ {
		due += wait
		if at := arrivals[i].Sub(start); at < due {
			t.Errorf("copy %d came %v after the start, want at least %v", i+1, at, due)
		}
		wait *= 3
	}
}

func TestReplyFromAnotherPort(t *testing.T) {
	t.Run("only", func(t *testing.T) {
		addr, other := responder(t, func(int, []byte) []reply {
			return []reply{{body: []byte("from elsewhere"), fromOther: true}}
		})
		c := dial(t, "udp://"+addr.String(), client.Options{Wait: 50 * time.Millisecond, Timeout: 300 * time.Millisecond})
		res, err := c.Do(context.Background(), []byte("hi"))
		if !errors.Is(err, client.ErrNoReply) {
			t.Fatalf("error %v, want ErrNoReply; result %+v", err, res)
		}
		if len(res.Rejected) == 0 {
			t.Fatal("no rejected reply reported")
		}
		want := "rejected reply from " + other.String() + ": not the address the request was sent to"
		for _, r := range res.Rejected {
			if r.String() != want {
				t.Errorf("rejection %q, want %q", r, want)
			}
		}
	})
	t.Run("then the real one", func(t *testing.T) {
		addr, other := responder(t, func(n int, _ []byte) []reply {
			if n == 1 {
				return []reply{{body: []byte("from elsewhere"), fromOther: true}}
			}
			return []reply{{body: []byte("real")}}
		})
		c := dial(t, "udp://"+addr.String(), client.Options{Wait: 100 * time.Millisecond, Timeout: 10 * time.Second})
		res, err := c.Do(context.Background(), []byte("hi"))
		if err != nil {
			t.Fatal(err)
		}
		if string(res.Body) != "real" || res.Tries != 2 {
			t.Errorf("result %+v, want the real reply after 2 tries", res)
		}
		if len(res.Rejected) != 1 || res.Rejected[0].From != other {
			t.Errorf("rejected %v, want the reply from %s", res.Rejected, other)
		}
	})
}

func TestRequestID(t *testing.T) {
	tests := []struct {
		name     string
		request  string
		replies  []string // the n-th copy gets replies[n-1]
		want     string
		rejected []string
	}{
		{"match", `[42, "what time is it?"]`, []string{`[42,"The time is now"]`}, `[42,"The time is now"]`, nil},
		{"string id", `["req-1",{}]`, []string{`[ "req-1" , "x"]`}, `[ "req-1" , "x"]`, nil},
		{"mismatch, then match", `[7,"x"]`, []string{`[9,"x"]`, `[7,"ok"]`}, `[7,"ok"]`,
			[]string{"reply id 9 does not match request id 7"}},
		{"not an array, then match", `[7,"x"]`, []string{`7`, `[7]`}, `[7]`,
			[]string{"not a JSON array [id, ...] answering the request"}},
		{"no id in the request", `hello`, []string{`anything`}, `anything`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, _ := responder(t, func(n int, _ []byte) []reply {
				if n > len(tt.replies) {
					return nil
				}
				return []reply{{body: []byte(tt.replies[n-1])}}
			})
			c := dial(t, "udp://"+addr.String(), client.Options{Wait: 50 * time.Millisecond, Timeout: 10 * time.Second})
			res, err := c.Do(context.Background(), []byte(tt.request))
			if err != nil {
				t.Fatal(err)
			}
			if string(res.Body) != tt.want {
				t.Errorf("body %q, want %q", res.Body, tt.want)
			}
			var got []string
			for _, r := range res.Rejected {
				if r.From != addr {
					t.Errorf("rejection from %s, want %s", r.From, addr)
				}
				got = append(got, r.Reason)
			}
			if strings.Join(got, "|") != strings.Join(tt.rejected, "|") {
				t.Errorf("rejected %q, want %q", got, tt.rejected)
			}
		})
	}
}

func TestNothingListens(t *testing.T) {
	c := listen(t)
	addr := addrOf(c)
	c.Close()
	conn := dial(t, "udp://"+addr.String(), client.Options{Wait: 50 * time.Millisecond, Timeout: 10 * time.Second})
	_, err := conn.Do(context.Background(), []byte("hi"))
	if !errors.Is(err, client.ErrRefused) {
		t.Errorf("error %v, want ErrRefused", err)
	}
}

func TestCancel(t *testing.T) {
	addr, _ := responder(t, func(int, []byte) []reply { return nil })
	c := dial(t, "udp://"+addr.String(), client.Options{Timeout: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Do(ctx, []byte("hi")); !errors.Is(err, context.Canceled) {
		t.Errorf("error %v, want context.Canceled", err)
	}
}

func TestDialRejectsBadURLs(t *testing.T) {
	for _, u := range []string{
		"tcp://127.0.0.1:1", "udp://127.0.0.1", "udp://127.0.0.1:0", "udp://127.0.0.1:1/path",
		"rpc://127.0.0.1:1/OnlyService", "rpc://127.0.0.1:1//Method", "rpc://127.0.0.1/S/M", "127.0.0.1:9000",
	} {
		c, err := client.Dial(context.Background(), u, client.Options{})
		if err == nil {
			c.Close()
		}
		if !errors.Is(err, client.ErrInvalid) {
			t.Errorf("Dial(%q): error %v, want ErrInvalid", u, err)
		}
	}
	if _, err := client.Dial(context.Background(), "coap://127.0.0.1/x", client.Options{Method: "brew"}); !errors.Is(err, client.ErrInvalid) || !strings.Contains(err.Error(), `unknown CoAP method "brew"`) {
		t.Errorf("method brew: %v", err)
	}
}
