package rpc

import (
	"math/bits"

	"github.com/udpgate/udpgate/schemas"
)

// Size returns at least the bytes a client sent for c, for the
// amplification limit: the encoding of the call's fields.
func (c *Call) Size() int {
	n := field(len(c.Service)) + field(len(c.Method))
	if len(c.Params) > 0 {
		n += field(len(c.Params))
	}
	if c.ID != 0 {
		n += 1 + varintLen(c.ID)
	}
	return n
}

// ReplySize returns at least the size of the Reply that Reply sends for a
// worker's reply with this status, header and body, for the amplification
// limit.
func (c *Call) ReplySize(status string, header map[string][]string, body []byte) int {
	n := 1 + varintLen(c.ID) + 1 + 5 // id, status (a status is below 2^31)
	if status != schemas.StatusOK {
		return n
	}
	if e := header[schemas.HeaderRPCError]; len(e) > 0 && e[0] != "" {
		n += field(len(e[0]))
	}
	if len(body) > 0 {
		n += field(len(body))
	}
	return n
}

// field is the encoded size of a length-delimited field of n bytes: tag,
// length, value.
func field(n int) int { return 1 + varintLen(uint64(n)) + n }

func varintLen(v uint64) int { return (bits.Len64(v|1) + 6) / 7 }
