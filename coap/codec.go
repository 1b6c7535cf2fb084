package coap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/udp/coder"
	"github.com/udpgate/udpgate/schemas"
)

// Message types (RFC 7252 §3).
const (
	typeCON = message.Confirmable
	typeNON = message.NonConfirmable
	typeACK = message.Acknowledgement
	typeRST = message.Reset
)

// header is the fixed four-byte CoAP header, read without decoding the rest.
type header struct {
	typ  message.Type
	tkl  int
	code codes.Code
	mid  uint16
}

// errShort and errVersion are the failures peekHeader reports.
var (
	errShort   = errors.New("coap: shorter than the 4-byte header")
	errVersion = errors.New("coap: version is not 1")
)

// peekHeader checks the fixed header cheaply, before a full decode.
func peekHeader(b []byte) (header, error) {
	if len(b) < 4 {
		return header{}, errShort
	}
	if b[0]>>6 != 1 {
		return header{}, errVersion
	}
	return header{
		typ:  message.Type(b[0] >> 4 & 3),
		tkl:  int(b[0] & 0x0f),
		code: codes.Code(b[1]),
		mid:  binary.BigEndian.Uint16(b[2:4]),
	}, nil
}

// decode parses b into m with go-coap's codec. m.Options must have spare
// capacity (maxOptions); m's slices alias b.
func decode(b []byte, m *message.Message) error {
	if _, err := coder.DefaultCoder.Decode(b, m); err != nil {
		return err
	}
	return nil
}

// maxOptions bounds the options of one request; more is a format error.
const maxOptions = 32

// appendEncoded appends the encoding of m (RFC 7252 §3) to dst. m's
// options must be sorted by number, as message.Options.Add keeps them. It
// writes what go-coap's coder writes, without its two passes to size the
// message.
func appendEncoded(dst []byte, m message.Message) ([]byte, error) {
	if len(m.Token) > message.MaxTokenSize {
		return dst, message.ErrInvalidTokenLen
	}
	if !message.ValidateMID(m.MessageID) || !message.ValidateType(m.Type) {
		return dst, fmt.Errorf("coap: encode: message id %d, type %d", m.MessageID, m.Type)
	}
	n := 4 + len(m.Token)
	prev := message.OptionID(0)
	for _, o := range m.Options {
		if o.ID < prev || len(o.Value) > maxExtended {
			return dst, errOptions
		}
		n += 1 + extLen(int(o.ID-prev)) + extLen(len(o.Value)) + len(o.Value)
		prev = o.ID
	}
	if len(m.Payload) > 0 {
		n += 1 + len(m.Payload)
	}
	dst = slices.Grow(dst, n)
	dst = append(dst, 1<<6|byte(m.Type)<<4|byte(len(m.Token)), byte(m.Code), byte(m.MessageID>>8), byte(m.MessageID))
	dst = append(dst, m.Token...)
	prev = 0
	for _, o := range m.Options {
		dst = appendOptionHeader(dst, int(o.ID-prev), len(o.Value))
		dst = append(dst, o.Value...)
		prev = o.ID
	}
	if len(m.Payload) > 0 {
		dst = append(dst, 0xff)
		dst = append(dst, m.Payload...)
	}
	return dst, nil
}

// errOptions is appendEncoded's failure for options out of order or too
// long.
var errOptions = errors.New("coap: encode: options out of order or too long")

// maxExtended is the largest option delta or length (RFC 7252 §3.1).
const maxExtended = 269 + 0xffff

// extLen is how many extended bytes an option delta or length v takes.
func extLen(v int) int {
	switch {
	case v < 13:
		return 0
	case v < 269:
		return 1
	}
	return 2
}

// appendOptionHeader appends an option's delta and length nibbles and
// their extended bytes.
func appendOptionHeader(dst []byte, delta, length int) []byte {
	nibble := func(v int) byte {
		switch {
		case v < 13:
			return byte(v)
		case v < 269:
			return 13
		}
		return 14
	}
	dst = append(dst, nibble(delta)<<4|nibble(length))
	for _, v := range [2]int{delta, length} {
		switch {
		case v >= 269:
			dst = append(dst, byte((v-269)>>8), byte(v-269))
		case v >= 13:
			dst = append(dst, byte(v-13))
		}
	}
	return dst
}

