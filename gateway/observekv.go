package gateway

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/internal/ratelog"
	"github.com/udpgate/udpgate/schemas"
)

// ObserveBucket is where coap listeners keep their Observe registrations:
// a JetStream key-value bucket shared by the gateway nodes, one key per
// registration (schemas.ObserveKey). A gateway restarted with the same
// Node reads back, for each coap listener it starts, the registrations
// it held on that port, and goes on notifying their observers; Status
// and workers.Notifier.Observed read every node's from it.
type ObserveBucket struct {
	// Name is the bucket, created (or its settings updated) at Serve;
	// empty keeps the registrations in memory only.
	Name string
	// Replicas of the bucket's stream (1 if zero).
	Replicas int
	// TTL is how long a registration stays in the bucket unless written
	// again (DefaultObserveTTL if zero): the node writes each of its
	// registrations again every TTL/4, so the registrations of a node
	// that stopped for good vanish within TTL.
	TTL time.Duration
	// Queue bounds the writes waiting for the bucket
	// (DefaultObserveQueue if zero): the CoAP read loop never waits for
	// one; a write beyond is dropped, counted and logged.
	Queue int
}

// Defaults for the zero values of ObserveBucket.
const (
	DefaultObserveTTL   = time.Hour
	DefaultObserveQueue = 4096
)

// observeTimeout bounds one write to the bucket, and the reading of a
// listener's registrations at its start.
const observeTimeout = 5 * time.Second

// ObserveStats count the node's use of its Observe bucket.
type ObserveStats struct {
	// Bucket is the bucket's name; empty when the node keeps Observe
	// registrations in memory only.
	Bucket string
	// Held is how many registrations the node holds in the bucket.
	Held int
	// Puts and Deletes are the writes done: registrations stored (the
	// refreshes included) and ended; Refreshes the puts of the periodic
	// refresh.
	Puts, Deletes, Refreshes uint64
	// Failed counts the writes the bucket refused or did not
	// acknowledge, Dropped those not even tried because the queue was
	// full; a registration whose put failed is stored again at the next
	// refresh.
	Failed, Dropped uint64
	// Loaded counts the registrations read back at listener starts, and
	// LoadFailed the starts whose reading failed (their observers must
	// register again).
	Loaded, LoadFailed uint64
}

// observeStore keeps the node's Observe registrations in the bucket: it
// is every coap listener's coap.Registry. Register and Deregister, called
// on the edges' hot paths (under an edge's lock), only name the key,
// update held and queue the write; run encodes and writes.
// It is safe for concurrent use.
type observeStore struct {
	kv       jetstream.KeyValue
	bucket   string
	node     string
	prefix   string
	every    time.Duration // the refresh interval
	log      *slog.Logger
	failures *ratelog.Logger
	drops    *ratelog.Logger
	queue    chan kvWrite

	mu   sync.Mutex                   // guards held
	held map[string]coap.Registration // by key, every registration the node holds

	puts, deletes, refreshes, failed, dropped, loaded, loadFailed atomic.Uint64
}

// kvWrite is one write to the bucket: a put of reg, or a delete.
type kvWrite struct {
	key    string
	reg    coap.Registration
	delete bool
}

// openObserve makes sure of the bucket c names and returns the store
// that writes to it, or nil, with a line in the log, when registrations
// stay in memory: no bucket is configured, or JetStream refused it.
func openObserve(ctx context.Context, js jetstream.JetStream, c ObserveBucket, node, prefix string, log *slog.Logger) *observeStore {
	if c.Name == "" {
		log.Info("gateway: CoAP Observe registrations are kept in memory only (no UDPGATE_OBSERVE_BUCKET): a restart loses them")
		return nil
	}
	ttl := c.TTL
	if ttl <= 0 {
		ttl = DefaultObserveTTL
	}
	queue := c.Queue
	if queue <= 0 {
		queue = DefaultObserveQueue
	}
	cctx, cancel := context.WithTimeout(ctx, observeTimeout)
	defer cancel()
	kv, err := js.CreateOrUpdateKeyValue(cctx, jetstream.KeyValueConfig{
		Bucket:      c.Name,
		Description: "udpgate: the CoAP Observe registrations of every gateway node, PORT.NODE.RESOURCE.REGISTRATION",
		History:     1,
		TTL:         ttl,
		Replicas:    max(c.Replicas, 1),
	})
	if err != nil {
		log.Warn("gateway: CoAP Observe registrations are kept in memory only: the JetStream key-value bucket is not available; a restart loses them",
			"bucket", c.Name, "err", err)
		return nil
	}
	log.Info("gateway: CoAP Observe registrations are kept in a JetStream key-value bucket", "bucket", c.Name, "ttl", ttl)
	return &observeStore{
		kv: kv, bucket: c.Name, node: node, prefix: prefix, every: ttl / 4, log: log,
		failures: &ratelog.Logger{Log: log, Level: slog.LevelWarn,
			Msg: "gateway: writes to the Observe bucket failed (registrations are written again at the next refresh)"},
		drops: &ratelog.Logger{Log: log, Level: slog.LevelWarn,
			Msg: "gateway: writes to the Observe bucket dropped: too many waiting"},
		queue: make(chan kvWrite, queue),
		held:  map[string]coap.Registration{},
	}
}

