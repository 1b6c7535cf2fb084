package coap

import (
	"net/netip"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/schemas"
)

// TestReceiveGroup: a request sent to a multicast group is taken only as
// a NON; a CON, a ping and a malformed CON get no RST; the response is a
// NON, sent within Leisure, and errors, the workers' and the gateway's,
// are not sent at all.
func TestReceiveGroup(t *testing.T) {
	te := newTestEdge(t, Config{Leisure: 50 * time.Millisecond})
	group := netip.MustParseAddr("224.0.1.187")
	receive := func(b []byte) *Request {
		return te.ReceiveGroup(b, te.remote, te.local, group, 0, time.Now())
	}
	for _, in := range []string{
		"40 01 12 34 b4 74 69 6d 65",             // CON GET /time
		"40 00 12 35",                            // ping
		"49 01 12 36 01 02 03 04 05 06 07 08 09", // malformed CON
		"60 45 12 37",                            // a response
	} {
		if r := receive(unhex(t, in)); r != nil {
			t.Errorf("%s: taken", in)
		}
	}
	if b := te.answer(100 * time.Millisecond); b != nil {
		t.Fatalf("answered %x to a group's CON, ping or response", b)
	}

	r := receive(unhex(t, "51 01 12 40 aa b4 74 69 6d 65")) // NON GET /time, token aa
	if r == nil || r.Group != group || r.Confirmable {
		t.Fatalf("NON to the group: %+v", r)
	}
	if err := r.Reply(schemas.StatusOK, nil, []byte("now")); err != nil {
		t.Fatal(err)
	}
	b := te.answer(5 * time.Second)
	if len(b) < 4 || b[0]>>4&3 != byte(typeNON) || codes.Code(b[1]) != codes.Content || string(b[len(b)-3:]) != "now" {
		t.Fatalf("response %x, want a NON 2.05 with the body", b)
	}

	for i, fail := range []func(r *Request){
		func(r *Request) { r.Fail(exchange.NoAnswer) },
		func(r *Request) { r.Fail(exchange.Unserved) },
		func(r *Request) { r.Reply(schemas.StatusError, nil, nil) },
		func(r *Request) {
			r.Reply(schemas.StatusOK, map[string][]string{schemas.HeaderCoAPCode: {"4.04"}}, nil)
		},
	} {
		r := receive(unhex(t, "51 01 13 4"+string(rune('0'+i))+" bb b4 74 69 6d 65"))
		if r == nil {
			t.Fatalf("request %d not taken", i)
		}
		fail(r)
	}
	receive(unhex(t, "50 08 14 00")) // unknown method: the gateway's 4.05
	if b := te.answer(200 * time.Millisecond); b != nil {
		t.Fatalf("an error answered a multicast request: %x", b)
	}
	st := te.Stats()
	if st.MulticastSuppressed != 5 || st.Timeouts != 0 || st.NotFound != 0 {
		t.Errorf("suppressed %d (want 5), timeouts %d, not found %d (want 0)", st.MulticastSuppressed, st.Timeouts, st.NotFound)
	}
	if st.Malformed != 4 {
		t.Errorf("malformed %d, want the 4 messages not taken", st.Malformed)
	}
}

// TestReceiveGroupClose: a response waiting for its moment is not sent
// once the edge is closed.
func TestReceiveGroupClose(t *testing.T) {
	te := newTestEdge(t, Config{Leisure: time.Hour})
	r := te.ReceiveGroup(unhex(t, "51 01 12 40 aa b4 74 69 6d 65"), te.remote, te.local, netip.MustParseAddr("ff02::fd"), 0, time.Now())
	if r == nil {
		t.Fatal("not taken")
	}
	r.Reply(schemas.StatusOK, nil, []byte("now"))
	te.Close()
	te.mu.Lock()
	n := len(te.later)
	te.mu.Unlock()
	if n != 0 {
		t.Errorf("%d responses still waiting after Close", n)
	}
}
