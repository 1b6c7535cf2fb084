// Package exchange keeps the gateway's pending exchanges: for each request
// datagram in flight, the socket that received it, the client's address, the
// address the client sent to, and the deadline. Ingress opens an exchange
// before it publishes a request; egress closes it when the reply arrives,
// and takes the client's address from here, never from the worker's message.
//
// A Table is a fixed ring of slots indexed by a sequence number, so its
// memory is bounded and set once; a correlation id names its table instance
// (a random boot id) and sequence number, so a reply meant for an earlier
// process, an expired exchange or an exchange already answered is recognised
// as such.
package exchange

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Exchange is one request awaiting its reply.
type Exchange struct {
	// Conn is the socket that received the request; the reply is written
	// through it, so it leaves from the port the client sent to.
	Conn *net.UDPConn
	// Remote is the client's address.
	Remote netip.AddrPort
	// Local is the address the client sent the request to, and the
	// source of the replies: for a request sent to a multicast group or
	// a broadcast address, the unicast address to answer from instead
	// (IPv4: the interface's address, IP_PKTINFO's ipi_spec_dst; IPv6:
	// the unspecified address, and the kernel picks one of interface
	// IfIndex's), never the group's.
	Local netip.AddrPort
	// SetSource asks egress to set Local as the reply's source address
	// explicitly (IP_PKTINFO), as a socket bound to a wildcard address needs.
	SetSource bool
	// IfIndex is the interface the request arrived on, 0 if unknown.
	IfIndex int
	// Port is the listener port, for accounting.
	Port uint16
	// Received is when the request was read from the socket, for the
	// request-to-reply latency; zero if unknown.
	Received time.Time
	// Deadline is when the exchange expires unanswered.
	Deadline time.Time
	// Size is how many bytes the client sent for the request, for the
	// amplification limit; 0 if unknown.
	Size int
	// Replier answers the exchange in its protocol; nil for raw listeners,
	// whose reply is the worker's body as is.
	Replier Replier
	// Session, if not nil, is the secured session the request came
	// through (a DTLS session, package dtls): Write encrypts through it,
	// to the client's current address, instead of writing to Conn.
	Session Session
	// Share, if not nil, is the listener's share of the table: the
	// exchange counts against it from Open until its slot is vacated.
	Share *Share
	// TooBig, if not nil, counts the writes that the path could not
	// carry in one packet (EMSGSIZE: larger than the path MTU on a
	// socket that forbids fragmentation, ingress.DontFragment).
	TooBig *atomic.Uint64
	// Sent and Replies are the bytes (UDP payload) and the number of the
	// replies sent so far that said more follow (see Table.More): the
	// replies of one exchange share its amplification credit. Zero until
	// a first such reply.
	Sent, Replies int
}

// Share bounds how many exchanges one listener may hold open in a Table,
// so that a port whose workers are slow or gone, or a flood on one port,
// cannot take the slots that every other listener needs. Set Max before
// the first Open; give the same Share to every Exchange of the listener.
// A Share counts in one Table only. It is safe for concurrent use.
type Share struct {
	// Max is the most exchanges holding the share that may be open at
	// once; 0 means no limit but the table's.
	Max int

	open atomic.Int64 // exchanges holding the share in state open; written under the table's lock
}

// Len returns the number of open exchanges holding the share, those past
// their deadline that the sweep has not reached yet included.
func (sh *Share) Len() int { return int(sh.open.Load()) }

// Errors of Open.
var (
	// ErrFull: the slot the next sequence number maps to holds an open
	// exchange inside its deadline.
	ErrFull = errors.New("exchange: table full")
	// ErrShareFull: the exchange's Share already holds Max open exchanges.
	ErrShareFull = errors.New("exchange: listener's share of the table full")
)

