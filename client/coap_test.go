package client_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/mux"
	coapnet "github.com/plgd-dev/go-coap/v3/net"
	"github.com/plgd-dev/go-coap/v3/options"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"

	"github.com/udpgate/udpgate/client"
)

// coapServer runs go-coap's UDP server on 127.0.0.1 until the test ends:
// /echo answers any method with the request's body and Content-Format,
// 2.04 Changed for a POST and 2.05 Content otherwise; /query answers with
// the Uri-Query options joined by "&".
func coapServer(t *testing.T) string {
	t.Helper()
	l, err := coapnet.NewListenUDP("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := mux.NewRouter()
	r.HandleFunc("/echo", func(w mux.ResponseWriter, m *mux.Message) {
		body, err := m.ReadBody()
		if err != nil && !errors.Is(err, message.ErrOptionNotFound) {
			t.Errorf("server: %v", err)
		}
		code := codes.Content
		if m.Code() == codes.POST {
			code = codes.Changed
		}
		cf, err := m.ContentFormat()
		if err != nil {
			cf = message.AppOctets
		}
		if err := w.SetResponse(code, cf, bytes.NewReader(body)); err != nil {
			t.Errorf("server: %v", err)
		}
	})
	r.HandleFunc("/query", func(w mux.ResponseWriter, m *mux.Message) {
		qs, _ := m.Queries()
		if err := w.SetResponse(codes.Content, message.TextPlain, strings.NewReader(strings.Join(qs, "&"))); err != nil {
			t.Errorf("server: %v", err)
		}
	})
	s := coapudp.NewServer(options.WithMux(r))
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Stop()
		l.Close()
		if err := <-done; err != nil {
			t.Errorf("go-coap server: %v", err)
		}
	})
	return l.LocalAddr().String()
}

func TestCoAP(t *testing.T) {
	addr := coapServer(t)
	big := bytes.Repeat([]byte("0123456789abcdef"), 5*1024/16) // 5 KiB: 5 blocks each way
	json := uint16(50)
	tests := []struct {
		name    string
		url     string
		opts    client.Options
		payload []byte
		code    codes.Code
		cf      int
		body    []byte
	}{
		{"get", "/echo", client.Options{}, nil, codes.Content, int(message.AppOctets), nil},
		// go-coap's server reads at most its MTU (1472 bytes) per datagram,
		// and without Block2 the client would see only the first 1024 bytes
		// of the answer: the 5 KiB make it across only block-wise.
		{"post 5 KiB block-wise", "/echo", client.Options{Method: "post", ContentFormat: &json}, big, codes.Changed, 50, big},
		{"fetch", "/echo", client.Options{Method: "FETCH", ContentFormat: &json}, []byte(`{"a":1}`), codes.Content, 50, []byte(`{"a":1}`)},
		{"ipatch", "/echo", client.Options{Method: "iPATCH"}, []byte("x"), codes.Content, int(message.AppOctets), []byte("x")},
		{"query", "/query?unit=C&a%20b", client.Options{}, nil, codes.Content, int(message.TextPlain), []byte("unit=C&a b")},
		{"not found", "/nowhere", client.Options{Method: "delete"}, nil, codes.NotFound, -1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Timeout = 10 * time.Second
			c := dial(t, "coap://"+addr+tt.url, tt.opts)
			res, err := c.Do(context.Background(), tt.payload)
			if err != nil {
				t.Fatal(err)
			}
			if codes.Code(res.Code) != tt.code || res.ContentFormat != tt.cf || !bytes.Equal(res.Body, tt.body) {
				t.Errorf("got %s, format %d, %d bytes %.40q; want %s, format %d, %d bytes %.40q",
					client.CodeString(res.Code), res.ContentFormat, len(res.Body), res.Body, client.CodeString(uint8(tt.code)), tt.cf, len(tt.body), tt.body)
			}
			if res.From.String() != addr || res.Latency <= 0 {
				t.Errorf("from %s in %v", res.From, res.Latency)
			}
		})
	}
}

func TestCoAPConnReused(t *testing.T) {
	c := dial(t, "coap://"+coapServer(t)+"/echo", client.Options{Method: "put", Timeout: 10 * time.Second})
	for i := range 20 {
		body := []byte(strings.Repeat("x", i))
		res, err := c.Do(context.Background(), body)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if !bytes.Equal(res.Body, body) {
			t.Fatalf("request %d: body %q", i, res.Body)
		}
	}
}

func TestCoAPNoReply(t *testing.T) {
	t.Run("silence", func(t *testing.T) {
		addr, _ := responder(t, func(int, []byte) []reply { return nil })
		c := dial(t, "coap://"+addr.String()+"/x", client.Options{Wait: 20 * time.Millisecond, Timeout: 200 * time.Millisecond})
		if _, err := c.Do(context.Background(), nil); !errors.Is(err, client.ErrNoReply) {
			t.Errorf("error %v, want ErrNoReply", err)
		}
	})
	t.Run("answer from another port", func(t *testing.T) {
		// A CoAP server on the other port, answering what reaches the first.
		addr, other := responder(t, func(int, []byte) []reply { return []reply{{body: []byte{0x60, 0x45, 0, 1}, fromOther: true}} })
		c := dial(t, "coap://"+addr.String()+"/x", client.Options{Wait: 20 * time.Millisecond, Timeout: 200 * time.Millisecond})
		res, err := c.Do(context.Background(), nil)
		if !errors.Is(err, client.ErrNoReply) {
			t.Errorf("error %v, want ErrNoReply", err)
		}
		if len(res.Rejected) == 0 || res.Rejected[0].From != other {
			t.Errorf("rejected %v, want the answers from %s", res.Rejected, other)
		}
	})
}

func TestCodeString(t *testing.T) {
	for code, want := range map[codes.Code]string{codes.Content: "2.05 Content", codes.NotFound: "4.04 NotFound", codes.GatewayTimeout: "5.04 GatewayTimeout"} {
		if got := client.CodeString(uint8(code)); got != want {
			t.Errorf("CodeString(%d) = %q, want %q", code, got, want)
		}
	}
}
