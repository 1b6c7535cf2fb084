package schemas

import "time"

// Admission control for durable groups (schemas/README.md, "Shedding at
// the door"). A durable group's requests wait in the capture stream,
// oldest first, where no gateway sees how long they wait; its instances
// do. An instance that finds its requests waiting for more than half of
// the time they have to spare publishes an Overload to OverloadSubject,
// again while it lasts; every gateway node subscribes, and answers new
// requests on the group's subjects at once with the protocol's overload
// status (CoAP 5.03 with Max-Age, RPC STATUS_RESOURCE_EXHAUSTED; raw:
// nothing) instead of publishing them, until the Overload lapses or a
// later one of the same instance clears it. Their capture copies are
// still stored, with HeaderShed; workers skip them.

// HeaderShed, set to "1" on a request's capture copy, says that the
// gateway shed the request when it arrived and answered it itself: a
// worker must not answer it (an answer would be dropped as late), and a
// durable worker acks it without calling its handler.
const HeaderShed = "udpgate-shed"

// OverloadSubject returns the subject durable instances publish Overload
// messages to: PREFIX.overload.
func OverloadSubject(prefix string) string { return prefix + ".overload" }

// Overload is the JSON body of a message to OverloadSubject.
type Overload struct {
	// Group and Instance name the sender: an instance's Overload replaces
	// its previous one.
	Group    string `json:"group"`
	Instance string `json:"instance"`
	// Subjects are the group's subject filters (PREFIX.in.…): the
	// requests to shed.
	Subjects []string `json:"subjects"`
	// ShedMillis is how long, from its receipt, gateways shed those
	// requests; 0 stops it at once.
	ShedMillis int64 `json:"shed_ms"`
	// RetryMillis is when a client's retry is sensible, in milliseconds:
	// a CoAP overload answer's Max-Age, rounded up to whole seconds.
	RetryMillis int64 `json:"retry_ms,omitempty"`
}

// ShedFor returns o.ShedMillis as a duration.
func (o Overload) ShedFor() time.Duration { return time.Duration(o.ShedMillis) * time.Millisecond }

// RetryAfter returns o.RetryMillis as a duration.
func (o Overload) RetryAfter() time.Duration { return time.Duration(o.RetryMillis) * time.Millisecond }
