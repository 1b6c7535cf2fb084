package replay

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
)

// Comparison is the outcome of Compare. Identical, Different, Missing and
// Unanswered add up to the requests compared; Unrecorded counts those not
// compared.
type Comparison struct {
	Identical  int // the candidate's reply equals the recorded one
	Different  int // it differs, or the candidate answered a request that had no recorded reply
	Missing    int // a reply was recorded, the candidate sent none
	Unanswered int // neither: no reply recorded (an observer, a timeout) and none from the candidate
	// Unrecorded counts messages whose replies are never recorded, so
	// that the candidate's, if any, is not compared: those captured
	// without udpgate-reply, a ws listener's connection events ($connect
	// is answered on the gateway's inbox, $disconnect not at all).
	Unrecorded int
	// Diffs are the first differences and missing replies, in replay
	// order, at most the limit given to Compare.
	Diffs []Difference
}

// OK reports whether nothing differs and nothing is missing.
func (c Comparison) OK() bool { return c.Different == 0 && c.Missing == 0 }

// Difference is one request whose replies differ.
type Difference struct {
	Request   Request // Request.Reply is the candidate's
	Recorded  *Reply  // nil if none was recorded
	Candidate *Reply  // nil if the candidate sent none
}

// Compare joins each replayed request of res (a Publish result with
// Target.Keep) with its reply recorded in the replies stream (the reply
// whose subject's last token is the captured request's ce-id), and
// compares them: the status, the body, and for CoAP the code and
// Content-Format, for RPC (rpc and ws listeners) the status and error. It
// reads the stream with an ordered consumer from the capture time of the
// first request on, and keeps at most maxDiffs differences. Requests
// marked Unrecorded are counted, not compared.
func Compare(ctx context.Context, js jetstream.JetStream, repliesStream string, res Result, maxDiffs int) (Comparison, error) {
	var cmp Comparison
	if repliesStream == "" {
		repliesStream = schemas.StreamReplies
	}
	recorded, err := recordedReplies(ctx, js, repliesStream, res)
	if err != nil {
		return cmp, err
	}
	for _, req := range res.Requests {
		if req.Unrecorded {
			cmp.Unrecorded++
			continue
		}
		rec := recorded[req.ID]
		var diff bool
		switch {
		case rec == nil && req.Reply == nil:
			cmp.Unanswered++
			continue
		case rec != nil && req.Reply == nil:
			cmp.Missing++
			diff = true
		case rec == nil || len(fieldDiffs(req.Protocol, rec, req.Reply)) > 0:
			cmp.Different++
			diff = true
		default:
			cmp.Identical++
		}
		if diff && len(cmp.Diffs) < maxDiffs {
			cmp.Diffs = append(cmp.Diffs, Difference{Request: req, Recorded: rec, Candidate: req.Reply})
		}
	}
	return cmp, nil
}

// recordedReplies reads the replies to res's requests from the replies
// stream, the first one of each (the one the gateway sent), from a little
// before the first request was captured (see repliesSince).
func recordedReplies(ctx context.Context, js jetstream.JetStream, stream string, res Result) (map[string]*Reply, error) {
	want := make(map[string]bool, len(res.Requests))
	for _, r := range res.Requests {
		if !r.Unrecorded {
			want[r.ID] = true
		}
	}
	got := make(map[string]*Reply, len(want))
	if len(want) == 0 {
		return got, nil
	}
	since := res.repliesSince
	if since.IsZero() {
		since = res.First
	}
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy:     jetstream.DeliverByStartTimePolicy,
		OptStartTime:      &since,
		InactiveThreshold: 30 * time.Second,
	})
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("replay: replies stream %s not found (is UDPGATE_REPLIES_STREAM off?): %w", stream, err)
	}
	if err != nil {
		return nil, fmt.Errorf("replay: read stream %s: %w", stream, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("replay: read stream %s: %w", stream, err)
	}
	if info.NumPending == 0 {
		return got, nil
	}
	it, err := cons.Messages()
	if err != nil {
		return nil, fmt.Errorf("replay: read stream %s: %w", stream, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for range info.NumPending {
		msg, err := it.Next(jetstream.NextMaxWait(idleWait))
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, nats.ErrTimeout) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("replay: read stream %s: %w", stream, err)
		}
		id, _ := schemas.ReplyID(msg.Subject())
		if want[id] && got[id] == nil {
			got[id] = &Reply{Header: msg.Headers(), Body: msg.Data()}
			if len(got) == len(want) {
				break
			}
		}
	}
	return got, nil
}

// field is one compared part of a reply, as text for people.
type field struct{ name, recorded, candidate string }