// Register implements coap.Registry: it stores r. It does not block.
func (s *observeStore) Register(r coap.Registration) {
	key := s.key(r)
	s.mu.Lock()
	s.held[key] = r
	s.mu.Unlock()
	s.enqueue(kvWrite{key: key, reg: r})
}

// Deregister implements coap.Registry: it deletes r. It does not block.
func (s *observeStore) Deregister(r coap.Registration) {
	key := s.key(r)
	s.mu.Lock()
	delete(s.held, key)
	s.mu.Unlock()
	s.enqueue(kvWrite{key: key, delete: true})
}

// enqueue hands w to the writer, or drops it if too many wait.
func (s *observeStore) enqueue(w kvWrite) {
	select {
	case s.queue <- w:
	default:
		s.dropped.Add(1)
		s.drops.Add("bucket", s.bucket, "key", w.key)
	}
}

// subject returns the notify subject of resource on port.
func (s *observeStore) subject(port uint16, resource string) string {
	subject := schemas.NotifySubject(s.prefix, port, nil)
	if resource != "" {
		subject += "." + resource
	}
	return subject
}

// key returns r's key.
func (s *observeStore) key(r coap.Registration) string {
	return schemas.ObserveKey(r.Port, s.node, s.subject(r.Port, r.Resource), r.Peer.String(), r.Token)
}

// encode returns r's value.
func (s *observeStore) encode(r coap.Registration) []byte {
	subject := s.subject(r.Port, r.Resource)
	v := schemas.ObserveRegistration{
		Node: s.node, Port: r.Port, Subject: subject, Resource: r.Resource,
		Peer: r.Peer.String(), Token: hex.EncodeToString(r.Token), Op: r.Op,
		IfIndex: r.IfIndex, SZX: r.SZX, Registered: r.Registered.UTC(),
	}
	if r.Local.IsValid() {
		v.Local = r.Local.String()
	}
	b, _ := json.Marshal(v) // cannot fail: strings, numbers and a time
	return b
}

// decode returns the registration value holds.
func decode(value []byte) (coap.Registration, error) {
	var v schemas.ObserveRegistration
	if err := json.Unmarshal(value, &v); err != nil {
		return coap.Registration{}, err
	}
	peer, err := netip.ParseAddrPort(v.Peer)
	if err != nil {
		return coap.Registration{}, err
	}
	token, err := hex.DecodeString(v.Token)
	if err != nil {
		return coap.Registration{}, err
	}
	r := coap.Registration{
		Peer: peer, Token: token, Resource: v.Resource, Op: v.Op, IfIndex: v.IfIndex,
		Port: v.Port, SZX: v.SZX, Registered: v.Registered,
	}
	if v.Local != "" {
		if r.Local, err = netip.ParseAddrPort(v.Local); err != nil {
			return coap.Registration{}, err
		}
	}
	return r, nil
}

// load returns the registrations the node holds on port, as the bucket
// has them: a listener about to start restores their observers
// (coap.Config.Restore). A value that does not decode is deleted.
func (s *observeStore) load(ctx context.Context, port uint16) ([]coap.Registration, error) {
	ctx, cancel := context.WithTimeout(ctx, observeTimeout)
	defer cancel()
	w, err := s.kv.Watch(ctx, schemas.ObserveNodeFilter(port, s.node), jetstream.IgnoreDeletes())
	if err != nil {
		s.loadFailed.Add(1)
		return nil, fmt.Errorf("gateway: read the Observe registrations of port %d: %w", port, err)
	}
	defer w.Stop()
	var out []coap.Registration
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok || e == nil { // nil: every value there is was read
				s.loaded.Add(uint64(len(out)))
				return out, nil
			}
			r, err := decode(e.Value())
			if err != nil || r.Port != port {
				s.enqueue(kvWrite{key: e.Key(), delete: true})
				continue
			}
			out = append(out, r)
		case <-ctx.Done():
			s.loadFailed.Add(1)
			return nil, fmt.Errorf("gateway: read the Observe registrations of port %d: %w", port, ctx.Err())
		}
	}
}

// forgetPort stops refreshing the registrations of port, whose listener
// has stopped, without deleting them: a listener started again on the
// port within the bucket's TTL restores them.
func (s *observeStore) forgetPort(port uint16) {
	prefix := strconv.FormatUint(uint64(port), 10) + "."
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.held {
		if strings.HasPrefix(k, prefix) {
			delete(s.held, k)
		}
	}
}