// coderSize returns the encoded size of m.
func coderSize(m message.Message) (int, error) { return coder.DefaultCoder.Size(m) }

// empty returns an empty message (ACK or RST) for mid: four bytes.
func empty(typ message.Type, mid uint16) []byte {
	b := make([]byte, 4)
	b[0] = 1<<6 | byte(typ)<<4
	binary.BigEndian.PutUint16(b[2:], mid)
	return b
}

// ParseCode parses a response code written "c.dd" (2.05, 4.04).
func ParseCode(s string) (codes.Code, error) {
	class, detail, err := schemas.ParseCoAPCode(s)
	if err != nil {
		return 0, fmt.Errorf("coap: %w", err)
	}
	return codes.Code(class<<5 | detail), nil
}

// FormatCode writes c as "c.dd".
func FormatCode(c codes.Code) string {
	return strconv.Itoa(int(c>>5)) + "." + fmt.Sprintf("%02d", int(c&0x1f))
}

// methods names the request codes (RFC 7252, RFC 8132) as Request.Method
// and the CoAP-Request header write them.
var methods = [...]string{
	codes.GET: "GET", codes.POST: "POST", codes.PUT: "PUT", codes.DELETE: "DELETE",
	codes.FETCH: "FETCH", codes.PATCH: "PATCH", codes.IPATCH: "iPATCH",
}

// methodName returns the name of request code c, or "" for an unknown
// method.
func methodName(c codes.Code) string {
	if int(c) < len(methods) {
		return methods[c]
	}
	return ""
}

// ParseMethod returns the request code of the method named name, as
// Request.Method writes it ("GET", "iPATCH"), in any case ("get",
// "ipatch"). It reports false for an unknown method.
func ParseMethod(name string) (codes.Code, bool) {
	for c, m := range methods {
		if m != "" && strings.EqualFold(m, name) {
			return codes.Code(c), true
		}
	}
	return 0, false
}

// Block options (RFC 7959 §2.2): NUM, M and SZX packed in one uint.
type block struct {
	num  uint32
	more bool
	szx  uint8 // size 2^(szx+4); 7 is reserved (BERT, TCP only)
}

func (b block) size() int { return 1 << (b.szx + 4) }

func (b block) value() uint32 {
	v := b.num<<4 | uint32(b.szx)
	if b.more {
		v |= 1 << 3
	}
	return v
}

func parseBlock(v uint32) (block, bool) {
	b := block{num: v >> 4, more: v&8 != 0, szx: uint8(v & 7)}
	return b, b.szx < 7 && b.num < 1<<20
}

// szxFor returns the largest SZX whose size is at most n (16..1024).
func szxFor(n int) uint8 {
	szx := uint8(6)
	for szx > 0 && 1<<(szx+4) > n {
		szx--
	}
	return szx
}

// decodeUint reads a CoAP uint option value (RFC 7252 §3.2).
func decodeUint(v []byte) uint32 {
	var n uint32
	for _, b := range v {
		n = n<<8 | uint32(b)
	}
	return n
}

// appendUint appends n as a CoAP uint option value: big-endian, without
// leading zero bytes.
func appendUint(dst []byte, n uint32) []byte {
	for i := 24; i >= 0; i -= 8 {
		if n>>i != 0 {
			dst = append(dst, byte(n>>i))
		}
	}
	return dst
}

// encodeUint returns n as a CoAP uint option value, in a new slice; nil
// for 0.
func encodeUint(n uint32) []byte {
	switch {
	case n == 0:
		return nil
	case n < 1<<8:
		return []byte{byte(n)}
	case n < 1<<16:
		return []byte{byte(n >> 8), byte(n)}
	case n < 1<<24:
		return []byte{byte(n >> 16), byte(n >> 8), byte(n)}
	}
	return []byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)}
}
