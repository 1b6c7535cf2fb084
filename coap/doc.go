// Package coap is udpgate's CoAP edge: the RFC 7252 messaging layer and
// RFC 7959 block-wise transfer, run by the gateway so that workers see
// complete requests and answer with a code and a body, nothing more.
//
// Ingress passes every datagram of a coap listener to Edge.Receive, which
// answers at once what the gateway answers itself (pings, duplicates,
// malformed or unsupported requests, Block1 continuations, further Block2
// blocks) and returns the requests to publish. Each published request
// carries a *Request, which egress calls (as an exchange.Replier) with the
// worker's reply or with the reason none will come. The messaging layer:
//
//   - a CON request answered within Piggyback gets its response in the ACK;
//     otherwise an empty ACK goes out when Piggyback elapses and the
//     response follows as a CON, retransmitted with RFC 7252's backoff until
//     the client acknowledges or resets it;
//   - a NON request gets a NON response;
//   - a duplicate (same peer, message id and bytes) within
//     EXCHANGE_LIFETIME is answered from a bounded cache and never published
//     again; the same message id with other bytes is dropped;
//   - an empty CON (ping) gets a RST; a CON that does not parse gets a RST;
//     anything else that does not parse is dropped and counted;
//   - a GET with Observe 0 whose worker accepts it registers its client as
//     an observer (RFC 7641); Notify sends the observers of a resource a
//     notification, as a NON, and as a CON at least every
//     ObserveCONEvery notifications, retransmitted like a separate
//     response; Observe 1, a RST, an unacknowledged CON or an error
//     notification ends the registration;
//   - unrecognised critical options get 4.02, Proxy-Uri 5.05, unknown
//     methods 4.05, a path too long for a NATS subject 4.00; no reply
//     before the deadline 5.04; no NATS 5.03.
//
// The gateway's own messages never carry more bytes than the datagram that
// caused them, except responses from workers.
package coap
