package lambda

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/workers"
)

// item is one request waiting in the batcher.
type item struct {
	req  *workers.Request
	at   time.Time    // when it was received (receivedAt)
	span trace.Span   // the request's span in its Handle's context, if traced
	gone atomic.Bool  // its Handle has returned: leave it out
	done chan outcome // buffered; receives the outcome at most once
}

// outcome is the answer to one batched request: a reply, or an error for
// Handle to return.
type outcome struct {
	reply reply
	err   error
}

// handleBatch hands r to the batcher and waits for its outcome.
func (b *Bridge) handleBatch(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
	it := &item{req: r, at: receivedAt(r), span: trace.SpanFromContext(ctx), done: make(chan outcome, 1)}
	select {
	case b.queue <- it:
	case <-ctx.Done():
		return abandon(ctx, fmt.Errorf("lambda: waiting for a batch: %w", ctx.Err()))
	case <-b.closed:
		return fmt.Errorf("%w: %w", workers.ErrRetry, ErrClosed)
	}
	select {
	case o := <-it.done:
		if o.err != nil {
			return o.err
		}
		o.reply.write(w, r)
		return nil
	case <-ctx.Done():
		it.gone.Store(true)
		return abandon(ctx, fmt.Errorf("lambda: waiting for the batch reply: %w", ctx.Err()))
	}
}

// batcher collects requests into batches: a batch is due when it holds
// BatchSize requests or BatchWindow after its first one, and is sent as soon
// as fewer than MaxInvocations batches are in flight; until then it keeps
// filling. It runs until ctx is cancelled by Close, then fails the requests
// it holds.
func (b *Bridge) batcher(ctx context.Context) {
	size, window := b.batchSize(), b.batchWindow()
	var pending []*item
	due := false // the window of pending has passed
	timer := time.NewTimer(window)
	timer.Stop()
	defer func() {
		timer.Stop()
		for _, it := range pending {
			it.done <- outcome{err: fmt.Errorf("%w: %w", workers.ErrRetry, ErrClosed)}
		}
	}()
	for {
		queue := b.queue
		if len(pending) >= size {
			queue = nil // full: wait for a slot
		}
		var slots chan struct{}
		if len(pending) > 0 && (due || len(pending) >= size) {
			slots = b.slots
		}
		select {
		case it := <-queue:
			pending = append(pending, it)
			if len(pending) == 1 {
				timer.Reset(window)
				due = false
			}
		case <-timer.C:
			due = true
		case slots <- struct{}{}:
			batch := pending
			pending, due = nil, false
			timer.Stop()
			b.wg.Go(func() {
				defer func() { <-b.slots }()
				b.send(ctx, batch)
			})
		case <-ctx.Done():
			return
		}
	}
}

// send invokes the function with one batch and hands each request its
// outcome. Requests whose Handle has returned are left out.
func (b *Bridge) send(ctx context.Context, batch []*item) {
	live := batch[:0]
	var deadline time.Time // the latest of the batch; zero if any has none
	noDeadline := false
	for _, it := range batch {
		if it.gone.Load() {
			continue
		}
		d := it.req.Deadline
		if d.IsZero() {
			noDeadline = true
		} else if !time.Now().Before(d) {
			continue
		}
		if d.After(deadline) {
			deadline = d
		}
		live = append(live, it)
	}
	if len(live) == 0 {
		return
	}
	ev := BatchEvent{Messages: make([]BatchMessage, len(live))}
	for i, it := range live {
		ev.Messages[i] = batchMessage(strconv.Itoa(i), it.req, it.at)
	}
	fail := func(err error) {
		for _, it := range live {
			it.done <- outcome{err: err}
		}
	}
	payload, err := json.Marshal(ev)
	if err != nil {
		fail(fmt.Errorf("lambda: encode batch event: %w", err))
		return
	}
	if !noDeadline {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	// The invocation's span is a child of the first traced request's,
	// linked to the others.
	var parent trace.Span
	var links []trace.Link
	for _, it := range live {
		switch sc := it.span.SpanContext(); {
		case !sc.IsValid():
		case parent == nil:
			parent = it.span
		default:
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	if parent != nil {
		ctx = trace.ContextWithSpan(ctx, parent)
	}
	b.stats.batches.Add(1)
	out, err := b.invokeBatch(ctx, payload, len(live), links)
	if err != nil {
		fail(err)
		return
	}
	replies, err := b.parseBatch(out, len(live))
	if err != nil {
		b.stats.badOutput.Add(1)
		b.badOutput.Add("function", b.Function, "batch", len(live), "err", err)
		fail(fmt.Errorf("lambda: function %s: %w", b.Function, err))
		return
	}
	for i, it := range live {
		it.done <- replies[i]
	}
}

// parseBatch decodes a BatchResult into one outcome per message. A
// malformed result is an error; a malformed reply fails its message only,
// and is logged.
func (b *Bridge) parseBatch(p []byte, n int) ([]outcome, error) {
	out := make([]outcome, n)
	for i := range out {
		out[i].reply = reply{none: true}
	}
	p = bytes.TrimSpace(p)
	if len(p) == 0 || string(p) == "null" {
		return out, nil
	}
	if p[0] != '{' {
		return nil, fmt.Errorf("batch result is not a JSON object or null: %s", truncate(p, 64))
	}
	var res BatchResult
	if err := json.Unmarshal(p, &res); err != nil {
		return nil, fmt.Errorf("batch result: %w", err)
	}
	seen := make([]bool, n)
	for _, r := range res.Replies {
		i, err := strconv.Atoi(r.Tag)
		if err != nil || i < 0 || i >= n || strconv.Itoa(i) != r.Tag {
			b.badReply(fmt.Errorf("reply to unknown Tag %q", r.Tag))
			continue
		}
		if seen[i] {
			b.badReply(fmt.Errorf("second reply to Tag %q", r.Tag))
			continue
		}
		seen[i] = true
		if r.Data == nil {
			continue
		}
		body, err := b64.DecodeString(*r.Data)
		if err != nil {
			err = fmt.Errorf("reply to Tag %q: bad base64 Data: %w", r.Tag, err)
			b.badReply(err)
			out[i] = outcome{err: fmt.Errorf("lambda: function %s: %w", b.Function, err)}
			continue
		}
		out[i] = outcome{reply: reply{body: body, contentFormat: -1}}
	}
	return out, nil
}

func (b *Bridge) badReply(err error) {
	b.stats.badOutput.Add(1)
	b.badOutput.Add("function", b.Function, "err", err)
}
