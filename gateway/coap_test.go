package gateway

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"
	"github.com/plgd-dev/go-coap/v3/udp/client"
	"github.com/plgd-dev/go-coap/v3/udp/coder"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
)

// coapGateway runs a gateway with one coap listener on 127.0.0.1 and a
// worker (written against the contract, without the SDK) for its port:
// GET /time, POST /echo, GET /slow (answers after delay), anything else
// 4.04. seen counts the requests the worker received.
func coapGateway(t *testing.T, g *Gateway, delay time.Duration) (addr string, s *server.Server, seen *atomic.Int64) {
	t.Helper()
	s = natstest.RunServer(t)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g.NATS = natstest.Connect(t, s)
	g.Node = "coap-node"
	g.Listeners = append(g.Listeners, Listener{Conn: c, Protocol: schemas.ProtocolCoAP})
	port := c.LocalAddr().(*net.UDPAddr).Port
	serveGateway(t, g)
	seen = new(atomic.Int64)
	nc := natstest.Connect(t, s)
	sub, err := nc.QueueSubscribe("udpgate.in."+strconv.Itoa(port)+".>", "coap", func(m *nats.Msg) {
		seen.Add(1)
		h := m.Header
		reply := &nats.Msg{Header: nats.Header{}}
		line, _, _ := strings.Cut(h.Get(schemas.HeaderCoAPRequest), "?")
		switch line {
		case "GET /time":
			reply.Header.Set(schemas.HeaderCoAPContentFormat, "0")
			reply.Data = []byte("2026-11-23T00:00:00Z")
		case "POST /echo":
			reply.Header.Set(schemas.HeaderCoAPContentFormat, h.Get(schemas.HeaderCoAPContentFormat))
			reply.Data = m.Data
		case "GET /slow":
			time.Sleep(delay) // the slow worker under test
			reply.Data = []byte("slow answer")
		default:
			reply.Header.Set(schemas.HeaderCoAPCode, "4.04")
		}
		m.RespondMsg(reply)
	})
	if err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	t.Cleanup(func() { sub.Unsubscribe() })
	return c.LocalAddr().String(), s, seen
}

