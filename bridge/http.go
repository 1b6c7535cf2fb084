package bridge

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Request bodies larger than these are refused: a bind's is a few
// fields, a send's one datagram in base64.
const (
	maxBindBody = 4 << 10
	maxSendBody = 128 << 10
)

// sseWriteTimeout bounds one write to an SSE stream: a reader that stops
// reading loses its stream, not a goroutine for ever.
const sseWriteTimeout = 30 * time.Second

// Handler returns the HTTP API, every path under /v1/udp/ (mount it
// there). Each request needs Config.Token as a bearer token; the SSE
// stream also takes it as the access_token query parameter (RFC 6750
// §2.3), since a browser's EventSource cannot set headers.
func (b *Bridge) Handler() http.Handler {
	b.init()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/udp/bind", b.serveBind)
	mux.HandleFunc("DELETE /v1/udp/bind/{id}", b.serveDelete)
	mux.HandleFunc("GET /v1/udp/recv/{id}", b.serveRecv)
	mux.HandleFunc("POST /v1/udp/send/{id}", b.serveSend)
	mux.HandleFunc("POST /v1/udp/heartbeat/{id}", b.serveHeartbeat)
	mux.HandleFunc("GET /v1/udp/status", b.serveStatus)
	mux.HandleFunc("/v1/udp/", func(w http.ResponseWriter, r *http.Request) {
		b.fail(w, errorf(reasonNotFound, "no such operation: %s %s (see docs/bridge.md)", r.Method, r.URL.Path))
	})
	return b.authorize(mux)
}

// authorize lets through the requests that carry the token.
func (b *Bridge) authorize(next http.Handler) http.Handler {
	want := sha256.Sum256([]byte(b.Config.Token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case !b.Config.On():
			b.fail(w, errorf(reasonOff, "leased listeners are off on node %s: UDPGATE_BRIDGE_PORTS is empty", b.Node))
			return
		case b.Config.Token == "":
			b.fail(w, errorf(reasonOff, "leased listeners over HTTP are off on node %s: UDPGATE_BRIDGE_TOKEN is empty", b.Node))
			return
		}
		token, ok := bearer(r)
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="udpgate"`)
			b.fail(w, errorf(reasonUnauthorized, "no bearer token: send Authorization: Bearer TOKEN"))
			return
		}
		// Hashes of equal length, compared in constant time: neither the
		// token nor its length shows in the time taken.
		got := sha256.Sum256([]byte(token))
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="udpgate", error="invalid_token"`)
			b.fail(w, errorf(reasonUnauthorized, "wrong bearer token"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// bearer returns the request's bearer token: the Authorization header's,
// or for an SSE stream the access_token query parameter.
func bearer(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
			return "", false
		}
		return strings.TrimSpace(token), true
	}
	if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/udp/recv/") {
		if t := r.URL.Query().Get("access_token"); t != "" {
			return t, true
		}
	}
	return "", false
}

// fail answers e as JSON and counts it.
func (b *Bridge) fail(w http.ResponseWriter, e *Error) {
	b.count(KindHTTP, e)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if e.RetryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((e.RetryAfter+time.Second-1)/time.Second)))
	}
	w.WriteHeader(e.Status)
	w.Write(append(e.body(), '\n'))
}

// count counts a refusal of a request of kind.
func (b *Bridge) count(kind string, e *Error) {
	b.refused[kindIndex(kind)][reasonIndex(e.Reason)].Add(1)
}

func reply(w http.ResponseWriter, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(append(body, '\n'))
}

// readBody reads at most limit bytes of r's body.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *Error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, errorf(reasonBadRequest, "body larger than %d bytes", limit)
		}
		return nil, errorf(reasonBadRequest, "reading the body: %v", err)
	}
	return body, nil
}

func (b *Bridge) serveBind(w http.ResponseWriter, r *http.Request) {
	body, e := readBody(w, r, maxBindBody)
	if e != nil {
		b.fail(w, e)
		return
	}
	req, e := DecodeBind(body)
	if e != nil {
		b.fail(w, e)
		return
	}
	info, e := b.Bind(r.Context(), KindHTTP, req)
	if e != nil {
		b.fail(w, e)
		return
	}
	reply(w, info)
}

