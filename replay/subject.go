package replay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
)

// DefaultTarget returns the default subject prefix of a replay of a
// capture with subject prefix prefix: PREFIX.replay. Its requests go to
// PREFIX.replay.in.>, which no stream or group on PREFIX.in.> sees.
func DefaultTarget(prefix string) string {
	return prefix + ".replay"
}

// StreamName returns the default replay stream of a subject prefix: the
// prefix in upper case with dots as underscores, so udpgate.replay has
// UDPGATE_REPLAY and udpgate.shadow UDPGATE_SHADOW.
func StreamName(subjectPrefix string) string {
	return strings.ToUpper(strings.ReplaceAll(subjectPrefix, ".", "_"))
}

// Stream limits of a replay stream that EnsureStream creates: it holds a
// replay's requests only until a candidate group has taken them.
const (
	StreamMaxAge   = time.Hour
	StreamMaxBytes = 256 << 20
)

// EnsureStream makes sure the stream name exists for requests replayed to
// subjectPrefix (subjects subjectPrefix.in.>) and returns what it did. A
// missing stream is created: limits retention, file storage, StreamMaxAge
// and StreamMaxBytes, discarding old messages. An existing stream is used
// as it is, and must cover subjectPrefix.in.>. Candidate worker groups are
// workers.Servers with Stream set to name; they bind with deliver policy
// new, so they must be running before a replay starts.
func EnsureStream(ctx context.Context, js jetstream.JetStream, name, subjectPrefix string) (string, error) {
	subject := schemas.InWildcard(subjectPrefix)
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:        name,
			Description: "udpgate replay: requests sent again to a candidate worker group",
			Subjects:    []string{subject},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			MaxAge:      StreamMaxAge,
			MaxBytes:    StreamMaxBytes,
			Discard:     jetstream.DiscardOld,
		})
		if err != nil {
			return "", fmt.Errorf("replay: create stream %s on %s: %w", name, subject, err)
		}
		return "created stream " + name + " on " + subject, nil
	}
	if err != nil {
		return "", fmt.Errorf("replay: look up stream %s: %w", name, err)
	}
	for _, have := range s.CachedInfo().Config.Subjects {
		if covers(have, subject) {
			return "using stream " + name + " on " + subject, nil
		}
	}
	return "", fmt.Errorf("replay: stream %s exists but its subjects %q do not cover %s: choose another stream or subject prefix",
		name, s.CachedInfo().Config.Subjects, subject)
}

// Target is where Publish sends requests.
type Target struct {
	// Prefix replaces the capture's prefix in each request's subject:
	// udpgate.in.9000 becomes PREFIX.in.9000. Replies come back on
	// PREFIX.reply.RANDOM. Required; it must not be the capture's prefix
	// or inside its subjects.
	Prefix string
	// Stream is the replay stream, which must cover PREFIX.in.>;
	// StreamName(Prefix) if empty. EnsureStream creates it.
	Stream string
	// Deadline is how far ahead of its publication a replayed request's
	// udpgate-deadline is set; if zero, one minute plus the Replayer's Wait.
	Deadline time.Duration
	// Keep keeps each request and its reply in Result.Requests, for
	// Compare.
	Keep bool
}

