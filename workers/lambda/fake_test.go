package lambda

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awslambda "github.com/aws/aws-sdk-go-v2/service/lambda"
)

// fakeLambda is a local Lambda Invoke API endpoint: POST
// /2015-03-31/functions/{name}/invocations runs the Go function registered
// for name on the JSON event and answers as the service does, including
// function errors, throttling and service errors. It records every event
// and result, and the most invocations it ran at once.
type fakeLambda struct {
	URL string

	mu      sync.Mutex // guards funcs, events and results
	funcs   map[string]function
	events  map[string][][]byte // by function, in arrival order
	results map[string][][]byte // successful results, by function

	inFlight, maxInFlight atomic.Int64
}

// A function returns its JSON result, or one of the errors below.
type function func(event []byte) ([]byte, error)

// functionError makes the invocation succeed with X-Amz-Function-Error.
type functionError string

func (e functionError) Error() string { return string(e) }

// Errors of the service itself.
var (
	errThrottled   = errors.New("rate exceeded")       // 429 TooManyRequestsException
	errSlowDown    = errors.New("retry after 1s")      // 429 with Retry-After: 1
	errUnavailable = errors.New("service unavailable") // 500 ServiceException
)

func newFakeLambda(t testing.TB) *fakeLambda {
	t.Helper()
	f := &fakeLambda{
		funcs:   map[string]function{},
		events:  map[string][][]byte{},
		results: map[string][][]byte{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /2015-03-31/functions/{name}/invocations", f.invoke)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	f.URL = srv.URL
	return f
}

// handle registers fn as function name.
func (f *fakeLambda) handle(name string, fn function) {
	f.mu.Lock()
	f.funcs[name] = fn
	f.mu.Unlock()
}

// client returns a real SDK client for the endpoint, with static
// credentials and without the SDK's retries, as NewClient makes.
func (f *fakeLambda) client() *awslambda.Client {
	return awslambda.New(awslambda.Options{
		Region:           "eu-west-1",
		Credentials:      credentials.NewStaticCredentialsProvider("AKIDUDPGATETEST", "secret", ""),
		BaseEndpoint:     aws.String(f.URL),
		RetryMaxAttempts: 1,
	})
}

// recorded returns the events and successful results of function name.
func (f *fakeLambda) recorded(name string) (events, results [][]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]byte(nil), f.events[name]...), append([][]byte(nil), f.results[name]...)
}

func (f *fakeLambda) invoke(w http.ResponseWriter, r *http.Request) {
	n := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for m := f.maxInFlight.Load(); n > m && !f.maxInFlight.CompareAndSwap(m, n); {
		m = f.maxInFlight.Load()
	}
	w.Header().Set("X-Amzn-RequestId", fmt.Sprintf("req-%d", n))
	name := r.PathValue("name")
	f.mu.Lock()
	fn := f.funcs[name]
	f.mu.Unlock()
	if fn == nil {
		serviceError(w, http.StatusNotFound, "ResourceNotFoundException", "User", "Function not found: "+name)
		return
	}
	event, err := io.ReadAll(r.Body)
	if err != nil || !json.Valid(event) {
		serviceError(w, http.StatusBadRequest, "InvalidRequestContentException", "User", "Could not parse request body into json")
		return
	}
	f.mu.Lock()
	f.events[name] = append(f.events[name], event)
	f.mu.Unlock()

	out, err := fn(event)
	var fe functionError
	switch {
	case errors.As(err, &fe):
		body, _ := json.Marshal(map[string]any{"errorMessage": string(fe), "errorType": "Error", "trace": []string{}})
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Amz-Function-Error", "Unhandled")
		w.Header().Set("X-Amz-Executed-Version", "$LATEST")
		w.Write(body)
	case errors.Is(err, errSlowDown):
		w.Header().Set("Retry-After", "1")
		serviceError(w, http.StatusTooManyRequests, "TooManyRequestsException", "User", "Rate Exceeded.")
	case errors.Is(err, errThrottled):
		serviceError(w, http.StatusTooManyRequests, "TooManyRequestsException", "User", "Rate Exceeded.")
	case errors.Is(err, errUnavailable):
		serviceError(w, http.StatusInternalServerError, "ServiceException", "Service", "Internal error")
	case err != nil:
		panic(err)
	default:
		f.mu.Lock()
		f.results[name] = append(f.results[name], out)
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Amz-Executed-Version", "$LATEST")
		w.Write(out)
	}
}

// serviceError answers as the Lambda service does when it refuses an
// invocation.
func serviceError(w http.ResponseWriter, status int, code, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Amzn-ErrorType", code)
	w.WriteHeader(status)
	body, _ := json.Marshal(map[string]string{"Type": typ, "message": msg})
	w.Write(body)
}

// jsonOf returns v as JSON, for a function's result.
func jsonOf(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