// fieldDiffs returns the header fields of a and b that differ, the body
// excluded (it is compared by bodyDiff).
func fieldDiffs(protocol string, a, b *Reply) []field {
	var out []field
	add := func(name, x, y string) {
		if x != y {
			out = append(out, field{name, x, y})
		}
	}
	add("status", a.Status(), b.Status())
	switch protocol {
	case schemas.ProtocolCoAP:
		add("code", coapCode(a), coapCode(b))
		add("content-format", orNone(a.Header.Get(schemas.HeaderCoAPContentFormat)), orNone(b.Header.Get(schemas.HeaderCoAPContentFormat)))
	case schemas.ProtocolRPC, schemas.ProtocolWS: // a ws listener's calls are RPC calls
		add("rpc status", orZero(a.Header.Get(schemas.HeaderRPCStatus)), orZero(b.Header.Get(schemas.HeaderRPCStatus)))
		add("rpc error", strconv.Quote(a.Header.Get(schemas.HeaderRPCError)), strconv.Quote(b.Header.Get(schemas.HeaderRPCError)))
	}
	if !bytes.Equal(a.Body, b.Body) {
		out = append(out, field{name: "body"})
	}
	return out
}

func coapCode(r *Reply) string {
	if c := r.Header.Get(schemas.HeaderCoAPCode); c != "" {
		return c
	}
	return schemas.CoAPDefaultCode
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func orZero(s string) string {
	if s == "" {
		return "0"
	}
	return s
}

// String describes the difference for people: a title line, then one
// indented line per differing field; bodies as text when they are
// printable UTF-8, and as hex around the first differing byte.
func (d Difference) String() string {
	var b strings.Builder
	r := d.Request
	fmt.Fprintf(&b, "%s (%s, seq %d, ce-id %s)\n", r.Subject, r.Protocol, r.Seq, r.ID)
	switch {
	case d.Candidate == nil:
		fmt.Fprintf(&b, "  missing: the candidate did not answer; recorded %s\n", summary(r.Protocol, d.Recorded))
		return b.String()
	case d.Recorded == nil:
		fmt.Fprintf(&b, "  unexpected: no reply was recorded; the candidate answered %s\n", summary(r.Protocol, d.Candidate))
		return b.String()
	}
	for _, f := range fieldDiffs(r.Protocol, d.Recorded, d.Candidate) {
		if f.name != "body" {
			fmt.Fprintf(&b, "  %s: recorded %s, candidate %s\n", f.name, f.recorded, f.candidate)
			continue
		}
		name := "body"
		if r.Protocol == schemas.ProtocolCoAP {
			name = "payload"
		}
		writeBodyDiff(&b, name, d.Recorded.Body, d.Candidate.Body)
	}
	return b.String()
}

// summary describes one reply in a line.
func summary(protocol string, r *Reply) string {
	s := "status " + r.Status()
	if protocol == schemas.ProtocolCoAP {
		s += ", code " + coapCode(r)
	}
	if protocol == schemas.ProtocolRPC || protocol == schemas.ProtocolWS {
		s += ", rpc status " + orZero(r.Header.Get(schemas.HeaderRPCStatus))
	}
	return s + ", " + strconv.Itoa(len(r.Body)) + " bytes " + preview(r.Body)
}

func preview(b []byte) string {
	const n = 32
	if printable(b) {
		if len(b) > n*2 {
			return strconv.Quote(string(b[:n*2])) + "..."
		}
		return strconv.Quote(string(b))
	}
	if len(b) > n {
		return hex.EncodeToString(b[:n]) + "..."
	}
	return hex.EncodeToString(b)
}

// writeBodyDiff writes both bodies: as text if both are printable, and
// always as hex, from a little before the first differing offset.
func writeBodyDiff(b *strings.Builder, name string, rec, cand []byte) {
	off := 0
	for off < len(rec) && off < len(cand) && rec[off] == cand[off] {
		off++
	}
	fmt.Fprintf(b, "  %s differs at byte %d (recorded %d bytes, candidate %d bytes)\n", name, off, len(rec), len(cand))
	if printable(rec) && printable(cand) && len(rec) <= 256 && len(cand) <= 256 {
		fmt.Fprintf(b, "    recorded  %q\n    candidate %q\n", rec, cand)
	}
	const before, width = 8, 32
	from := max(off-before, 0)
	fmt.Fprintf(b, "    hex from byte %d:\n    recorded  %s\n    candidate %s\n", from, hexWindow(rec, from, width), hexWindow(cand, from, width))
}

func hexWindow(p []byte, from, width int) string {
	if from >= len(p) {
		return "(end)"
	}
	end := min(from+width, len(p))
	s := hex.EncodeToString(p[from:end])
	if end < len(p) {
		s += "..."
	}
	return s
}

func printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if !unicode.IsPrint(r) && r != '\n' && r != '\t' && r != '\r' {
			return false
		}
	}
	return true
}
