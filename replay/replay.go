// Package replay sends captured requests again: from the capture stream
// (schemas.StreamIn) to a subject prefix that candidate worker groups serve,
// direct or durable, or onto the wire to a UDP address, datagram by
// datagram, at the recorded pace or faster. Compare joins a candidate
// group's replies with the replies recorded in schemas.StreamReplies.
//
// Replay only reads the capture, with an ordered consumer: ephemeral,
// without acknowledgements, invisible to the worker groups' durable
// consumers. Nothing it publishes reaches PREFIX.in.>, PREFIX.capture.> or
// PREFIX.reply.>.
//
// The results are values; the package prints nothing except a progress bar
// to the writer it is given.
package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
)

// HeaderReplayOf is schemas.HeaderReplayOf, kept here for callers of this
// package.
const HeaderReplayOf = schemas.HeaderReplayOf

// Speed is how fast requests are sent again, as a factor of the recorded
// pace: Original (1) keeps the recorded gaps, 2 halves them, Max (0) sends
// without waiting.
type Speed float64

// Speeds with names.
const (
	Max      Speed = 0
	Original Speed = 1
)

func (s Speed) String() string {
	switch s {
	case Max:
		return "max"
	case Original:
		return "original"
	}
	return strconv.FormatFloat(float64(s), 'g', -1, 64) + "x"
}

// Replayer selects captured requests and sends them again. Set its fields,
// then call Wire or Publish; a Replayer may be used for several replays,
// one at a time.
type Replayer struct {
	// JetStream reads the capture and, for Publish, publishes the
	// replayed requests; replies are received on its connection. Required.
	JetStream jetstream.JetStream
	// Stream is the capture stream; schemas.StreamIn if empty.
	Stream string
	// Prefix is the capture's subject prefix; schemas.DefaultPrefix if
	// empty.
	Prefix string

	// Since and Until bound the window, by the time JetStream stored each
	// request. A zero Since starts at the capture's first request; a zero
	// Until means the moment the replay starts (requests captured during
	// a replay are never part of it).
	Since, Until time.Time
	// Ports keeps only requests received on these ports; none keeps all.
	Ports []uint16
	// Subjects keeps only requests whose subject matches one of these
	// filters (NATS wildcards allowed, e.g. "udpgate.in.5683.GET.>").
	// With Ports too, a request must match both.
	Subjects []string

	// Speed paces the sending: the gap between two requests is their
	// recorded gap divided by Speed; Max does not wait. A request's time is
	// when the capture stored it, or its ce-time if it has one (an
	// imported request: the packet's time).
	Speed Speed
	// Wait is how long to wait for answers after the last send (or until
	// every request sent is answered).
	Wait time.Duration
	// Progress, if not nil, receives a progress bar, redrawn in place
	// with carriage returns, and a final newline.
	Progress io.Writer
}

// Result is what a replay did. Sent counts requests handed to the
// network or to NATS; Answered those that got an answer.
type Result struct {
	Selected int // requests in the window that match the filters
	Sent     int
	Skipped  int // Wire: no datagram to send (a CoAP Block1 upload; a ws listener's calls and events)
	Errors   int // could not be sent
	Answered int // Publish: requests replied to; Wire: datagrams received from the target
	// Uncaptured counts requests of Publish sent to direct candidates
	// whose copy the replay stream did not store: durable candidates
	// never see them.
	Uncaptured int
	// NoResponders counts requests of Publish that no direct candidate
	// received (NATS said so). Durable candidates may still answer them.
	NoResponders int
	// Duration is the time from the start to the last send, without Wait.
	Duration time.Duration
	// First and Last are the capture times (stream timestamps) of the
	// first and last request selected; zero if none.
	First, Last time.Time
	// Requests are the requests sent, in order, with the candidate's reply
	// if one came; only Publish fills it (Target.Keep), for Compare.
	Requests []Request

	// repliesSince is the earliest time a reply to the first request can
	// have been recorded, where Compare starts reading.
	repliesSince time.Time
}

