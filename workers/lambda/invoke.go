package lambda

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
	"github.com/aws/aws-sdk-go-v2/service/lambda/types"
	"go.opentelemetry.io/otel/trace"

	"github.com/udpgate/udpgate/workers"
)

// Retry timing: the wait before retry n (from 0) is drawn from
// [d/2, d] with d = minBackoff·2ⁿ, at most maxBackoff, or the throttle's
// Retry-After if that is longer.
const (
	minBackoff = 25 * time.Millisecond
	maxBackoff = time.Second
	// maxRetryAfter caps the wait a throttle's Retry-After asks for; the
	// request's deadline usually cuts it shorter.
	maxRetryAfter = 30 * time.Second
	// maxTries bounds the tries of a request without a deadline; after
	// them the request is given back (workers.ErrRetry): a durable group's
	// is redelivered (up to MaxDeliver), a direct group's left to the
	// client's retry.
	maxTries = 5
)

// errTimeout marks an Invoke call abandoned after InvokeTimeout.
var errTimeout = errors.New("invoke timeout")

// invoke calls the function with payload until it answers, retrying
// throttles, 5xx, network errors and timeouts with backoff while ctx
// allows. It returns the function's result, or an error for Handle to
// return.
func (b *Bridge) invoke(ctx context.Context, payload []byte) ([]byte, error) {
	return b.invokeBatch(ctx, payload, 0, nil)
}

// invokeBatch is invoke for a batch of n requests (0 for one request
// alone); links are the traced requests of the batch other than the one
// whose span ctx holds, for the invocations' spans.
func (b *Bridge) invokeBatch(ctx context.Context, payload []byte, n int, links []trace.Link) ([]byte, error) {
	for try := 0; ; try++ {
		out, err := b.invokeOnce(ctx, payload, try, n, links)
		if err == nil {
			if out.FunctionError != nil {
				b.stats.functionErrors.Add(1)
				return nil, fmt.Errorf("lambda: function %s failed (%s): %s",
					b.Function, *out.FunctionError, truncate(out.Payload, 256))
			}
			return out.Payload, nil
		}
		if ctx.Err() != nil {
			return nil, abandon(ctx, fmt.Errorf("lambda: invoke %s: %w", b.Function, ctx.Err()))
		}
		if !b.retryable(err) {
			b.stats.invokeErrors.Add(1)
			b.invokeFailed.Add("function", b.Function, "err", err)
			return nil, fmt.Errorf("lambda: invoke %s: %w", b.Function, err)
		}
		if _, ok := ctx.Deadline(); !ok && try+1 >= maxTries {
			return nil, fmt.Errorf("lambda: invoke %s: %w after %d tries: %w", b.Function, workers.ErrRetry, maxTries, err)
		}
		b.stats.retries.Add(1)
		b.retrying.Add("function", b.Function, "err", err)
		t := time.NewTimer(max(backoff(try), retryAfter(err)))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, abandon(ctx, fmt.Errorf("lambda: invoke %s: %w (after %w)", b.Function, ctx.Err(), err))
		}
	}
}

// invokeOnce makes one Invoke call, in one of the MaxInvocations slots;
// for a traced request (or batch) in a span of its own, whose context the
// function receives in the ClientContext (see clientContext).
func (b *Bridge) invokeOnce(ctx context.Context, payload []byte, try, n int, links []trace.Link) (out *awslambda.InvokeOutput, err error) {
	select {
	case b.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-b.sem }()
	sctx, span := b.startInvoke(ctx, try, n, links)
	if span != nil {
		defer func() {
			var fe string
			if err == nil && out != nil && out.FunctionError != nil {
				fe = *out.FunctionError
			}
			endInvoke(span, fe, err)
		}()
	}
	inFlight := uint64(b.inFlight.Add(1))
	defer b.inFlight.Add(-1)
	for m := b.stats.maxInFlight.Load(); inFlight > m && !b.stats.maxInFlight.CompareAndSwap(m, inFlight); {
		m = b.stats.maxInFlight.Load()
	}
	b.stats.invocations.Add(1)

	ictx := sctx
	if b.InvokeTimeout > 0 {
		var cancel context.CancelFunc
		ictx, cancel = context.WithTimeout(sctx, b.InvokeTimeout)
		defer cancel()
	}
	in := &awslambda.InvokeInput{
		FunctionName: aws.String(b.Function),
		Payload:      payload,
	}
	if span != nil {
		in.ClientContext = clientContext(span.SpanContext())
	}
	out, err = b.Client.Invoke(ictx, in)
	if err != nil && ctx.Err() == nil && ictx.Err() != nil {
		b.stats.timeouts.Add(1)
		return nil, fmt.Errorf("%w after %v: %w", errTimeout, b.InvokeTimeout, err)
	}
	return out, err
}

// retryable reports whether an Invoke error is worth another try, counting
// throttles.
func (b *Bridge) retryable(err error) bool {
	var tooMany *types.TooManyRequestsException
	var status interface{ HTTPStatusCode() int }
	var netErr net.Error
	switch {
	case errors.Is(err, errTimeout):
		return true
	case errors.As(err, &tooMany):
		b.stats.throttles.Add(1)
		return true
	case errors.As(err, &status) && status.HTTPStatusCode() != 0: // 0: no response
		code := status.HTTPStatusCode()
		if code == http.StatusTooManyRequests {
			b.stats.throttles.Add(1)
		}
		return code == http.StatusTooManyRequests || code >= 500
	case errors.As(err, &netErr):
		return true
	}
	return false
}

// abandon returns err for a request whose context ended: as it is if the
// deadline has passed (the SDK then acks the request as expired), wrapping
// workers.ErrRetry if time remains (the Server is stopping: another
// instance should take it).
func abandon(ctx context.Context, err error) error {
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return err
	}
	return fmt.Errorf("%w: %w", workers.ErrRetry, err)
}

// retryAfter is the wait a throttled Invoke asked for with Retry-After (in
// seconds, as Lambda sends it), at most maxRetryAfter; 0 if none.
func retryAfter(err error) time.Duration {
	var tooMany *types.TooManyRequestsException
	if !errors.As(err, &tooMany) || tooMany.RetryAfterSeconds == nil {
		return 0
	}
	s, err := strconv.ParseFloat(strings.TrimSpace(*tooMany.RetryAfterSeconds), 64)
	if err != nil || s <= 0 || math.IsNaN(s) {
		return 0
	}
	return time.Duration(min(s, maxRetryAfter.Seconds()) * float64(time.Second))
}

func backoff(try int) time.Duration {
	d := min(minBackoff<<min(try, 10), maxBackoff)
	return d/2 + rand.N(d/2+1)
}

// truncate returns p as a string of at most n bytes, for logs.
func truncate(p []byte, n int) string {
	if len(p) > n {
		return string(p[:n]) + "..."
	}
	return string(p)
}
