package replay

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
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
// PREFIX.replay.in.> and PREFIX.replay.capture.>, which no stream or group
// on PREFIX.in.> or PREFIX.capture.> sees.
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
// subjectPrefix, and returns what it did. A replay stream has the shape of
// the capture stream: its subjects are subjectPrefix.capture.>, which a
// subject transform stores as subjectPrefix.in.>, so that durable candidate
// groups filter the same subjects that direct ones subscribe to, and a
// request published to direct candidates is not stored twice. A missing
// stream is created so: limits retention, file storage, StreamMaxAge and
// StreamMaxBytes, discarding old messages. An existing stream is used as it
// is, and must have that shape; a stream made for wire contract 1
// (subjects subjectPrefix.in.>, no transform) does not.
//
// Direct candidate groups are workers.Servers subscribed to
// subjectPrefix.in.…; durable ones are workers.Servers with Delivery
// workers.Durable and Stream set to name, which bind with deliver policy
// new. Either must be running before a replay starts.
func EnsureStream(ctx context.Context, js jetstream.JetStream, name, subjectPrefix string) (string, error) {
	subject, stores := schemas.CaptureWildcard(subjectPrefix), schemas.InWildcard(subjectPrefix)
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:             name,
			Description:      "udpgate replay: requests sent again to candidate worker groups",
			Subjects:         []string{subject},
			SubjectTransform: &jetstream.SubjectTransformConfig{Source: subject, Destination: stores},
			Retention:        jetstream.LimitsPolicy,
			Storage:          jetstream.FileStorage,
			MaxAge:           StreamMaxAge,
			MaxBytes:         StreamMaxBytes,
			Discard:          jetstream.DiscardOld,
		})
		if err != nil {
			return "", fmt.Errorf("replay: create stream %s on %s: %w", name, subject, err)
		}
		return "created stream " + name + " on " + subject + ", stored as " + stores, nil
	}
	if err != nil {
		return "", fmt.Errorf("replay: look up stream %s: %w", name, err)
	}
	if err := checkStream(s.CachedInfo().Config, subjectPrefix); err != nil {
		return "", err
	}
	return "using stream " + name + " on " + subject + ", stored as " + stores, nil
}

