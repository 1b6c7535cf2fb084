// Package lambda bridges a worker group to an AWS Lambda function. A Bridge
// is a workers.Handler: run by a workers.Server, it invokes one function
// (by name, ARN or alias) for each request, or for each batch of requests,
// and turns the function's result into the reply.
//
// # Delivery
//
// The Bridge works in a group of either delivery; the workers.Server's
// Delivery field chooses (UDPGATE_DELIVERY for `udpgate lambda`):
//
//   - workers.Direct (the SDK's default): a queue subscription. A request
//     reaches the Bridge as the gateway reads it and is answered with the
//     NATS reply idiom; what the Bridge gives back (workers.ErrRetry) is
//     left to the client's retry, and the requests beyond the Server's
//     Concurrency and Backlog are dropped (counted) while Lambda is slow
//     or throttles.
//   - workers.Durable: a JetStream consumer on the capture stream. Requests
//     wait in the stream while every invocation slot is busy, and what the
//     Bridge gives back is redelivered: the choice when a backlog must
//     wait for the function rather than be dropped.
//
// Both shapes work in both deliveries: set the Server's Concurrency to
// Bridge.Concurrency(), so that enough requests are handled at once to
// fill the batches.
//
// The events and results are JSON, each described by a JSON Schema in
// schemas/lambda/ (documented with examples in schemas/lambda/README.md).
//
// # Shapes
//
// With ShapeNative (the default) every request is one synchronous
// invocation whose event depends on the request's protocol: RawEvent,
// CoAPEvent or RPCEvent. The function returns one of:
//
//   - a JSON string: the reply body, as UTF-8 text;
//   - a JSON object, Result: the body ("body", text or base64 with
//     "isBase64Encoded": true), the CoAP response code and Content-Format
//     ("code", "content_format"), the RPC status and error message
//     ("status", "error");
//   - null (or nothing): no reply. A raw request gets none; a CoAP request
//     gets 5.04 Gateway Timeout and an RPC call STATUS_DEADLINE_EXCEEDED at
//     once, which is what the gateway would answer at the deadline.
//
// With ShapeBatch requests are collected into a BatchEvent of up to
// BatchSize messages, sent when it is full or BatchWindow after its first
// request, and the function returns a BatchResult whose replies name their
// request by Tag. A request without a reply is answered as for null above.
//
// # Failures
//
//   - A function error (the invocation succeeded, X-Amz-Function-Error is
//     set): Handle returns an error, which the SDK turns into an error reply
//     (raw: nothing sent; CoAP: 5.00; RPC: STATUS_INTERNAL). Counted
//     FunctionErrors.
//   - Throttling (HTTP 429, TooManyRequestsException), any 5xx, a network
//     error, or an invocation that outlasts InvokeTimeout: the invocation is
//     retried after a backoff (exponential with jitter, 25 ms doubling to
//     1 s, or longer when a throttle's Retry-After asks for it, up to 30 s)
//     for as long as the request's deadline allows. When the deadline
//     passes Handle returns and the SDK counts the request as expired (and
//     acks it, durable); the gateway answers it (CoAP 5.04, RPC
//     STATUS_DEADLINE_EXCEEDED). When the Server stops first, Handle
//     returns an error wrapping workers.ErrRetry: a durable group's request
//     is redelivered to another instance, a direct group's waits for the
//     client's retry. A request without a deadline is tried 5 times, then
//     Handle returns an error wrapping workers.ErrRetry. Counted Throttles,
//     Timeouts, Retries. A retried invocation may run the function more
//     than once.
//   - Any other error from Invoke (4xx such as ResourceNotFoundException,
//     missing credentials or region): an error reply and a Warn log.
//     Counted InvokeErrors.
//   - A result the Bridge cannot use (not JSON, wrong types, bad base64, a
//     bad CoAP code): an error reply and a Warn log naming the function.
//     Counted BadOutput.
//
// The AWS SDK's own retryer must be turned off on the client (NewClient
// does: aws.NopRetryer, or RetryMaxAttempts 1), or it retries throttles and
// 5xx itself with its own backoff, blind to the request's deadline.
//
// # Concurrency
//
// At most MaxInvocations Invoke calls are in flight at once, across
// requests and batches alike; a request waits for a free slot (and never
// holds one while it backs off). The Server's Concurrency should be
// Bridge.Concurrency(): in batch mode it takes BatchSize requests per
// invocation to fill the batches.
package lambda

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"

	"github.com/udpgate/udpgate/internal/ratelog"
	"github.com/udpgate/udpgate/workers"
)