// Replier answers an exchange in its listener's protocol (CoAP, RPC). Egress
// calls Reply for the exchange's one accepted reply; Fail is called instead
// when no reply will come. Implementations are safe for concurrent use.
type Replier interface {
	// Reply sends the worker's reply: its udpgate-status, headers and body.
	Reply(status string, header map[string][]string, body []byte) error
	// Fail answers an exchange that will get no reply from a worker.
	Fail(why Failure)
}

// Session is a secured association with a client, such as a DTLS
// session: what is written to it is encrypted and sent to the client.
// Implementations are safe for concurrent use.
type Session interface {
	Write(b []byte) error
}

// Failure is why an exchange gets no reply from a worker.
type Failure uint8

// Failures passed to Replier.Fail.
const (
	// NoAnswer: no reply before the deadline.
	NoAnswer Failure = iota + 1
	// Unavailable: the request could not be published.
	Unavailable
	// Unserved: no worker group serves the request's subject (CoAP: 4.04
	// Not Found; RPC: STATUS_UNIMPLEMENTED).
	Unserved
)

// Outcome is what Close found.
type Outcome uint8

// Outcomes of Close.
const (
	// Answered: the exchange was open; the caller sends the reply.
	Answered Outcome = iota + 1
	// Late: the exchange's deadline had passed and it was already
	// answered as unanswered (by Expire, or an earlier Expired).
	Late
	// Expired: the exchange was still open but its deadline had passed:
	// the reply is late, and the caller answers the exchange as
	// unanswered, as Expire's callback would (it gets the whole exchange).
	Expired
	// Duplicate: the exchange was already answered.
	Duplicate
	// Unknown: the id is malformed, from another process, or so old that
	// its slot was reused.
	Unknown
)

func (o Outcome) String() string {
	switch o {
	case Answered:
		return "answered"
	case Late:
		return "late"
	case Duplicate:
		return "duplicate"
	case Unknown:
		return "unknown"
	case Expired:
		return "expired"
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

type state uint8

const (
	free state = iota
	open
	answered
	expired
)

type slot struct {
	seq   uint64
	state state
	ex    Exchange
}

// Table is a bounded table of pending exchanges. It is safe for concurrent
// use.
type Table struct {
	boot string // random, names this table in ids: BOOT-SEQ

	mu    sync.Mutex // guards slots, next, open and low
	slots []slot
	next  uint64 // last sequence number handed out
	open  int    // slots in state open
	low   uint64 // no exchange before this sequence number is open: where Expire starts
}

// DefaultSize is the capacity of a table made with size 0.
const DefaultSize = 1 << 16

// NewTable returns a table for up to size open exchanges, rounded up to a
// power of two (DefaultSize if size <= 0).
func NewTable(size int) *Table {
	if size <= 0 {
		size = DefaultSize
	}
	n := 1
	for n < size {
		n <<= 1
	}
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("exchange: crypto/rand: " + err.Error()) // never happens on supported systems
	}
	return &Table{boot: hex.EncodeToString(b[:]), slots: make([]slot, n)}
}

// Len returns the number of open exchanges.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.open
}

// Cap returns the table's capacity.
func (t *Table) Cap() int { return len(t.slots) }

// Open records ex and returns its sequence number. It returns ErrShareFull
// when ex's Share already holds its Max open exchanges, and ErrFull when
// the slot the next sequence number maps to still holds an open exchange
// whose deadline has not passed: the table is full. An open exchange past
// its deadline that the sweep has not reached yet is overwritten and
// returned as expired (its Conn is not nil), so the caller can count and
// answer it; when it held ex's Share, ex takes its place in the share
// even at Max.
func (t *Table) Open(ex Exchange, now time.Time) (seq uint64, expired Exchange, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	seq = t.next + 1
	s := &t.slots[seq&uint64(len(t.slots)-1)]
	taken := s.state == open
	due := taken && !now.Before(s.ex.Deadline)
	if sh := ex.Share; sh != nil && sh.Max > 0 && sh.open.Load() >= int64(sh.Max) && !(due && s.ex.Share == sh) {
		return 0, Exchange{}, ErrShareFull
	}
	if taken && !due {
		return 0, Exchange{}, ErrFull
	}
	if taken {
		expired = s.ex
		t.vacate(s)
	}
	t.next = seq
	*s = slot{seq: seq, state: open, ex: ex}
	t.open++
	if ex.Share != nil {
		ex.Share.open.Add(1)
	}
	return seq, expired, nil
}