func (b *Bridge) serveDelete(w http.ResponseWriter, r *http.Request) {
	if e := b.Delete(r.Context(), r.PathValue("id")); e != nil {
		b.fail(w, e)
		return
	}
	reply(w, map[string]string{"status": "unbound"})
}

func (b *Bridge) serveHeartbeat(w http.ResponseWriter, r *http.Request) {
	info, e := b.Heartbeat(r.PathValue("id"))
	if e != nil {
		b.fail(w, e)
		return
	}
	reply(w, heartbeatReply{Status: "ok", LastHeartbeat: info.LastHeartbeat, ExpiresAt: info.ExpiresAt})
}

// heartbeatReply answers a heartbeat.
type heartbeatReply struct {
	Status        string    `json:"status"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	ExpiresAt     time.Time `json:"expires_at"`
}

func (b *Bridge) serveSend(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if _, e := b.lookup(id); e != nil {
		b.fail(w, e)
		return
	}
	body, e := readBody(w, r, maxSendBody)
	if e != nil {
		b.fail(w, e)
		return
	}
	_, dest, payload, e := DecodeSend(body)
	if e != nil {
		b.fail(w, e)
		return
	}
	n, e := b.Send(id, dest, payload)
	if e != nil {
		b.fail(w, e)
		return
	}
	reply(w, map[string]int{"bytes_sent": n})
}

func (b *Bridge) serveStatus(w http.ResponseWriter, r *http.Request) {
	reply(w, b.Status())
}

// Event is the data of one SSE event of type datagram: one datagram the
// binding received.
type Event struct {
	BindingID  string    `json:"binding_id"`
	Src        string    `json:"src"`
	Payload    string    `json:"payload"` // base64, standard alphabet, padded
	ReceivedAt time.Time `json:"received_at"`
}

// Closed is the data of the last SSE event of a stream, of type closed:
// why the binding closed (deleted, expired or stopped).
type Closed struct {
	BindingID string `json:"binding_id"`
	Reason    string `json:"reason"`
}

// serveRecv streams the binding's datagrams as Server-Sent Events: an
// event "datagram" each, a comment every KeepAlive, and a last event
// "closed" when the binding closes.
func (b *Bridge) serveRecv(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	bd, e := b.lookup(id)
	if e != nil {
		b.fail(w, e)
		return
	}
	rd := bd.addReader()
	if rd == nil {
		b.fail(w, errorf(reasonReaderCap, "binding %s has its most SSE streams, %d", id, max(bd.maxReaders, DefaultMaxReaders)))
		return
	}
	defer bd.removeReader(rd)
	b.readers.Add(1)
	defer b.readers.Add(-1)

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	var buf []byte
	write := func(p []byte) bool {
		rc.SetWriteDeadline(time.Now().Add(sseWriteTimeout))
		if _, err := w.Write(p); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	event := func(d datagram) bool {
		buf = appendEvent(buf[:0], "datagram", Event{
			BindingID: id, Src: d.src.String(), Payload: base64.StdEncoding.EncodeToString(d.data), ReceivedAt: d.at.UTC(),
		})
		return write(buf)
	}
	if !write([]byte(": udpgate bridge: binding " + id + " on " + bd.local.String() + "\n\n")) {
		return
	}
	keep := b.KeepAlive
	if keep <= 0 {
		keep = DefaultKeepAlive
	}
	tick := time.NewTicker(keep)
	defer tick.Stop()
	for {
		select {
		case d := <-rd.c:
			if !event(d) {
				return
			}
		case <-tick.C:
			if !write([]byte(": keepalive\n\n")) {
				return
			}
		case <-bd.done:
			for { // what arrived before it closed
				select {
				case d := <-rd.c:
					if !event(d) {
						return
					}
					continue
				default:
				}
				break
			}
			write(appendEvent(buf[:0], "closed", Closed{BindingID: id, Reason: bd.closedBecause()}))
			return
		case <-r.Context().Done():
			return
		}
	}
}

// appendEvent appends one SSE event of type typ whose data is v as JSON
// (one line: JSON escapes newlines in strings).
func appendEvent(dst []byte, typ string, v any) []byte {
	data, _ := json.Marshal(v)
	dst = append(dst, "event: "...)
	dst = append(dst, typ...)
	dst = append(dst, "\ndata: "...)
	dst = append(dst, data...)
	return append(dst, "\n\n"...)
}
