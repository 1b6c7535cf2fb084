package pcap

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/rpc"
	"github.com/udpgate/udpgate/schemas"
)

// Defaults for the zero values of Importer's fields.
const (
	DefaultNode        = "pcap"
	DefaultDeadline    = 5 * time.Second
	DefaultMaxInFlight = 4096
)

// Importer publishes the request datagrams of a capture into the capture
// stream. Set its fields, then call Import; an Importer imports one capture
// at a time.
type Importer struct {
	// NATS is the connection to publish on. Required.
	NATS *nats.Conn
	// Stream is the stream the requests must be stored in, a capture
	// stream of Prefix (subjects PREFIX.capture.>, stored as PREFIX.in.>):
	// a publish that JetStream acknowledges from another stream counts as
	// failed. Empty accepts any.
	Stream string
	// Prefix is the subject prefix (schemas.DefaultPrefix if empty).
	Prefix string
	// Node names the gateway the requests appear to come through: it is in
	// ce-source and the reply subject, PREFIX.reply.NODE.ID (DefaultNode if
	// empty). The default names no live gateway, so a reply to an imported
	// request reaches none.
	Node string
	// Listeners maps a destination port to its listener's protocol
	// (schemas.ProtocolRaw, ProtocolCoAP, ProtocolRPC). Datagrams to other
	// ports are skipped. Required.
	Listeners map[uint16]string
	// Deadline sets udpgate-deadline to the packet's time plus Deadline
	// (DefaultDeadline if zero), as the gateway would have.
	Deadline time.Duration
	// CoAP tunes the CoAP edge that decodes coap listeners' datagrams.
	CoAP coap.Config
	// MaxInFlight bounds the publishes awaiting JetStream's acknowledgement
	// (DefaultMaxInFlight if zero); reading waits for a free slot.
	MaxInFlight int
	// Log receives errors. Nil discards.
	Log *slog.Logger
}

// ImportStats counts what Import did with a capture's frames.
type ImportStats struct {
	Frames    uint64 // frames read
	Datagrams uint64 // UDP datagrams found (reassembled ones once)
	Requests  uint64 // requests published
	Published uint64 // acknowledged by JetStream and stored
	Failed    uint64 // refused or not acknowledged

	// Skipped frames, by reason (OK and Held are always zero).
	Skipped [numReasons]uint64
	// OtherPort counts datagrams to ports without a listener.
	OtherPort uint64
	// NotRequest counts datagrams the listener's protocol does not publish:
	// on coap listeners pings, ACKs, RSTs, responses, retransmissions,
	// Block1 blocks before the last and requests the gateway rejects itself
	// (CoAP has the details); on rpc listeners anything but a call.
	NotRequest uint64
	// IPv4 fragments: frames reassembled into datagrams, the datagrams,
	// and frames that made none (also in Skipped[Fragment], with IPv6
	// fragments).
	FragmentsReused, Reassembled, FragmentsDropped uint64
	// CoAP and RPC are the counters of the protocol edges that decoded the
	// coap and rpc listeners' datagrams, summed over listeners.
	CoAP coap.Stats
	RPC  rpc.Stats
}

// SkippedTotal returns the number of frames and datagrams skipped for any
// reason.
func (s ImportStats) SkippedTotal() uint64 {
	var n uint64
	for _, v := range s.Skipped {
		n += v
	}
	return n + s.OtherPort + s.NotRequest
}

// listenerState is one listener's protocol edge during an import.
type listenerState struct {
	protocol string
	source   string
	coap     *coap.Edge
	rpc      *rpc.Edge
}