// Request is one replayed request.
type Request struct {
	Seq      uint64 // sequence in the capture stream
	Subject  string // captured subject
	ID       string // captured ce-id, which names its recorded reply
	Protocol string // its listener's: schemas.ProtocolRaw, ProtocolCoAP, ProtocolRPC or ProtocolWS
	Reply    *Reply // the candidate's reply; nil if none came
	// Unrecorded reports a message captured without udpgate-reply (a ws
	// listener's connection event): no reply to it was recorded, and
	// Compare leaves it out.
	Unrecorded bool
}

// Reply is a worker's reply message: its status, headers and body.
type Reply struct {
	Header nats.Header
	Body   []byte
}

// Status returns the reply's udpgate-status, schemas.StatusOK if absent.
func (r *Reply) Status() string {
	if s := r.Header.Get(schemas.HeaderStatus); s != "" {
		return s
	}
	return schemas.StatusOK
}

// captured is one selected request.
type captured struct {
	msg      jetstream.Msg
	seq      uint64
	stored   time.Time // stream timestamp
	at       time.Time // ce-time, or stored
	protocol string
}

// selectRequests reads the window with an ordered consumer and calls send
// for each request that matches, paced by Speed. It stops at the end of the
// window, at the last request stored when it started, or when ctx ends.
func (r *Replayer) selectRequests(ctx context.Context, res *Result, send func(c captured)) error {
	if r.JetStream == nil {
		return errors.New("replay: Replayer.JetStream is nil")
	}
	stream := r.Stream
	if stream == "" {
		stream = schemas.StreamIn
	}
	prefix := r.Prefix
	if prefix == "" {
		prefix = schemas.DefaultPrefix
	}
	start := time.Now()
	until := r.Until
	if until.IsZero() {
		until = start
	}
	cfg := jetstream.OrderedConsumerConfig{
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		FilterSubjects:    r.filters(prefix),
		InactiveThreshold: 30 * time.Second,
	}
	if !r.Since.IsZero() {
		since := r.Since
		cfg.DeliverPolicy = jetstream.DeliverByStartTimePolicy
		cfg.OptStartTime = &since
	}
	cons, err := r.JetStream.OrderedConsumer(ctx, stream, cfg)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("replay: capture stream %s not found: %w", stream, err)
	}
	if err != nil {
		return fmt.Errorf("replay: read stream %s: %w", stream, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return fmt.Errorf("replay: read stream %s: %w", stream, err)
	}
	// The requests stored now are the most this replay reads: the loop
	// below is bounded by them, and new traffic is never part of it.
	pending := info.NumPending
	bar := newProgress(r.Progress, int(pending))
	defer bar.done()
	if pending == 0 {
		return nil
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("replay: read stream %s: %w", stream, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()

	var p pacer
	p.speed = r.Speed
	for range pending {
		// A request can age out of the stream while the replay runs; the
		// stream then has fewer messages than counted, and Next waits
		// for traffic that is not part of the window.
		msg, err := it.Next(jetstream.NextMaxWait(idleWait))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, nats.ErrTimeout) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("replay: read stream %s: %w", stream, err)
		}
		meta, err := msg.Metadata()
		if err != nil {
			return fmt.Errorf("replay: read stream %s: %w", stream, err)
		}
		if meta.Timestamp.After(until) {
			return nil
		}
		if !r.matches(prefix, msg.Subject()) {
			continue
		}
		c := captured{msg: msg, seq: meta.Sequence.Stream, stored: meta.Timestamp, at: meta.Timestamp, protocol: protocolOf(msg.Headers())}
		if t, err := time.Parse(time.RFC3339Nano, msg.Headers().Get(schemas.HeaderTime)); err == nil {
			c.at = t
		}
		if res.Selected == 0 {
			res.First = c.stored
			res.repliesSince = repliesSince(c)
		}
		res.Selected++
		res.Last = c.stored
		if err := p.wait(ctx, c.at); err != nil {
			return err
		}
		send(c)
		bar.update(res.Sent, res.Errors)
	}
	return nil
}