func dialCoAP(t *testing.T, addr string) *client.Conn {
	t.Helper()
	co, err := coapudp.Dial(addr, options.WithBlockwise(true, blockwise.SZX1024, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { co.Close() })
	return co
}

func TestCoAPGoCoAPClient(t *testing.T) {
	g := &Gateway{CoAP: coapConfig(300 * time.Millisecond)}
	addr, _, seen := coapGateway(t, g, 700*time.Millisecond)
	co := dialCoAP(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	t.Run("GET /time piggybacked", func(t *testing.T) {
		resp, err := co.Get(ctx, "/time")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := resp.ReadBody()
		if resp.Code() != codes.Content || string(body) != "2026-11-23T00:00:00Z" {
			t.Errorf("%v %q", resp.Code(), body)
		}
	})
	t.Run("POST /echo 5 KB, block-wise both ways", func(t *testing.T) {
		payload := bytes.Repeat([]byte("0123456789abcdef"), 320) // 5120 bytes
		resp, err := co.Post(ctx, "/echo", message.AppOctets, bytes.NewReader(payload))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := resp.ReadBody()
		cf, _ := resp.ContentFormat()
		if resp.Code() != codes.Content || !bytes.Equal(body, payload) || cf != message.AppOctets {
			t.Errorf("%v cf %v, %d bytes back", resp.Code(), cf, len(body))
		}
		st := g.Stats().CoAP
		for _, c := range st {
			if c.BlockContinue < 4 || c.BlocksServed < 4 {
				t.Errorf("block-wise not used: %+v", c)
			}
		}
	})
	t.Run("slow worker, separate response", func(t *testing.T) {
		resp, err := co.Get(ctx, "/slow")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := resp.ReadBody()
		if string(body) != "slow answer" {
			t.Errorf("%v %q", resp.Code(), body)
		}
		waitFor(t, "separate response acknowledged", func() bool {
			for _, c := range g.Stats().CoAP {
				return c.Separate == 1 && c.GaveUp == 0
			}
			return false
		})
	})
	t.Run("unknown path", func(t *testing.T) {
		resp, err := co.Get(ctx, "/nope/x y")
		if err != nil {
			t.Fatal(err)
		}
		if resp.Code() != codes.NotFound {
			t.Errorf("%v", resp.Code())
		}
	})
	if seen.Load() == 0 {
		t.Error("the worker saw nothing")
	}
}

func coapConfig(piggyback time.Duration) coap.Config {
	return coap.Config{Piggyback: piggyback, ACKTimeout: 200 * time.Millisecond}
}

// rawCoAP sends hand-made CoAP datagrams from one connected socket.
type rawCoAP struct {
	t *testing.T
	c *net.UDPConn
}

func dialRaw(t *testing.T, addr string) *rawCoAP {
	t.Helper()
	ua, _ := net.ResolveUDPAddr("udp", addr)
	c, err := net.DialUDP("udp", nil, ua)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawCoAP{t, c}
}

func (r *rawCoAP) send(b []byte) { r.c.Write(b) }

// read returns the next datagram, or nil after wait.
func (r *rawCoAP) read(wait time.Duration) []byte {
	buf := make([]byte, 2048)
	r.c.SetReadDeadline(time.Now().Add(wait))
	n, err := r.c.Read(buf)
	if err != nil {
		return nil
	}
	return buf[:n]
}

// con builds a CON GET for path with message id mid and a 2-byte token.
func con(mid uint16, typ byte, path ...string) []byte {
	b := []byte{0x40 | typ<<4 | 2, 0x01, 0, 0, 0xAB, 0xCD}
	binary.BigEndian.PutUint16(b[2:], mid)
	prev := 0
	for _, p := range path {
		b = append(b, byte((11-prev)<<4|len(p)))
		b = append(b, p...)
		prev = 11
	}
	return b
}

func TestCoAPMessagingLayer(t *testing.T) {
	g := &Gateway{CoAP: coapConfig(200 * time.Millisecond)}
	addr, _, seen := coapGateway(t, g, 600*time.Millisecond)
	r := dialRaw(t, addr)

	t.Run("retransmitted CON answered once from cache", func(t *testing.T) {
		before := seen.Load()
		req := con(0x1234, 0, "time")
		r.send(req)
		first := r.read(5 * time.Second)
		if first == nil || first[0]>>4&3 != 2 || first[1] != byte(codes.Content) || binary.BigEndian.Uint16(first[2:]) != 0x1234 {
			t.Fatalf("first answer % x: want a piggybacked 2.05 ACK", first)
		}
		r.send(req) // the client did not hear the ACK and retransmits
		again := r.read(5 * time.Second)
		if !bytes.Equal(first, again) {
			t.Errorf("duplicate answered % x, want the cached % x", again, first)
		}
		if n := seen.Load() - before; n != 1 {
			t.Errorf("the worker saw the request %d times, want 1", n)
		}
	})
	t.Run("NON in, NON out", func(t *testing.T) {
		r.send(con(0x2000, 1, "time"))
		resp := r.read(5 * time.Second)
		if resp == nil || resp[0]>>4&3 != 1 || resp[1] != byte(codes.Content) || !bytes.Equal(resp[4:6], []byte{0xAB, 0xCD}) {
			t.Errorf("answer % x: want a NON 2.05 with the token", resp)
		}
	})
	t.Run("ping gets RST", func(t *testing.T) {
		r.send([]byte{0x40, 0, 0x33, 0x44})
		if resp := r.read(2 * time.Second); !bytes.Equal(resp, []byte{0x70, 0, 0x33, 0x44}) {
			t.Errorf("answer % x, want RST 0x3344", resp)
		}
	})
	t.Run("slow worker: empty ACK, then CON response", func(t *testing.T) {
		r.send(con(0x3000, 0, "slow"))
		ack := r.read(2 * time.Second)
		if !bytes.Equal(ack, []byte{0x60, 0, 0x30, 0x00}) {
			t.Fatalf("first answer % x, want an empty ACK", ack)
		}
		resp := r.read(5 * time.Second)
		if resp == nil || resp[0]>>4&3 != 0 || resp[1] != byte(codes.Content) || !strings.HasSuffix(string(resp), "slow answer") {
			t.Fatalf("response % x: want a CON 2.05", resp)
		}
		// Not acknowledged: it is retransmitted with the same message id.
		again := r.read(2 * time.Second)
		if !bytes.Equal(again, resp) {
			t.Fatalf("retransmission % x, want % x", again, resp)
		}
		ackResp := []byte{0x60, 0, resp[2], resp[3]}
		r.send(ackResp)
		// The next retransmission would come within 0.2 to 0.6 s.
		if extra := r.read(1500 * time.Millisecond); extra != nil {
			t.Errorf("sent again after the ACK: % x", extra)
		}
	})
}

func TestCoAPGatewayTimeout(t *testing.T) {
	g := &Gateway{Deadline: 400 * time.Millisecond, CoAP: coapConfig(100 * time.Millisecond)}
	addr, _, _ := coapGateway(t, g, 1500*time.Millisecond)
	r := dialRaw(t, addr)
	r.send(con(0x4000, 0, "slow"))
	if ack := r.read(2 * time.Second); !bytes.Equal(ack, []byte{0x60, 0, 0x40, 0}) {
		t.Fatalf("first answer % x, want an empty ACK", ack)
	}
	resp := r.read(3 * time.Second)
	if len(resp) < 4 || resp[0]>>4&3 != 0 || resp[1] != byte(codes.GatewayTimeout) {
		t.Fatalf("answer % x, want a CON 5.04", resp)
	}
	r.send([]byte{0x60, 0, resp[2], resp[3]})
	waitFor(t, "the worker's late reply dropped", func() bool { return g.Stats().Egress.Late == 1 })
	for _, c := range g.Stats().CoAP {
		if c.Timeouts != 1 {
			t.Errorf("timeouts %d, want 1", c.Timeouts)
		}
	}
}

func TestCoAPServiceUnavailable(t *testing.T) {
	g := &Gateway{CoAP: coapConfig(time.Second)}
	addr, s, seen := coapGateway(t, g, 0)
	s.Shutdown()
	waitFor(t, "client disconnected", func() bool { return !g.NATS.IsConnected() })
	r := dialRaw(t, addr)
	r.send(con(0x5000, 0, "time"))
	resp := r.read(2 * time.Second)
	if len(resp) < 4 || resp[0]>>4&3 != 2 || resp[1] != byte(codes.ServiceUnavailable) {
		t.Fatalf("answer % x, want a piggybacked 5.03", resp)
	}
	if seen.Load() != 0 {
		t.Error("a worker saw the request")
	}
}

// TestCoAPBlock2ClientSize: a client that asks for 64-byte blocks (Block2
// SZX 2 in its request) gets the response in 64-byte blocks, the further
// ones served by the gateway without asking the worker again.
func TestCoAPBlock2ClientSize(t *testing.T) {
	g := &Gateway{CoAP: coapConfig(time.Second)}
	addr, _, seen := coapGateway(t, g, 0)
	r := dialRaw(t, addr)
	payload := bytes.Repeat([]byte("0123456789"), 20) // 200 bytes: 4 blocks of 64
	post := func(mid uint16, num byte) []byte {
		b := []byte{0x42, 0x02, byte(mid >> 8), byte(mid), 0xAB, 0xCD}
		b = append(b, 0xb4, 'e', 'c', 'h', 'o') // Uri-Path (11)
		b = append(b, 0xc1, num<<4|2)           // Block2 (delta 12 → 23): NUM, M=0, SZX 2
		return append(append(b, 0xff), payload...)
	}
	var got []byte
	for num := byte(0); ; num++ {
		r.send(post(0x6000+uint16(num), num))
		resp := r.read(5 * time.Second)
		if resp == nil {
			t.Fatalf("block %d: no answer", num)
		}
		var m message.Message
		m.Options = make(message.Options, 0, 8)
		if _, err := coder.DefaultCoder.Decode(resp, &m); err != nil || m.Code != codes.Content {
			t.Fatalf("block %d: % x: %v", num, resp, err)
		}
		v, err := m.Options.GetUint32(message.Block2)
		if err != nil {
			t.Fatalf("block %d: no Block2 option", num)
		}
		if v>>4 != uint32(num) || v&7 != 2 || len(m.Payload) > 64 {
			t.Fatalf("block %d: Block2 %x, %d bytes", num, v, len(m.Payload))
		}
		got = append(got, m.Payload...)
		if v&8 == 0 {
			break
		}
	}
	if !bytes.Equal(got, payload) {
		t.Errorf("reassembled %q", got)
	}
	if n := seen.Load(); n != 1 {
		t.Errorf("the worker saw %d requests, want 1", n)
	}
}