// Invoker invokes a Lambda function; *lambda.Client of
// github.com/aws/aws-sdk-go-v2/service/lambda satisfies it.
type Invoker interface {
	Invoke(ctx context.Context, in *awslambda.InvokeInput, optFns ...func(*awslambda.Options)) (*awslambda.InvokeOutput, error)
}

// Event shapes, the values of Bridge.Shape.
const (
	ShapeNative = "native"
	ShapeBatch  = "batch"
)

// Defaults of the Bridge fields.
const (
	DefaultMaxInvocations = 16
	DefaultBatchSize      = 10
	DefaultBatchWindow    = 20 * time.Millisecond
)

// ErrClosed is returned, wrapping workers.ErrRetry, by Handle after Close.
var ErrClosed = errors.New("lambda: bridge closed")

// Bridge is a workers.Handler that invokes a Lambda function per request
// or per batch of requests. Set its fields before the first Handle call
// and do not change them afterwards. Handle, Stats and Close are safe for
// concurrent use; a Bridge must not be copied after first use.
type Bridge struct {
	// Client invokes the function, for example the *lambda.Client that
	// NewClient returns. Required.
	Client Invoker
	// Function is the function's name, ARN or partial ARN, optionally
	// qualified with a version or alias ("name:live"). Required.
	Function string
	// Shape is ShapeNative or ShapeBatch; empty means ShapeNative.
	Shape string
	// BatchSize is the most requests in one batch, and BatchWindow how long
	// a batch waits for more after its first request (ShapeBatch only).
	// Zero means DefaultBatchSize and DefaultBatchWindow.
	BatchSize   int
	BatchWindow time.Duration
	// MaxInvocations bounds the Invoke calls in flight at once, over all
	// requests and batches of this Bridge. Zero means
	// DefaultMaxInvocations.
	MaxInvocations int
	// InvokeTimeout bounds one Invoke call; one that takes longer is
	// abandoned and retried. Zero means no bound but the request's
	// deadline.
	InvokeTimeout time.Duration
	// Log receives warnings about bad function output and failed
	// invocations; nil discards them.
	Log *slog.Logger

	initOnce sync.Once
	initErr  error         // a bad configuration, returned by every Handle
	sem      chan struct{} // one token per Invoke call in flight
	log      *slog.Logger
	stats    counters
	// Logs that can repeat per request, at most one line every 10 s each,
	// with the count since the last.
	badOutput, invokeFailed, retrying *ratelog.Logger

	inFlight atomic.Int64 // Invoke calls in flight

	// ShapeBatch only; set by init.
	queue chan *item    // requests for the batcher
	slots chan struct{} // one token per batch being invoked
	stop  func()        // cancels the batcher's context

	wg        sync.WaitGroup // the batcher and its batch goroutines
	closeOnce sync.Once
	closed    chan struct{} // closed by Close
}

// Stats counts what a Bridge has done since it was created.
type Stats struct {
	Invocations    uint64 // Invoke calls made, retries included
	FunctionErrors uint64 // invocations that returned a function error (X-Amz-Function-Error)
	Throttles      uint64 // invocations refused with 429 (TooManyRequestsException)
	Timeouts       uint64 // invocations abandoned after InvokeTimeout
	Retries        uint64 // invocations retried: throttles, 5xx, network errors, timeouts
	InvokeErrors   uint64 // invocations that failed otherwise (4xx, configuration), not retried
	BadOutput      uint64 // results, or batch replies, the Bridge could not use
	Batches        uint64 // batches sent (ShapeBatch)
	InFlight       uint64 // Invoke calls in flight now
	MaxInFlight    uint64 // the most Invoke calls in flight at once
}

type counters struct {
	invocations, functionErrors, throttles, timeouts, retries,
	invokeErrors, badOutput, batches, maxInFlight atomic.Uint64
}

// Stats returns a snapshot of the Bridge's counters.
func (b *Bridge) Stats() Stats {
	return Stats{
		Invocations:    b.stats.invocations.Load(),
		FunctionErrors: b.stats.functionErrors.Load(),
		Throttles:      b.stats.throttles.Load(),
		Timeouts:       b.stats.timeouts.Load(),
		Retries:        b.stats.retries.Load(),
		InvokeErrors:   b.stats.invokeErrors.Load(),
		BadOutput:      b.stats.badOutput.Load(),
		Batches:        b.stats.batches.Load(),
		InFlight:       uint64(max(b.inFlight.Load(), 0)),
		MaxInFlight:    b.stats.maxInFlight.Load(),
	}
}

