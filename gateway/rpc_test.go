package gateway

import (
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers"
	"github.com/udpgate/udpgate/workers/builtin"
)

// rpcGateway runs a gateway with one rpc listener served by the built-in
// places worker (through the SDK) and returns the listener's address.
func rpcGateway(t *testing.T, g *Gateway) *net.UDPAddr {
	t.Helper()
	s := natstest.RunServer(t)
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g.NATS = natstest.Connect(t, s)
	g.Node = "rpc-node"
	g.Listeners = append(g.Listeners, Listener{Conn: c, Protocol: schemas.ProtocolRPC})
	serveGateway(t, g)
	addr := c.LocalAddr().(*net.UDPAddr)
	startWorker(t, s, workers.Direct, "places", schemas.RPCSubject("udpgate", uint16(addr.Port), "InterestingPlaces", "GetRandom"), workers.HandlerFunc(builtin.Places{}.Handle))
	return addr
}

// call sends one envelope and returns the decoded reply, or nil if none
// came within wait.
func call(t *testing.T, addr *net.UDPAddr, datagram []byte, wait time.Duration) *rpcpb.Reply {
	t.Helper()
	c, err := net.DialUDP("udp", nil, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write(datagram)
	c.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		return nil
	}
	var r rpcpb.Reply
	if err := proto.Unmarshal(buf[:n], &r); err != nil {
		t.Fatalf("reply % x is not an envelope: %v", buf[:n], err)
	}
	return &r
}

func envelope(t *testing.T, id uint64, service, method string, params proto.Message) []byte {
	t.Helper()
	var p []byte
	if params != nil {
		p, _ = proto.Marshal(params)
	}
	b, err := proto.Marshal(&rpcpb.Call{Id: id, Service: service, Method: method, Params: p})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRPCGetRandom(t *testing.T) {
	g := &Gateway{}
	addr := rpcGateway(t, g)
	tests := []struct {
		limit  int32
		status rpcpb.Status
	}{
		{1, rpcpb.Status_STATUS_OK},
		{4, rpcpb.Status_STATUS_OK},
		{0, rpcpb.Status_STATUS_INVALID_ARGUMENT},
		{5, rpcpb.Status_STATUS_INVALID_ARGUMENT},
	}
	for i, tt := range tests {
		t.Run("limit "+itoa(int(tt.limit)), func(t *testing.T) {
			id := uint64(1000 + i)
			r := call(t, addr, envelope(t, id, "InterestingPlaces", "GetRandom", &placespb.GetRandomRequest{Limit: tt.limit}), 5*time.Second)
			if r == nil {
				t.Fatal("no reply")
			}
			if r.Id != id || r.Status != tt.status {
				t.Fatalf("reply id %d status %v (%q), want id %d status %v", r.Id, r.Status, r.Error, id, tt.status)
			}
			if tt.status != rpcpb.Status_STATUS_OK {
				if r.Error == "" {
					t.Error("no error message")
				}
				return
			}
			var resp placespb.GetRandomResponse
			if err := proto.Unmarshal(r.Body, &resp); err != nil {
				t.Fatal(err)
			}
			names := map[string]bool{}
			for _, p := range resp.Places {
				names[p.Name] = true
			}
			if len(resp.Places) != int(tt.limit) || len(names) != int(tt.limit) {
				t.Errorf("%d places, %d distinct; want %d", len(resp.Places), len(names), tt.limit)
			}
		})
	}
}

func TestRPCCorruptedEnvelope(t *testing.T) {
	g := &Gateway{}
	addr := rpcGateway(t, g)
	good := envelope(t, 1, "InterestingPlaces", "GetRandom", &placespb.GetRandomRequest{Limit: 1})
	corrupt := [][]byte{
		good[:len(good)-3],            // truncated
		append([]byte{0xff}, good...), // bad tag
		{},                            // empty: no service, no method
		envelope(t, 2, "", "GetRandom", nil),
		envelope(t, 3, "InterestingPlaces", "", nil),
	}
	for i, b := range corrupt {
		if r := call(t, addr, b, 300*time.Millisecond); r != nil {
			t.Errorf("corrupted envelope %d answered: %v", i, r)
		}
	}
	for _, st := range g.Stats().RPC {
		if st.Malformed != uint64(len(corrupt)) || st.Calls != 0 {
			t.Errorf("stats %+v, want %d malformed and no calls", st, len(corrupt))
		}
	}
	if r := call(t, addr, good, 5*time.Second); r == nil || r.Status != rpcpb.Status_STATUS_OK {
		t.Errorf("a good call after them: %v", r)
	}
}

func TestRPCDeadline(t *testing.T) {
	g := &Gateway{Deadline: 300 * time.Millisecond}
	addr := rpcGateway(t, g)
	// A group takes this method and never answers: the call gets a
	// deadline status.
	nc, err := nats.Connect(g.NATS.ConnectedUrl())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.QueueSubscribe(schemas.RPCSubject("udpgate", uint16(addr.Port), "Silent", "Home"), "silent", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	r := call(t, addr, envelope(t, 42, "Silent", "Home", nil), 5*time.Second)
	if r == nil || r.Id != 42 || r.Status != rpcpb.Status_STATUS_DEADLINE_EXCEEDED {
		t.Fatalf("reply %v, want id 42 STATUS_DEADLINE_EXCEEDED", r)
	}
}