// vacate counts the open exchange in s as no longer open, in the table
// and in its share. t.mu must be held.
func (t *Table) vacate(s *slot) {
	t.open--
	if s.ex.Share != nil {
		s.ex.Share.open.Add(-1)
	}
}

// Close closes the exchange seq for its reply. Only when the outcome is
// Answered is the exchange returned and a reply due; every later Close of
// the same seq reports Duplicate (or Late, or Unknown once the slot is
// reused). For Late and Duplicate, only the returned exchange's Port is
// set, for accounting.
func (t *Table) Close(seq uint64, now time.Time) (Exchange, Outcome) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.close(seq, now)
}

// More is Close for a reply after which more replies follow: when the
// exchange is open, inside its deadline, and has no Replier (a raw
// exchange, whose replies are datagrams as they are), it stays open and
// is returned with outcome Answered and kept true; the caller sends the
// reply and Charges it. An exchange with a Replier is closed as by Close
// (kept false): its protocol answers once. The other outcomes are
// Close's.
func (t *Table) More(seq uint64, now time.Time) (ex Exchange, outcome Outcome, kept bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.lookup(seq); s != nil && s.state == open && now.Before(s.ex.Deadline) && s.ex.Replier == nil {
		return s.ex, Answered, true
	}
	ex, outcome = t.close(seq, now)
	return ex, outcome, false
}

// Charge adds a reply of n bytes, sent while the exchange seq stays open
// (see More), to its Sent and Replies. It does nothing if seq is not
// open any more.
func (t *Table) Charge(seq uint64, n int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s := t.lookup(seq); s != nil && s.state == open {
		s.ex.Sent += n
		s.ex.Replies++
	}
}

// close is Close. t.mu must be held.
func (t *Table) close(seq uint64, now time.Time) (Exchange, Outcome) {
	s := t.lookup(seq)
	if s == nil {
		return Exchange{}, Unknown
	}
	switch s.state {
	case answered:
		return Exchange{Port: s.ex.Port}, Duplicate
	case expired:
		return Exchange{Port: s.ex.Port}, Late
	}
	// open
	t.vacate(s)
	if !now.Before(s.ex.Deadline) {
		s.state = expired
		ex := s.ex
		s.ex.Conn, s.ex.Replier, s.ex.Session = nil, nil, nil
		return ex, Expired
	}
	s.state = answered
	ex := s.ex
	s.ex.Conn, s.ex.Replier, s.ex.Session = nil, nil, nil // do not keep them reachable from a closed slot
	return ex, Answered
}

// Pending returns the exchange seq if it is open: neither answered,
// expired nor released.
func (t *Table) Pending(seq uint64) (Exchange, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.lookup(seq)
	if s == nil || s.state != open {
		return Exchange{}, false
	}
	return s.ex, true
}

// Release forgets the open exchange seq without an answer, as when its
// request could not be published. It reports whether seq was open.
func (t *Table) Release(seq uint64) (Exchange, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.lookup(seq)
	if s == nil || s.state != open {
		return Exchange{}, false
	}
	ex := s.ex
	t.vacate(s)
	*s = slot{}
	return ex, true
}