// checkStream reports why an existing stream cannot be the replay stream of
// subjectPrefix.
func checkStream(have jetstream.StreamConfig, subjectPrefix string) error {
	subject, stores := schemas.CaptureWildcard(subjectPrefix), schemas.InWildcard(subjectPrefix)
	var problems []string
	if !slices.ContainsFunc(have.Subjects, func(s string) bool { return schemas.Covers(s, subject) }) {
		problems = append(problems, fmt.Sprintf("its subjects %q do not cover %s", have.Subjects, subject))
	}
	switch tr := have.SubjectTransform; {
	case tr == nil:
		problems = append(problems, fmt.Sprintf("it has no subject transform from %s to %s", subject, stores))
	case tr.Source != subject || tr.Destination != stores:
		problems = append(problems, fmt.Sprintf("its subject transform maps %q to %q, not %s to %s", tr.Source, tr.Destination, subject, stores))
	}
	if i := slices.IndexFunc(have.Subjects, func(s string) bool { return schemas.Overlap(s, stores) }); i >= 0 {
		problems = append(problems, fmt.Sprintf("its subject %q overlaps %s, where requests go to direct candidates: it would store them twice", have.Subjects[i], stores))
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("replay: stream %s exists but %s; a replay stream has the capture's shape (wire contract %d): "+
		"delete it (nats stream rm %s) and let udpgate replay --prepare create it again, or choose another stream or subject prefix",
		have.Name, strings.Join(problems, ", and "), schemas.Version, have.Name)
}

// Target is where Publish sends requests.
type Target struct {
	// Prefix replaces the capture's prefix in each request's subject:
	// udpgate.in.9000 becomes PREFIX.in.9000 for direct candidates, and
	// its copy for the replay stream goes to PREFIX.capture.9000. Replies
	// come back on PREFIX.reply.replay-RUN.ID. Required; it must not be
	// the capture's prefix or inside its subjects.
	Prefix string
	// Stream is the replay stream, which must have the shape that
	// EnsureStream gives it; StreamName(Prefix) if empty.
	Stream string
	// Deadline is how far ahead of its publication a replayed request's
	// udpgate-deadline is set; if zero, one minute plus the Replayer's Wait.
	Deadline time.Duration
	// Keep keeps each request and its reply in Result.Requests, for
	// Compare.
	Keep bool
}

// Publish sends the selected requests to t.Prefix as the gateway publishes
// requests, paced by r.Speed: each one as a core NATS message on
// PREFIX.in.… with a reply subject, which direct candidate groups (queue
// subscriptions) receive and answer with the NATS reply idiom, and a copy
// to PREFIX.capture.… that the replay stream stores as PREFIX.in.… for
// durable candidate groups. It collects the replies until r.Wait after the
// last send, or until every request sent is answered.
//
// Each request keeps its captured headers and body, except: a fresh
// correlation id RUN-N (ce-id), where RUN names the replay; the reply
// subject PREFIX.reply.replay-RUN.ID, also in udpgate-reply;
// HeaderReplayOf with the captured ce-id; ce-time with the captured
// request's time (its ce-time, or when the capture stored it), as on an
// imported request; udpgate-deadline set t.Deadline ahead; and no Nats-*
// headers.
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
	st, err := r.JetStream.Stream(ctx, stream)
	if err != nil {
		return res, fmt.Errorf("replay: replay stream %s: %w", stream, err)
	}
	if err := checkStream(st.CachedInfo().Config, t.Prefix); err != nil {
		return res, err
	}
	ahead := t.Deadline
	if ahead <= 0 {
		ahead = time.Minute + r.Wait
	}

	var b [6]byte
	rand.Read(b[:])
	run := hex.EncodeToString(b[:])
	replies := t.Prefix + ".reply.replay-" + run // the reply to request ID comes on replies.ID

	c := &collector{keep: t.Keep, notify: make(chan struct{}, 1), index: map[string]int{}}
	nc := r.JetStream.Conn()
	sub, err := nc.Subscribe(replies+".*", c.receive)
	if err != nil {
		return res, fmt.Errorf("replay: subscribe %s.*: %w", replies, err)
	}
	defer sub.Unsubscribe()
	// The subscription must reach the server before the first request
	// can be answered.
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = nc.FlushWithContext(fctx)
	cancel()
	if err != nil {
		return res, fmt.Errorf("replay: subscribe %s.*: %w", replies, err)
	}

	expect := []jetstream.PublishOpt{jetstream.WithExpectStream(stream)}
	start := time.Now()
	var n uint64
	err = r.selectRequests(ctx, &res, func(cr captured) {
		rest, ok := strings.CutPrefix(cr.msg.Subject(), prefix+".in.")
		if !ok {
			res.Errors++ // not under the capture's prefix: nowhere to send it
			return
		}
		n++
		id := run + "-" + strconv.FormatUint(n, 16)
		reply := replies + "." + id
		h := nats.Header{}
		for k, v := range cr.msg.Headers() {
			if strings.HasPrefix(strings.ToLower(k), "nats-") {
				continue
			}
			h[k] = v
		}
		orig := h.Get(schemas.HeaderID)
		unrecorded := h.Get(schemas.HeaderReply) == ""
		h.Set(schemas.HeaderID, id)
		h.Set(HeaderReplayOf, orig)
		h.Set(schemas.HeaderReply, reply)
		h.Set(schemas.HeaderDeadline, strconv.FormatInt(time.Now().Add(ahead).UnixMilli(), 10))
		h.Set(schemas.HeaderTime, cr.at.UTC().Format(time.RFC3339Nano))

		c.add(id, Request{Seq: cr.seq, Subject: cr.msg.Subject(), ID: orig, Protocol: cr.protocol, Unrecorded: unrecorded})
		// To the direct candidates, then the copy for the durable ones.
		if err := nc.PublishMsg(&nats.Msg{Subject: t.Prefix + ".in." + rest, Reply: reply, Header: h, Data: cr.msg.Data()}); err != nil {
			c.remove(id)
			res.Errors++
			return
		}
		res.Sent++
		capture := &nats.Msg{Subject: t.Prefix + ".capture." + rest, Header: h, Data: cr.msg.Data()}
		if _, err := r.JetStream.PublishMsg(ctx, capture, expect...); err != nil {
			res.Uncaptured++
		}
	})
	res.Duration = time.Since(start)
	if err == nil {
		waitFor(ctx, r.Wait, func() bool { return c.answeredCount() >= res.Sent }, c.notify)
	}
	sub.Unsubscribe()
	res.Answered, res.NoResponders, res.Requests = c.result()
	return res, err
}

// collector gathers the replies to a replay.
type collector struct {
	keep   bool          // keep the replies' headers and bodies, for Compare
	notify chan struct{} // receives a value, without blocking, after each first reply

	mu           sync.Mutex // guards the fields below
	index        map[string]int
	requests     []Request
	answered     int
	noResponders int
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
// the gateway. NATS's own answer to a request that no direct candidate
// received (no responders) is counted, not taken for a reply.
func (c *collector) receive(m *nats.Msg) {
	if len(m.Data) == 0 && m.Header.Get(statusHeader) == noResponders {
		c.mu.Lock()
		c.noResponders++
		c.mu.Unlock()
		return
	}
	id, _ := schemas.ReplyID(m.Subject)
	c.mu.Lock()
	i, ok := c.index[id]
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

func (c *collector) result() (answered, noResponders int, requests []Request) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.keep {
		return c.answered, c.noResponders, nil
	}
	return c.answered, c.noResponders, append([]Request(nil), c.requests...)
}

// NATS's status header, and the status of its answer to a request that no
// subscription received. nats.go does not export them.
const (
	statusHeader = "Status"
	noResponders = "503"
)

// checkTarget refuses a subject prefix whose requests or replies the
// capture's streams or worker groups would see.
func checkTarget(prefix, target string) error {
	if !validPrefix(target) {
		return fmt.Errorf("replay: %q is not a subject prefix (tokens of letters, digits, - and _ separated by dots)", target)
	}
	for _, ours := range []string{schemas.InWildcard(target), schemas.CaptureWildcard(target), schemas.ReplyWildcard(target)} {
		for _, theirs := range []string{schemas.InWildcard(prefix), schemas.CaptureWildcard(prefix), schemas.ReplyWildcard(prefix)} {
			if schemas.Overlap(ours, theirs) {
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
