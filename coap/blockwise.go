package coap

import (
	"net/netip"
	"strings"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"

	"github.com/udpgate/udpgate/guard"
)

// maxTransfers bounds Block1 uploads and Block2 downloads in progress.
const maxTransfers = 1024

// transferKey names a block-wise transfer: the peer and the request.
type transferKey struct {
	peer netip.AddrPort
	op   string // method and URI
}

// upload is a Block1 request body being reassembled.
type upload struct {
	body    []byte
	next    uint32
	szx     uint8
	expires time.Time
}

// download is a response the gateway holds to serve its further Block2
// blocks.
type download struct {
	body    []byte
	code    codes.Code
	cf      int
	etag    []byte
	szx     uint8
	expires time.Time
	// limited: the transfer is under the amplification limit, with
	// credit bytes (IP packets) left to send; each further request adds
	// its own credit.
	limited bool
	credit  int
}

// receiveBlock1 adds one block of an upload. It returns the whole body and
// true when the last block arrived; otherwise it has answered the block.
func (e *Edge) receiveBlock1(r *Request, b block, payload []byte, now time.Time) ([]byte, bool) {
	key := transferKey{r.dst.Remote, r.op}
	e.mu.Lock()
	up := e.uploads[key]
	if b.num == 0 {
		up = &upload{szx: b.szx}
		e.storeUpload(key, up)
	}
	var reject codes.Code
	var opts message.Options
	switch {
	case up == nil || up.next != b.num || up.szx != b.szx:
		reject = codes.RequestEntityIncomplete
	case b.more && len(payload) != b.size():
		reject = codes.BadRequest
	case len(up.body)+len(payload) > e.MaxBody:
		reject = codes.RequestEntityTooLarge
		opts = message.Options{{ID: message.Size1, Value: encodeUint(uint32(e.MaxBody))}}
	}
	if reject != 0 {
		delete(e.uploads, key)
		e.mu.Unlock()
		e.stats.rejected.Add(1)
		r.respond(reject, opts, nil)
		return nil, false
	}
	up.body = append(up.body, payload...)
	up.next++
	up.expires = now.Add(exchangeLifetime)
	if b.more {
		e.mu.Unlock()
		e.stats.blockContinue.Add(1)
		r.respond(codes.Continue, message.Options{{ID: message.Block1, Value: encodeUint(b.value())}}, nil)
		return nil, false
	}
	delete(e.uploads, key)
	e.mu.Unlock()
	final := b
	r.block1 = &final
	return up.body, true
}

// serveBlock2 answers a request for a further block of a response the
// gateway holds. It reports false when it holds none.
func (e *Edge) serveBlock2(r *Request, now time.Time) bool {
	e.mu.Lock()
	d, ok := e.downloads[transferKey{r.dst.Remote, r.op}]
	if !ok || now.After(d.expires) {
		e.mu.Unlock()
		return false
	}
	limited, credit := d.limited, 0
	if limited {
		// Each further request adds its own credit to the transfer's.
		if limited = r.limited && e.Guard.Limited(r.dst.Remote.Addr(), now); limited {
			d.credit += r.credit
			credit = d.credit
		}
	}
	e.mu.Unlock()
	want := scaleBlock(r.block2, min(r.block2.szx, d.szx))
	if int(want.num)*want.size() >= len(d.body) {
		e.stats.rejected.Add(1)
		r.respond(codes.BadOption, nil, nil)
		return true
	}
	var opts message.Options
	if d.cf >= 0 {
		opts = opts.Add(message.Option{ID: message.ContentFormat, Value: encodeUint(uint32(d.cf))})
	}
	if d.etag != nil {
		opts = opts.Add(message.Option{ID: message.ETag, Value: d.etag})
	}
	if limited {
		szx, ok := r.fitBlock(d.code, opts, d.body, want, credit)
		if !ok {
			r.challenge(credit)
			return true
		}
		if szx < want.szx {
			e.Guard.CountCut()
			want = scaleBlock(want, szx)
		}
	}
	chunk, opts := blockOf(d.body, want, opts)
	if limited {
		e.mu.Lock()
		d.credit -= guard.Wire(r.dst.Remote.Addr(), r.encodedLen(d.code, opts, chunk))
		d.szx = min(d.szx, want.szx)
		e.mu.Unlock()
	}
	e.stats.blocksServed.Add(1)
	r.respond(d.code, opts, chunk)
	return true
}

// blockOf returns block want of body and opts with the Block2 option (and
// Size2 on the first block).
func blockOf(body []byte, want block, opts message.Options) ([]byte, message.Options) {
	size := want.size()
	start := min(int(want.num)*size, len(body))
	end := min(start+size, len(body))
	b := block{num: want.num, szx: want.szx, more: end < len(body)}
	opts = opts.Add(message.Option{ID: message.Block2, Value: encodeUint(b.value())})
	if want.num == 0 {
		opts = opts.Add(message.Option{ID: message.Size2, Value: encodeUint(uint32(len(body)))})
	}
	return body[start:end], opts
}

// scaleBlock returns the block of size 2^(szx+4) that starts where b
// starts (RFC 7959 §2.4: a server may answer with a smaller block).
func scaleBlock(b block, szx uint8) block {
	if szx >= b.szx {
		return b
	}
	return block{num: b.num << (b.szx - szx), more: b.more, szx: szx}
}

// storeUpload and storeDownload keep at most maxTransfers of each,
// dropping the one closest to expiry. e.mu must be held.
func (e *Edge) storeUpload(k transferKey, u *upload) {
	u.expires = time.Now().Add(exchangeLifetime)
	e.stats.evicted.Add(store(e.uploads, k, u, func(u *upload) time.Time { return u.expires }))
}

func (e *Edge) storeDownload(k transferKey, d *download) {
	e.stats.evicted.Add(store(e.downloads, k, d, func(d *download) time.Time { return d.expires }))
}

// store puts v in m under k, first dropping the entry that expires soonest
// if m is full. It returns how many entries it dropped.
func store[V any](m map[transferKey]V, k transferKey, v V, expires func(V) time.Time) uint64 {
	var dropped uint64
	if _, ok := m[k]; !ok && len(m) >= maxTransfers {
		var soonest transferKey
		var at time.Time
		for k2, v2 := range m {
			if t := expires(v2); at.IsZero() || t.Before(at) {
				soonest, at = k2, t
			}
		}
		delete(m, soonest)
		dropped = 1
	}
	// The key outlives the request whose Receive made k.op, in which it
	// would otherwise keep the whole Request.
	k.op = strings.Clone(k.op)
	m[k] = v
	return dropped
}
