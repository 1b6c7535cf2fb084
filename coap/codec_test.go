package coap

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
)

func TestParseCode(t *testing.T) {
	for _, s := range []string{"2.05", "4.04", "5.03", "2.31", "4.00"} {
		c, err := ParseCode(s)
		if err != nil || FormatCode(c) != s {
			t.Errorf("ParseCode(%q) = %v, %v", s, c, err)
		}
	}
	for _, s := range []string{"", "205", "0.01", "3.00", "6.00", "2.32", "2.5", "2.x5", "2.-1"} {
		if _, err := ParseCode(s); err == nil {
			t.Errorf("ParseCode(%q) accepted", s)
		}
	}
}

func TestParseMethod(t *testing.T) {
	for c := codes.GET; c <= codes.IPATCH; c++ {
		name := methodName(c)
		for _, s := range []string{name, strings.ToLower(name), strings.ToUpper(name)} {
			if got, ok := ParseMethod(s); !ok || got != c {
				t.Errorf("ParseMethod(%q) = %v, %v; want %v", s, got, ok, c)
			}
		}
	}
	for _, s := range []string{"", "HEAD", "GETS", "Empty"} {
		if c, ok := ParseMethod(s); ok {
			t.Errorf("ParseMethod(%q) = %v", s, c)
		}
	}
}

func TestAppendEncodedMatchesGoCoAP(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	lengths := []int{0, 1, 12, 13, 14, 268, 269, 270, 600}
	ids := []message.OptionID{1, 4, 11, 12, 14, 15, 23, 27, 28, 60, 258, 300, 2048, 65000}
	for i := range 500 {
		var opts message.Options
		for range rnd.IntN(6) {
			v := bytes.Repeat([]byte{byte(i)}, lengths[rnd.IntN(len(lengths))])
			opts = opts.Add(message.Option{ID: ids[rnd.IntN(len(ids))], Value: v})
		}
		m := message.Message{
			Token:     bytes.Repeat([]byte{0xab}, rnd.IntN(9)),
			Options:   opts,
			Code:      codes.Code(rnd.IntN(256)),
			Payload:   bytes.Repeat([]byte{'x'}, lengths[rnd.IntN(len(lengths))]),
			MessageID: int32(rnd.IntN(1 << 16)),
			Type:      message.Type(rnd.IntN(4)),
		}
		n, err := coder.DefaultCoder.Size(m)
		if err != nil {
			t.Fatal(err)
		}
		want := make([]byte, n)
		if _, err := coder.DefaultCoder.Encode(m, want); err != nil {
			t.Fatal(err)
		}
		got, err := appendEncoded([]byte("prefix"), m)
		if err != nil || !bytes.Equal(got[6:], want) || string(got[:6]) != "prefix" {
			t.Fatalf("%+v: got % x (%v), want % x", m, got, err, want)
		}
	}
	if _, err := appendEncoded(nil, message.Message{Token: make([]byte, 9), Type: typeCON}); err == nil {
		t.Error("a 9-byte token encoded")
	}
	unsorted := message.Options{{ID: 28}, {ID: 27}}
	if _, err := appendEncoded(nil, message.Message{Options: unsorted, Type: typeCON}); err == nil {
		t.Error("options out of order encoded")
	}
}
