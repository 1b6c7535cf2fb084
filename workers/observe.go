package workers

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
)

// Representation is a resource's state as a CoAP notification carries
// it (RFC 7641): the code (Content if empty), the Content-Format (-1:
// none; 0 is text/plain), Max-Age (0: none, which CoAP reads as 60 s),
// the ETag (none if nil) and the payload.
type Representation struct {
	Code          Code
	ContentFormat int
	MaxAge        time.Duration
	ETag          []byte
	Body          []byte
}

// Notifier publishes new representations of the observable resources of
// a coap listener (Mux.Observable): every gateway node holding observers
// of a resource notifies each of them. Any process with a NATS connection
// may notify, not only the instance that accepted a registration, so a
// horizontally scaled group notifies from whichever instance learns of a
// change. Set its fields; it is safe for concurrent use.
type Notifier struct {
	NATS   *nats.Conn // required
	Prefix string     // schemas.DefaultPrefix if empty
	Port   uint16     // the coap listener's port; required
	// Bucket is the gateways' Observe bucket, UDPGATE_OBSERVE_BUCKET
	// (schemas.DefaultObserveBucket if empty), which Observed reads.
	Bucket string
}

// Observed reports whether resource, a path as Notify takes it, has
// observers on any gateway node that keeps its registrations in the
// Observe bucket: a worker need not compute a representation nobody
// observes. It lists the keys of the resource's registrations
// (schemas.ObserveResourceFilter) and stops at the first. A registration
// stays in the bucket a little after its observer has gone (until the
// gateway has deleted it), and one a node kept in memory only is not
// there: Notify all the same when in doubt.
func (n *Notifier) Observed(ctx context.Context, resource string) (bool, error) {
	m, err := n.message(resource, Representation{ContentFormat: -1})
	if err != nil {
		return false, err
	}
	js, err := jetstream.New(n.NATS)
	if err != nil {
		return false, fmt.Errorf("workers: observed %s: %w", resource, err)
	}
	bucket := n.Bucket
	if bucket == "" {
		bucket = schemas.DefaultObserveBucket
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return false, fmt.Errorf("workers: observed %s: bucket %s: %w", resource, bucket, err)
	}
	l, err := kv.ListKeysFiltered(ctx, schemas.ObserveResourceFilter(n.Port, m.Subject))
	if err != nil {
		return false, fmt.Errorf("workers: observed %s: %w", resource, err)
	}
	defer l.Stop()
	_, ok := <-l.Keys()
	if !ok && ctx.Err() != nil {
		return false, fmt.Errorf("workers: observed %s: %w", resource, ctx.Err())
	}
	return ok, nil
}

// Notify publishes rep as the new representation of resource, a path
// ("/sensors/1", each segment percent-encoded if it holds a "/"), on its
// notify subject (schemas.NotifySubject). A 4.xx or 5.xx Code ends every
// registration it reaches (RFC 7641 §3.2). It returns once the NATS
// server has the message (or ctx ends).
func (n *Notifier) Notify(ctx context.Context, resource string, rep Representation) error {
	m, err := n.message(resource, rep)
	if err != nil {
		return err
	}
	if err := n.NATS.PublishMsg(m); err != nil {
		return fmt.Errorf("workers: notify %s: %w", resource, err)
	}
	if err := n.NATS.FlushWithContext(ctx); err != nil {
		return fmt.Errorf("workers: notify %s: %w", resource, err)
	}
	return nil
}

// NotifyCount is Notify as a NATS request: it returns how many observers
// the first gateway node that answers notified (each node answers for its
// own; with one node, the resource's observers). ErrNoObservers: no node
// serves the port.
func (n *Notifier) NotifyCount(ctx context.Context, resource string, rep Representation) (int, error) {
	m, err := n.message(resource, rep)
	if err != nil {
		return 0, err
	}
	a, err := n.NATS.RequestMsgWithContext(ctx, m)
	if errors.Is(err, nats.ErrNoResponders) {
		return 0, ErrNoObservers
	}
	if err != nil {
		return 0, fmt.Errorf("workers: notify %s: %w", resource, err)
	}
	count, err := strconv.Atoi(a.Header.Get(schemas.HeaderCoAPObservers))
	if err != nil {
		return 0, fmt.Errorf("workers: notify %s: bad answer %v", resource, a.Header)
	}
	return count, nil
}

// ErrNoObservers is NotifyCount's error when no gateway node serves the
// listener's port.
var ErrNoObservers = errors.New("workers: no gateway node serves the port")

// message returns the notification of rep for resource.
func (n *Notifier) message(resource string, rep Representation) (*nats.Msg, error) {
	if !strings.HasPrefix(resource, "/") {
		return nil, fmt.Errorf("workers: notify: resource %q is not a path", resource)
	}
	segs, ok := parsePath(resource)
	if !ok {
		return nil, fmt.Errorf("workers: notify: resource %q is not a percent-encoded path", resource)
	}
	prefix := n.Prefix
	if prefix == "" {
		prefix = schemas.DefaultPrefix
	}
	m := nats.NewMsg(schemas.NotifySubject(prefix, n.Port, segs))
	if rep.Code != "" {
		if _, err := ParseCode(string(rep.Code)); err != nil {
			return nil, fmt.Errorf("workers: notify %s: %w", resource, err)
		}
		m.Header.Set(schemas.HeaderCoAPCode, string(rep.Code))
	}
	if rep.ContentFormat >= 0 {
		if rep.ContentFormat > 65535 {
			return nil, fmt.Errorf("workers: notify %s: Content-Format %d is above 65535", resource, rep.ContentFormat)
		}
		m.Header.Set(schemas.HeaderCoAPContentFormat, strconv.Itoa(rep.ContentFormat))
	}
	if rep.MaxAge > 0 {
		m.Header.Set(schemas.HeaderCoAPMaxAge, strconv.FormatInt(int64(min(rep.MaxAge/time.Second, maxMaxAge)), 10))
	}
	if rep.ETag != nil {
		if len(rep.ETag) < 1 || len(rep.ETag) > 8 {
			return nil, fmt.Errorf("workers: notify %s: an ETag has 1 to 8 bytes, not %d", resource, len(rep.ETag))
		}
		m.Header.Set(schemas.HeaderCoAPETag, hex.EncodeToString(rep.ETag))
	}
	m.Data = rep.Body
	return m, nil
}