// Publish publishes the selected requests to t.Prefix with JetStream, into
// the replay stream, paced by r.Speed, and collects the replies until r.Wait
// after the last send, or until every request sent is answered.
//
// Each request keeps its captured headers and body, except: a fresh
// udpgate-id and ce-id; HeaderReplayOf with the captured udpgate-id;
// udpgate-reply set to the replay's own core NATS subject
// PREFIX.reply.RANDOM; udpgate-deadline set t.Deadline ahead; and no
// Nats-* headers (a Nats-Msg-Id would make JetStream drop a request
// replayed twice within its duplicate window).
func (r *Replayer) Publish(ctx context.Context, t Target) (Result, error) {
	var res Result
	if r.JetStream == nil {
		return res, errors.New("replay: Replayer.JetStream is nil")
	}
	prefix := r.Prefix
	if prefix == "" {
		prefix = schemas.DefaultPrefix
	}
	if err := checkTarget(prefix, t.Prefix); err != nil {
		return res, err
	}
	stream := t.Stream
	if stream == "" {
		stream = StreamName(t.Prefix)
	}
	if _, err := r.JetStream.Stream(ctx, stream); err != nil {
		return res, fmt.Errorf("replay: replay stream %s: %w", stream, err)
	}
	ahead := t.Deadline
	if ahead <= 0 {
		ahead = time.Minute + r.Wait
	}

	run := make([]byte, 6)
	rand.Read(run)
	runID := "replay-" + hex.EncodeToString(run)
	replySubject := t.Prefix + ".reply." + runID

	c := &collector{keep: t.Keep, notify: make(chan struct{}, 1), index: map[string]int{}}
	nc := r.JetStream.Conn()
	sub, err := nc.Subscribe(replySubject, c.receive)
	if err != nil {
		return res, fmt.Errorf("replay: subscribe %s: %w", replySubject, err)
	}
	defer sub.Unsubscribe()
	// The subscription must reach the server before the first request
	// can be answered.
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = nc.FlushWithContext(fctx)
	cancel()
	if err != nil {
		return res, fmt.Errorf("replay: subscribe %s: %w", replySubject, err)
	}

	start := time.Now()
	n := 0
	err = r.selectRequests(ctx, &res, func(cr captured) {
		rest, ok := strings.CutPrefix(cr.msg.Subject(), prefix+".")
		if !ok {
			res.Errors++ // not under the capture's prefix: nowhere to send it
			return
		}
		n++
		id := runID + "-" + strconv.Itoa(n)
		h := nats.Header{}
		for k, v := range cr.msg.Headers() {
			if strings.HasPrefix(strings.ToLower(k), "nats-") {
				continue
			}
			h[k] = v
		}
		orig := h.Get(schemas.HeaderID)
		h.Set(schemas.HeaderID, id)
		h.Set(schemas.HeaderCEID, id)
		h.Set(HeaderReplayOf, orig)
		h.Set(schemas.HeaderReply, replySubject)
		h.Set(schemas.HeaderDeadline, strconv.FormatInt(time.Now().Add(ahead).UnixMilli(), 10))

		c.add(id, Request{Seq: cr.seq, Subject: cr.msg.Subject(), ID: orig, Protocol: cr.protocol})
		if _, err := r.JetStream.PublishMsg(ctx, &nats.Msg{Subject: t.Prefix + "." + rest, Header: h, Data: cr.msg.Data()}); err != nil {
			c.remove(id)
			res.Errors++
			return
		}
		res.Sent++
	})
	res.Duration = time.Since(start)
	if err == nil {
		waitFor(ctx, r.Wait, func() bool { return c.answeredCount() >= res.Sent }, c.notify)
	}
	sub.Unsubscribe()
	res.Answered, res.Requests = c.result()
	return res, err
}

// collector gathers the replies to a replay.
type collector struct {
	keep   bool          // keep the replies' headers and bodies, for Compare
	notify chan struct{} // receives a value, without blocking, after each first reply

	mu       sync.Mutex // guards the fields below
	index    map[string]int
	requests []Request
	answered int
}

func (c *collector) add(id string, r Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.index[id] = len(c.requests)
	c.requests = append(c.requests, r)
}

// remove forgets the last request added, which could not be published.
func (c *collector) remove(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i, ok := c.index[id]; ok && i == len(c.requests)-1 {
		delete(c.index, id)
		c.requests = c.requests[:i]
	}
}

// receive takes a reply; only the first reply to a request counts, as at
// the gateway.
func (c *collector) receive(m *nats.Msg) {
	c.mu.Lock()
	i, ok := c.index[m.Header.Get(schemas.HeaderID)]
	if ok && c.requests[i].Reply == nil {
		c.requests[i].Reply = &Reply{}
		if c.keep {
			c.requests[i].Reply = &Reply{Header: m.Header, Body: m.Data}
		}
		c.answered++
	}
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *collector) answeredCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.answered
}

func (c *collector) result() (int, []Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.keep {
		return c.answered, nil
	}
	return c.answered, append([]Request(nil), c.requests...)
}

// checkTarget refuses a subject prefix whose requests or replies the
// capture's streams or worker groups would see.
func checkTarget(prefix, target string) error {
	if !validPrefix(target) {
		return fmt.Errorf("replay: %q is not a subject prefix (tokens of letters, digits, - and _ separated by dots)", target)
	}
	for _, ours := range []string{schemas.InWildcard(target), schemas.ReplyWildcard(target)} {
		for _, theirs := range []string{schemas.InWildcard(prefix), schemas.ReplyWildcard(prefix)} {
			if overlap(ours, theirs) {
				return fmt.Errorf("replay: subject prefix %s would publish to %s, which production uses: choose another, e.g. %s",
					target, theirs, DefaultTarget(prefix))
			}
		}
	}
	return nil
}

func validPrefix(p string) bool {
	if p == "" {
		return false
	}
	for _, tok := range strings.Split(p, ".") {
		if tok == "" {
			return false
		}
		for i := 0; i < len(tok); i++ {
			c := tok[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// overlap reports whether the subject patterns a and b match a common
// subject.
func overlap(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; ; i++ {
		switch {
		case i == len(at) && i == len(bt):
			return true
		case i == len(at) || i == len(bt):
			return false
		case at[i] == ">" || bt[i] == ">":
			return true
		case at[i] == "*" || bt[i] == "*" || at[i] == bt[i]:
			continue
		default:
			return false
		}
	}
}

// covers reports whether the pattern p matches every subject that the
// pattern q matches.
func covers(p, q string) bool {
	pt, qt := strings.Split(p, "."), strings.Split(q, ".")
	for i, t := range pt {
		if t == ">" {
			return i < len(qt)
		}
		if i >= len(qt) {
			return false
		}
		if t != "*" && t != qt[i] || t == "*" && qt[i] == ">" {
			return false
		}
	}
	return len(pt) == len(qt)
}