// run writes what is queued, and every TTL/4 writes every registration
// the node holds again, until ctx ends; then it writes what is left in
// the queue, for a few seconds at most.
func (s *observeStore) run(ctx context.Context) {
	t := time.NewTicker(s.every)
	defer t.Stop()
	defer s.failures.Flush()
	defer s.drops.Flush()
	for {
		select {
		case w := <-s.queue:
			s.write(ctx, w)
		case <-t.C:
			s.refresh(ctx)
		case <-ctx.Done():
			last, cancel := context.WithTimeout(context.WithoutCancel(ctx), observeTimeout)
			defer cancel()
			for {
				select {
				case w := <-s.queue:
					s.write(last, w)
				default:
					return
				}
			}
		}
	}
}

// write does w, counting and logging a failure.
func (s *observeStore) write(ctx context.Context, w kvWrite) {
	if ctx.Err() != nil {
		s.failed.Add(1)
		return
	}
	wctx, cancel := context.WithTimeout(ctx, observeTimeout)
	defer cancel()
	var err error
	if w.delete {
		err = s.kv.Delete(wctx, w.key)
	} else {
		_, err = s.kv.Put(wctx, w.key, s.encode(w.reg))
	}
	switch {
	case err != nil && w.delete && errors.Is(err, jetstream.ErrKeyNotFound):
	case err != nil && errors.Is(err, context.Canceled):
		// The node is stopping: what is left is written at the next
		// start's refresh, or expires; no warning for it.
		s.failed.Add(1)
	case err != nil:
		s.failed.Add(1)
		s.failures.Add("bucket", s.bucket, "key", w.key, "err", err)
	case w.delete:
		s.deletes.Add(1)
	default:
		s.puts.Add(1)
	}
}

// refresh writes every registration the node holds again, so that the
// bucket's TTL does not remove them.
func (s *observeStore) refresh(ctx context.Context) {
	s.mu.Lock()
	all := make([]kvWrite, 0, len(s.held))
	for k, r := range s.held {
		all = append(all, kvWrite{key: k, reg: r})
	}
	s.mu.Unlock()
	for _, w := range all {
		if ctx.Err() != nil {
			return
		}
		s.write(ctx, w)
		s.refreshes.Add(1)
	}
}

// stats returns the store's counts; zero, but for the bucket, for a nil
// store.
func (s *observeStore) stats() ObserveStats {
	if s == nil {
		return ObserveStats{}
	}
	s.mu.Lock()
	held := len(s.held)
	s.mu.Unlock()
	return ObserveStats{
		Bucket: s.bucket, Held: held,
		Puts: s.puts.Load(), Deletes: s.deletes.Load(), Refreshes: s.refreshes.Load(),
		Failed: s.failed.Load(), Dropped: s.dropped.Load(),
		Loaded: s.loaded.Load(), LoadFailed: s.loadFailed.Load(),
	}
}

// ObservedResource is a CoAP resource that has Observe registrations, as
// the Observe bucket lists them across the gateway nodes.
type ObservedResource struct {
	Port uint16 `json:"port"`
	// Resource is the path ("/sensors/1"), and Subject its notify
	// subject.
	Resource string `json:"resource"`
	Subject  string `json:"subject"`
	// Observers is how many registrations it has, and Nodes how many each
	// node holds.
	Observers int            `json:"observers"`
	Nodes     map[string]int `json:"nodes"`
}

// observed lists the resources with registrations in the bucket, of
// every node under the gateway's prefix, by port then path.
func (s *observeStore) observed(ctx context.Context) ([]ObservedResource, error) {
	ctx, cancel := context.WithTimeout(ctx, observeTimeout)
	defer cancel()
	l, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("gateway: list the Observe bucket: %w", err)
	}
	defer l.Stop()
	type res struct {
		port    uint16
		subject string
	}
	by := map[res]*ObservedResource{}
	for key := range l.Keys() {
		port, node, subject, ok := schemas.ParseObserveKey(key)
		base := schemas.NotifySubject(s.prefix, port, nil)
		if !ok || subject != base && !strings.HasPrefix(subject, base+".") {
			continue
		}
		o := by[res{port, subject}]
		if o == nil {
			o = &ObservedResource{Port: port, Resource: resourcePath(subject[len(base):]), Subject: subject, Nodes: map[string]int{}}
			by[res{port, subject}] = o
		}
		o.Observers++
		o.Nodes[node]++
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("gateway: list the Observe bucket: %w", ctx.Err())
	}
	out := make([]ObservedResource, 0, len(by))
	for _, o := range by {
		out = append(out, *o)
	}
	slices.SortFunc(out, func(a, b ObservedResource) int {
		if a.Port != b.Port {
			return int(a.Port) - int(b.Port)
		}
		return strings.Compare(a.Resource, b.Resource)
	})
	return out, nil
}

// resourcePath returns the path of a notify subject's path tokens (each
// after a "."): its segments unescaped, a "/" or "%" in one
// percent-encoded.
func resourcePath(tokens string) string {
	if tokens == "" {
		return "/"
	}
	var b strings.Builder
	for tok := range strings.SplitSeq(tokens[1:], ".") {
		seg, ok := schemas.UnescapeToken(tok)
		if !ok {
			seg = tok
		}
		b.WriteByte('/')
		b.WriteString(strings.NewReplacer("%", "%25", "/", "%2F").Replace(seg))
	}
	return b.String()
}
