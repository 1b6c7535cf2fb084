// Package builtin holds the workers that ship with udpgate, for tests,
// demos and health checks, and a registry to find them by name. Every
// handler here is safe for concurrent use.
package builtin

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"time"

	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/workers"
)

// textPlain is the CoAP Content-Format of text/plain;charset=utf-8.
const textPlain = 0

// Echo answers every request with its body, unchanged; an empty request
// gets an empty reply. The reply to a CoAP request has the request's
// Content-Format, if it has one.
var Echo workers.Handler = workers.HandlerFunc(func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
	if r.CoAP != nil {
		workers.NewCoAPResponse(w).SetContentFormat(r.CoAP.ContentFormat)
	}
	_, err := w.Write(r.Body)
	return err
})

// Time answers with the current time. A request whose body is a JSON array
// of exactly two elements, [id, anything], gets the JSON array
// [id, "The time is TIME"], with id copied byte for byte; any other request
// gets TIME as plain text. TIME is RFC 3339 in UTC, to the second. A CoAP
// request always gets TIME, as text/plain;charset=utf-8 (Content-Format 0).
// Registered with Mux.Observable, as CoAP's Mux registers it, a CoAP GET
// with Observe 0 is accepted as a registration: NotifyTime publishes the
// notifications.
//
// The zero Time uses time.Now.
type Time struct {
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// Handle writes the time to w.
func (t Time) Handle(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
	now := time.Now
	if t.Now != nil {
		now = t.Now
	}
	stamp := now().UTC().Format(time.RFC3339)
	if r.CoAP != nil {
		workers.NewCoAPResponse(w).SetContentFormat(textPlain)
		_, err := w.Write([]byte(stamp))
		return err
	}
	var call []json.RawMessage
	if json.Unmarshal(r.Body, &call) != nil || len(call) != 2 {
		_, err := w.Write([]byte(stamp))
		return err
	}
	text, err := json.Marshal("The time is " + stamp)
	if err != nil {
		return err
	}
	reply := make([]byte, 0, len(call[0])+len(text)+3)
	reply = append(reply, '[')
	reply = append(reply, call[0]...)
	reply = append(reply, ',')
	reply = append(reply, text...)
	reply = append(reply, ']')
	_, err = w.Write(reply)
	return err
}

// CoAP returns a new Mux serving the built-in CoAP resources:
//
//   - GET /time: the current time, from time.Now, as Time answers it,
//     observable (Mux.Observable): NotifyTime publishes its
//     notifications;
//   - POST /echo: the request's payload and Content-Format, as Echo
//     answers it, with code 2.05 Content;
//   - GET /hello: "Hello from udpgate", text/plain;charset=utf-8.
//
// It announces the three with their Content-Formats and resource types
// (SetLinks; /time with obs too), and leaves GET /.well-known/core to the
// gateway, which lists them with every other group's resources on the
// port. With the Subjects
// of the Mux (see Subjects), the group receives only these three; the
// gateway answers other paths 4.04 and other methods 4.05 itself. To read
// the time from another clock, register Time{Now: clock} with Observable
// on a Mux of your own.
func CoAP() *workers.Mux {
	m := workers.NewMux()
	m.Observable("GET /time", Time{})
	m.Route("POST /echo", Echo)
	m.RouteFunc("GET /hello", hello)
	m.SetLinks(workers.Links{
		"/time":  `rt="time";ct=0`,
		"/echo":  `rt="echo"`,
		"/hello": `rt="hello";ct=0`,
	})
	return m
}

func hello(_ context.Context, w workers.ResponseWriter, _ *workers.Request) error {
	res := workers.NewCoAPResponse(w)
	res.SetContentFormat(textPlain)
	_, err := res.Write([]byte("Hello from udpgate"))
	return err
}

// registry maps the names of the built-in workers to their handlers.
var registry = map[string]workers.Handler{
	"coap":   CoAP(),
	"echo":   Echo,
	"places": Places{},
	"time":   Time{},
}

// Lookup returns the built-in worker called name: "coap", "echo",
// "places" or "time".
func Lookup(name string) (workers.Handler, bool) {
	h, ok := registry[name]
	return h, ok
}

// Names returns the names of the built-in workers, sorted.
func Names() []string {
	return slices.Sorted(maps.Keys(registry))
}

// Subjects returns the subjects the built-in worker called name serves on
// a listener of port, with the subject prefix: exactly its resources or
// methods, never a catch-all, so that other groups can serve the rest of
// the port and the gateway answers what nobody serves. A raw worker
// serves the whole port. Nil for an unknown name.
func Subjects(name, prefix string, port uint16) []string {
	switch h := registry[name].(type) {
	case nil:
		return nil
	case *workers.Mux:
		return h.Subjects(prefix, port)
	case Places:
		return []string{schemas.RPCSubject(prefix, port, PlacesService, PlacesMethod)}
	default:
		return []string{schemas.InSubject(prefix, port)}
	}
}
