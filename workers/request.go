package workers

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/schemas"
)

// parseRequest builds the Request of a request message whose reply
// subject is reply (empty for a message read from the capture stream:
// the udpgate-reply header says it then). It never fails: a missing or
// malformed header leaves its field zero, and the returned error, if not
// nil, lists every malformed header for a Debug log. A missing reply
// subject is reported too, since no reply can be sent.
func parseRequest(subject, reply string, h nats.Header, body []byte) (*Request, error) {
	r := &Request{
		ID:      h.Get(schemas.HeaderID),
		Subject: subject,
		Reply:   reply,
		Body:    body,
		Header:  h,
	}
	if r.Reply == "" {
		r.Reply = h.Get(schemas.HeaderReply)
	}
	var errs []error
	if r.Reply == "" {
		errs = append(errs, fmt.Errorf("missing %s", schemas.HeaderReply))
	}
	if v := h.Get(schemas.HeaderSource); v != "" {
		node, port, proto, ok := schemas.ParseSource(v)
		if ok {
			r.Node, r.Port, r.Protocol, r.Listener = node, port, proto, schemas.Listener(port, proto)
		} else {
			errs = append(errs, fmt.Errorf("bad %s %q", schemas.HeaderSource, v))
		}
	}
	var err error
	if r.Remote, err = parseAddrPort(h, schemas.HeaderRemote); err != nil {
		errs = append(errs, err)
	}
	if r.Local, err = parseAddrPort(h, schemas.HeaderLocal); err != nil {
		errs = append(errs, err)
	}
	if v := h.Get(schemas.HeaderTime); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			errs = append(errs, fmt.Errorf("bad %s %q", schemas.HeaderTime, v))
		} else {
			r.Received = t
		}
	}
	if v := h.Get(schemas.HeaderDeadline); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms <= 0 {
			errs = append(errs, fmt.Errorf("bad %s %q", schemas.HeaderDeadline, v))
		} else {
			r.Deadline = time.UnixMilli(ms)
		}
	}
	if isCoAP(h, r.Protocol) {
		var cerrs []error
		r.CoAP, cerrs = parseCoAP(h)
		errs = append(errs, cerrs...)
	}
	if r.Protocol == schemas.ProtocolRPC || h.Get(schemas.HeaderType) == schemas.TypeRPC {
		var err error
		r.RPC, err = parseRPC(h)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return r, errors.Join(errs...)
}

// parseAddrPort parses the ip:port in header key; a missing header is the
// zero AddrPort and no error.
func parseAddrPort(h nats.Header, key string) (netip.AddrPort, error) {
	v := h.Get(key)
	if v == "" {
		return netip.AddrPort{}, nil
	}
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad %s %q", key, v)
	}
	return ap, nil
}