// Expire marks every open exchange whose deadline is not after now as
// expired and calls fn, if not nil, for each, outside the table's lock. It
// returns how many expired. The table's owner calls it periodically; it
// walks the sequence numbers from the oldest exchange still open to the
// newest (at most the whole ring), in chunks so that Open and Close wait
// briefly.
func (t *Table) Expire(now time.Time, fn func(seq uint64, ex Exchange)) int {
	const chunk = 1024
	var batch []struct {
		seq uint64
		ex  Exchange
	}
	n := 0
	mask := uint64(len(t.slots) - 1)
	var seq uint64
	for {
		t.mu.Lock()
		if t.open == 0 {
			t.low = t.next + 1
			t.mu.Unlock()
			break
		}
		// A sequence number a whole ring older than the newest has had
		// its slot taken by a newer one, so it is not open.
		if oldest := t.next - mask; t.next > mask && t.low < oldest {
			t.low = oldest
		}
		seq = max(seq, t.low)
		end := min(seq+chunk, t.next+1)
		if seq >= end {
			t.mu.Unlock()
			break
		}
		for advance := seq == t.low; seq < end; seq++ {
			s := &t.slots[seq&mask]
			if s.seq != seq || s.state != open {
				if advance {
					t.low = seq + 1
				}
				continue
			}
			if now.Before(s.ex.Deadline) {
				advance = false
				continue
			}
			s.state = expired
			t.vacate(s)
			n++
			if advance {
				t.low = seq + 1
			}
			if fn != nil {
				batch = append(batch, struct {
					seq uint64
					ex  Exchange
				}{s.seq, s.ex})
			}
			s.ex.Conn, s.ex.Replier, s.ex.Session = nil, nil, nil
		}
		t.mu.Unlock()
		for _, e := range batch {
			fn(e.seq, e.ex)
		}
		batch = batch[:0]
	}
	return n
}

// lookup returns the slot holding seq, or nil. t.mu must be held.
func (t *Table) lookup(seq uint64) *slot {
	if seq == 0 || seq > t.next {
		return nil
	}
	s := &t.slots[seq&uint64(len(t.slots)-1)]
	if s.seq != seq || s.state == free {
		return nil
	}
	return s
}

// AppendID appends the correlation id of seq, BOOT-SEQ with SEQ in hex, to
// dst.
func (t *Table) AppendID(dst []byte, seq uint64) []byte {
	dst = append(dst, t.boot...)
	dst = append(dst, '-')
	return strconv.AppendUint(dst, seq, 16)
}

// ID returns the correlation id of seq.
func (t *Table) ID(seq uint64) string {
	return string(t.AppendID(make([]byte, 0, len(t.boot)+17), seq))
}

// ParseID returns the sequence number in id. It reports false when id is
// malformed or was made by another table (another process or node).
func (t *Table) ParseID(id string) (uint64, bool) {
	rest, ok := strings.CutPrefix(id, t.boot)
	if !ok || len(rest) < 2 || rest[0] != '-' || len(rest) > 17 {
		return 0, false
	}
	rest = rest[1:]
	for i := 0; i < len(rest); i++ {
		c := rest[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return 0, false
		}
	}
	seq, err := strconv.ParseUint(rest, 16, 64)
	if err != nil || seq == 0 {
		return 0, false
	}
	return seq, true
}

// Write sends b to the exchange's client through the socket that received
// the request, with the request's destination as the source address when
// SetSource is set; or through Session, when it is set. It is safe for
// concurrent use.
func (ex Exchange) Write(b []byte) error {
	if ex.Session != nil {
		return ex.Session.Write(b)
	}
	var oobbuf [oobSize]byte
	var oob []byte
	if ex.SetSource {
		oob = sourceOOB(oobbuf[:0], ex)
	}
	// On a dual-stack socket net maps an IPv4 client to ::ffff:a.b.c.d.
	if _, _, err := ex.Conn.WriteMsgUDPAddrPort(b, oob, ex.Remote); err != nil {
		if ex.TooBig != nil && errors.Is(err, syscall.EMSGSIZE) {
			ex.TooBig.Add(1)
		}
		return fmt.Errorf("write to %s: %w", ex.Remote, err)
	}
	return nil
}
