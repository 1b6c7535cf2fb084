package faults

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
)

// TestFaultCoAPLoad runs the fault suite's CoAP client against a server
// that answers request i as case i%6 says, and checks how each is counted.
func TestFaultCoAPLoad(t *testing.T) {
	const (
		piggybacked = iota // 2.05 in the ACK
		dropFirst          // the first copy dropped, the retransmission answered
		separate           // an empty ACK, then a CON 2.05 sent twice (one response)
		unavailable        // 5.03 in the ACK
		silent             // nothing, ever
		twice              // 2.05 in the ACK, then a NON 2.05: two responses
		cases
	)
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var (
		mu     sync.Mutex // guards copies and acked
		copies = map[int]int{}
		acked  = map[int32]bool{} // the client's ACKs of separate responses, by message id
	)
	go func() {
		buf := make([]byte, 1500)
		out := make([]byte, 1500)
		m := message.Message{Options: make(message.Options, 0, 16)}
		for {
			n, from, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if _, err := coder.DefaultCoder.Decode(buf[:n], &m); err != nil {
				t.Errorf("server: %v", err)
				continue
			}
			if m.Type == message.Acknowledgement {
				mu.Lock()
				acked[m.MessageID] = true
				mu.Unlock()
				continue
			}
			id := coapTokenID(m.Token)
			if m.Type != message.Confirmable || m.Code != codes.POST || id < 0 || int32(id%coapIDs) != m.MessageID {
				t.Errorf("server: unexpected %v", m.String())
				continue
			}
			mu.Lock()
			copies[id]++
			nth := copies[id]
			mu.Unlock()
			send := func(typ message.Type, code codes.Code, mid int32, token []byte) {
				k, err := coder.DefaultCoder.Encode(message.Message{Type: typ, Code: code, MessageID: mid, Token: token, Payload: m.Payload}, out)
				if err != nil {
					t.Errorf("server: %v", err)
					return
				}
				srv.WriteToUDPAddrPort(out[:k], from)
			}
			token := append([]byte(nil), m.Token...)
			switch id % cases {
			case piggybacked:
				send(message.Acknowledgement, codes.Content, m.MessageID, token)
			case dropFirst:
				if nth > 1 {
					send(message.Acknowledgement, codes.Content, m.MessageID, token)
				}
			case separate:
				send(message.Acknowledgement, codes.Empty, m.MessageID, nil)
				send(message.Confirmable, codes.Content, int32(1000+id), token)
				send(message.Confirmable, codes.Content, int32(1000+id), token)
			case unavailable:
				send(message.Acknowledgement, codes.ServiceUnavailable, m.MessageID, token)
			case twice:
				send(message.Acknowledgement, codes.Content, m.MessageID, token)
				send(message.NonConfirmable, codes.Content, int32(2000+id), token)
			}
		}
	}()

	timeout := 500 * time.Millisecond
	l, err := startCoAPLoadEvery(context.Background(), srv.LocalAddr().(*net.UDPAddr).AddrPort(), 200, 100*time.Millisecond, timeout, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	l.wait()
	r := l.count("coap")

	var want faultRow
	var wantRetransmitted, wantSeparate float64
	for id := range int(r.Sent) {
		switch id % cases {
		case piggybacked, twice:
			want.Answered++
		case dropFirst:
			want.Answered++
			wantRetransmitted++
		case separate:
			want.Answered++
			wantSeparate++
		case unavailable:
			want.Failed++
		case silent:
			want.Lost++
			wantRetransmitted++
		}
		if id%cases == twice {
			want.Duplicate++
		}
	}
	if r.Sent < cases || r.Answered != want.Answered || r.Failed != want.Failed || r.Lost != want.Lost || r.Late != 0 || r.Duplicate != want.Duplicate {
		t.Errorf("sent %d: answered %d, failed %d, lost %d, late %d, duplicate %d; want %d, %d, %d, 0, %d",
			r.Sent, r.Answered, r.Failed, r.Lost, r.Late, r.Duplicate, want.Answered, want.Failed, want.Lost, want.Duplicate)
	}
	for key, v := range map[string]float64{
		"retransmitted": wantRetransmitted, "answered_after_retransmission": wantRetransmitted - float64(want.Lost),
		"acked_then_answered_separately": wantSeparate, "repeated_responses": wantSeparate, "failed_5.03": float64(want.Failed),
		"stray": 0,
	} {
		if r.Extra[key] != v {
			t.Errorf("%s = %g, want %g", key, r.Extra[key], v)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for id := range int(r.Sent) {
		switch id % cases {
		case separate:
			if !acked[int32(1000+id)] {
				t.Errorf("request %d: the separate response was not acknowledged", id)
			}
		case silent:
			// Sent, then retransmitted at 50 to 75 ms, twice as long
			// after that, and so on, while its 500 ms last.
			if copies[id] < 3 || copies[id] > 1+coapMaxRetransmit {
				t.Errorf("request %d: %d copies, want 3 to %d", id, copies[id], 1+coapMaxRetransmit)
			}
		case piggybacked, unavailable, twice:
			if copies[id] != 1 {
				t.Errorf("request %d: %d copies, want 1", id, copies[id])
			}
		}
	}
}