// Concurrency returns the workers.Server Concurrency that keeps the Bridge
// busy: MaxInvocations in native mode; in batch mode BatchSize requests for
// each of MaxInvocations batches in flight plus one batch filling.
func (b *Bridge) Concurrency() int {
	if b.Shape == ShapeBatch {
		return b.batchSize() * (b.maxInvocations() + 1)
	}
	return b.maxInvocations()
}

func (b *Bridge) maxInvocations() int {
	if b.MaxInvocations > 0 {
		return b.MaxInvocations
	}
	return DefaultMaxInvocations
}

func (b *Bridge) batchSize() int {
	if b.BatchSize > 0 {
		return b.BatchSize
	}
	return DefaultBatchSize
}

func (b *Bridge) batchWindow() time.Duration {
	if b.BatchWindow > 0 {
		return b.BatchWindow
	}
	return DefaultBatchWindow
}

func (b *Bridge) init() {
	b.initOnce.Do(func() {
		b.log = b.Log
		if b.log == nil {
			b.log = slog.New(slog.DiscardHandler)
		}
		b.badOutput = &ratelog.Logger{Log: b.log, Level: slog.LevelWarn, Msg: "lambda: bad function output"}
		b.invokeFailed = &ratelog.Logger{Log: b.log, Level: slog.LevelWarn, Msg: "lambda: invoke failed"}
		b.retrying = &ratelog.Logger{Log: b.log, Level: slog.LevelWarn,
			Msg: "lambda: invocations failing (throttled, 5xx, timed out or the endpoint unreachable: AWS_ENDPOINT_URL_LAMBDA, UDPGATE_LAMBDA_ENDPOINT); retrying until each request's deadline"}
		b.sem = make(chan struct{}, b.maxInvocations())
		b.closed = make(chan struct{})
		switch {
		case b.Client == nil:
			b.initErr = errors.New("lambda: Bridge has no Client")
		case b.Function == "":
			b.initErr = errors.New("lambda: Bridge has no Function")
		case b.Shape != "" && b.Shape != ShapeNative && b.Shape != ShapeBatch:
			b.initErr = fmt.Errorf("lambda: unknown shape %q: want %q or %q", b.Shape, ShapeNative, ShapeBatch)
		}
		if b.initErr == nil && b.Shape == ShapeBatch {
			b.queue = make(chan *item)
			b.slots = make(chan struct{}, b.maxInvocations())
			ctx, cancel := context.WithCancel(context.Background())
			b.stop = cancel
			b.wg.Go(func() { b.batcher(ctx) })
		}
	})
}

// Handle invokes the function for r, alone or in a batch, and writes the
// reply the function asks for. See the package documentation for the
// outcomes. After Close it returns an error wrapping ErrClosed and
// workers.ErrRetry.
func (b *Bridge) Handle(ctx context.Context, w workers.ResponseWriter, r *workers.Request) error {
	b.init()
	if b.initErr != nil {
		return b.initErr
	}
	select {
	case <-b.closed:
		return fmt.Errorf("%w: %w", workers.ErrRetry, ErrClosed)
	default:
	}
	if b.Shape == ShapeBatch {
		return b.handleBatch(ctx, w, r)
	}
	payload, err := nativeEvent(r, receivedAt(r))
	if err != nil {
		return fmt.Errorf("lambda: encode event: %w", err)
	}
	out, err := b.invoke(ctx, payload)
	if err != nil {
		return err
	}
	rp, err := parseResult(out)
	if err != nil {
		b.stats.badOutput.Add(1)
		b.badOutput.Add("function", b.Function, "id", r.ID, "err", err)
		return fmt.Errorf("lambda: function %s: %w", b.Function, err)
	}
	rp.write(w, r)
	return nil
}

// Close stops the batcher, if any, fails the requests waiting in it with an
// error wrapping workers.ErrRetry (and ErrClosed), cancels the batch
// invocations in flight and waits for them. Call it after the Server's
// Serve has returned. Handle calls after Close return ErrClosed. Close is
// idempotent and always returns nil.
func (b *Bridge) Close() error {
	b.init()
	b.closeOnce.Do(func() {
		for _, l := range []*ratelog.Logger{b.badOutput, b.invokeFailed, b.retrying} {
			l.Flush()
		}
		close(b.closed)
		if b.stop != nil {
			b.stop()
		}
	})
	b.wg.Wait()
	return nil
}