// Import reads a pcap or pcapng capture from r and publishes its requests.
// It returns when every publish is acknowledged or has failed, or when ctx
// is cancelled. The error reports a capture that cannot be read or a
// misconfiguration; per-datagram outcomes are in the stats.
func (im *Importer) Import(ctx context.Context, r io.Reader) (ImportStats, error) {
	var st ImportStats
	if im.NATS == nil || len(im.Listeners) == 0 {
		return st, errors.New("pcap: import: NATS and Listeners are required")
	}
	prefix := cmp.Or(im.Prefix, schemas.DefaultPrefix)
	node := cmp.Or(im.Node, DefaultNode)
	deadline := im.Deadline
	if deadline <= 0 {
		deadline = DefaultDeadline
	}
	inflight := im.MaxInFlight
	if inflight <= 0 {
		inflight = DefaultMaxInFlight
	}
	log := im.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rd, err := NewReader(r)
	if err != nil {
		return st, err
	}

	// The CoAP edge answers some datagrams itself (pings, rejected
	// requests, Block1 continuations). Its socket is a closed one: every
	// answer fails with net.ErrClosed and is counted in SendErrors, nothing
	// reaches the network, and the edge decodes exactly as the gateway's.
	closed, err := closedSocket()
	if err != nil {
		return st, err
	}
	listeners := make(map[uint16]*listenerState, len(im.Listeners))
	for port, proto := range im.Listeners {
		l := &listenerState{protocol: proto, source: schemas.Source(node, schemas.Listener(port, proto))}
		switch proto {
		case schemas.ProtocolRaw:
		case schemas.ProtocolCoAP:
			l.coap = &coap.Edge{Config: im.CoAP, Socket: exchange.Exchange{Conn: closed, Port: port}, Log: log}
			l.coap.Start()
			defer l.coap.Close()
		case schemas.ProtocolRPC:
			l.rpc = &rpc.Edge{Socket: exchange.Exchange{Conn: closed, Port: port}, Log: log}
		default:
			return st, fmt.Errorf("pcap: import: port %d: protocol %q is not raw, coap or rpc", port, proto)
		}
		listeners[port] = l
	}

	var published, failed atomic.Uint64
	var errOnce sync.Once
	var firstErr error
	fail := func(err error) {
		failed.Add(1)
		errOnce.Do(func() { firstErr = err })
	}
	js, err := jetstream.New(im.NATS,
		jetstream.WithPublishAsyncMaxPending(inflight),
		jetstream.WithPublishAsyncTimeout(30*time.Second),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, _ *nats.Msg, ack *jetstream.PubAck) {
			switch {
			case im.Stream != "" && ack.Stream != im.Stream:
				fail(fmt.Errorf("stored in stream %s, not %s", ack.Stream, im.Stream))
			default:
				published.Add(1)
			}
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) { fail(err) }),
	)
	if err != nil {
		return st, fmt.Errorf("pcap: import: jetstream: %w", err)
	}

	var b [6]byte
	rand.Read(b[:])
	boot := hex.EncodeToString(b[:]) // names this import in ce-id: BOOT-FRAME
	reply := schemas.ReplySubject(prefix, node)
	var dec Decoder
	var d Datagram
	var readErr error
	for frame := uint64(1); ; frame++ {
		if frame%1024 == 0 && ctx.Err() != nil {
			readErr = ctx.Err()
			break
		}
		data, ci, link, err := rd.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				readErr = fmt.Errorf("pcap: import: frame %d: %w", frame, err)
			}
			break
		}
		st.Frames++
		switch reason := dec.Decode(link, ci.Timestamp, data, &d); reason {
		case OK:
		case Held:
			continue
		default:
			st.Skipped[reason]++
			continue
		}
		st.Datagrams++
		l := listeners[d.Dst.Port()]
		if l == nil {
			st.OtherPort++
			continue
		}
		remote := netip.AddrPortFrom(d.Src.Addr().Unmap(), d.Src.Port())
		local := netip.AddrPortFrom(d.Dst.Addr().Unmap(), d.Dst.Port())
		id := boot + "-" + strconv.FormatUint(frame, 16)
		r := ingress.Request{
			Prefix: prefix, Port: local.Port(), Source: l.source, Reply: reply, ID: id,
			Remote: remote, Local: local, Received: d.Time, KeepTime: true, Deadline: d.Time.Add(deadline),
		}
		switch {
		case l.coap != nil:
			if r.CoAP = l.coap.Receive(d.Payload, remote, local, 0, d.Time); r.CoAP == nil {
				st.NotRequest++
				continue
			}
			r.Body = r.CoAP.Payload
		case l.rpc != nil:
			if r.RPC = l.rpc.Receive(d.Payload, remote, local, 0); r.RPC == nil {
				st.NotRequest++
				continue
			}
			r.Body = r.RPC.Params
		default:
			r.Body = append([]byte(nil), d.Payload...)
		}
		// The capture copy only: an imported request is for the capture
		// (replay, export, durable groups), never for direct groups.
		msg, capture := ingress.Message(r)
		msg.Subject, msg.Reply = capture, ""
		st.Requests++
		if _, err := js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Minute)); err != nil {
			fail(err)
		}
	}
	dec.Flush()
	st.Skipped[Fragment] += dec.Dropped
	st.FragmentsReused, st.Reassembled, st.FragmentsDropped = dec.Reused, dec.Reassembled, dec.Dropped

	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		if readErr == nil {
			readErr = ctx.Err()
		}
	}
	st.Published, st.Failed = published.Load(), failed.Load()
	for _, l := range listeners {
		if l.coap != nil {
			st.CoAP = addCoAP(st.CoAP, l.coap.Stats())
		}
		if l.rpc != nil {
			r := l.rpc.Stats()
			st.RPC.Calls += r.Calls
			st.RPC.Malformed += r.Malformed
		}
	}
	if firstErr != nil {
		log.Warn("pcap: import: publishes failed", "count", st.Failed, "first", firstErr)
	}
	return st, readErr
}

// closedSocket returns a UDP socket that is already closed: writes to it
// fail with net.ErrClosed.
func closedSocket() (*net.UDPConn, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, fmt.Errorf("pcap: import: socket for the CoAP edge: %w", err)
	}
	c.Close()
	return c, nil
}

func addCoAP(a, b coap.Stats) coap.Stats {
	a.Requests += b.Requests
	a.Duplicates += b.Duplicates
	a.Pings += b.Pings
	a.Malformed += b.Malformed
	a.BadOption += b.BadOption
	a.Rejected += b.Rejected
	a.BlockContinue += b.BlockContinue
	a.Evicted += b.Evicted
	return a
}