// repliesSince returns the earliest time a reply to c can have been
// recorded: its ce-time if it has one; else a little before the capture
// stored it, since a direct worker answers the request as the gateway
// publishes it, before the capture copy is stored. The gateway waits for
// that copy no longer than the request's deadline window, so the copy is
// stored at most that long after the read: the margin is the window left
// when it was stored (the deadline minus the stored time), at least a
// second.
func repliesSince(c captured) time.Time {
	h := c.msg.Headers()
	if t, err := time.Parse(time.RFC3339Nano, h.Get(schemas.HeaderTime)); err == nil && t.Before(c.stored) {
		return t
	}
	margin := time.Second
	if ms, err := strconv.ParseInt(h.Get(schemas.HeaderDeadline), 10, 64); err == nil {
		margin = max(margin, min(time.UnixMilli(ms).Sub(c.stored), time.Minute))
	}
	return c.stored.Add(-margin)
}

// idleWait is how long a replay waits for the next stored request before
// it takes the window as read.
const idleWait = 5 * time.Second

// filters returns the consumer's filter subjects: the Subjects if set (the
// server does the work), else the ports' subjects.
func (r *Replayer) filters(prefix string) []string {
	if len(r.Subjects) > 0 {
		return r.Subjects
	}
	var f []string
	for _, p := range r.Ports {
		s := schemas.InSubject(prefix, p)
		f = append(f, s, s+".>") // raw; coap and rpc add tokens
	}
	return f
}

// matches applies the filters the consumer cannot combine: a request must
// match one of the Ports and one of the Subjects.
func (r *Replayer) matches(prefix, subject string) bool {
	if len(r.Ports) > 0 && len(r.Subjects) > 0 {
		port, ok := portOf(prefix, subject)
		if !ok || !containsPort(r.Ports, port) {
			return false
		}
	}
	return true
}

func containsPort(ports []uint16, p uint16) bool {
	for _, q := range ports {
		if q == p {
			return true
		}
	}
	return false
}

// portOf returns the port token of a request subject PREFIX.in.PORT....
func portOf(prefix, subject string) (uint16, bool) {
	rest, ok := strings.CutPrefix(subject, prefix+".in.")
	if !ok {
		return 0, false
	}
	tok, _, _ := strings.Cut(rest, ".")
	p, err := strconv.ParseUint(tok, 10, 16)
	return uint16(p), err == nil
}

// protocolOf tells a request's protocol by its ce-source, or else by its
// ce-type; raw if neither says.
func protocolOf(h nats.Header) string {
	if _, _, proto, ok := schemas.ParseSource(h.Get(schemas.HeaderSource)); ok {
		return proto
	}
	switch h.Get(schemas.HeaderType) {
	case schemas.TypeCoAP:
		return schemas.ProtocolCoAP
	case schemas.TypeRPC:
		return schemas.ProtocolRPC
	}
	return schemas.ProtocolRaw
}

// pacer spaces sends by the recorded gaps divided by speed. It keeps an
// absolute schedule (first send + recorded offset), so that waiting errors
// do not add up over a long replay.
type pacer struct {
	speed  Speed
	start  time.Time // wall time of the first send
	origin time.Time // capture time of the first request
	timer  *time.Timer
}

func (p *pacer) wait(ctx context.Context, at time.Time) error {
	if p.start.IsZero() {
		p.start, p.origin = time.Now(), at
		return ctx.Err()
	}
	if p.speed <= 0 {
		return ctx.Err()
	}
	offset := time.Duration(float64(at.Sub(p.origin)) / float64(p.speed))
	d := time.Until(p.start.Add(offset))
	if d <= 0 {
		return ctx.Err() // recorded out of order, or we are behind
	}
	if p.timer == nil {
		p.timer = time.NewTimer(d)
	} else {
		p.timer.Reset(d)
	}
	select {
	case <-p.timer.C:
		return nil
	case <-ctx.Done():
		p.timer.Stop()
		return ctx.Err()
	}
}
