// A udpgate worker in JavaScript, written from the wire contract
// (schemas/README.md) alone, with only the NATS client packages
// @nats-io/transport-node and @nats-io/jetstream: no udpgate code, nothing
// generated. Every instance started with the same GROUP joins one worker
// group and shares its requests. It serves
//
//   - the raw listener on RAW_PORT: the reply is the datagram upper-cased;
//   - GET /greeting/{name} on the coap listener on COAP_PORT: 2.05, text
//     (Content-Format 0), "Hello, {name}".
//
// It prints "ready" once it consumes, then one line per request it answers.
// The gateway's tests run it (TestNodeWorker in gateway/contract_test.go).
//
//   npm ci
//   NATS_URL=nats://127.0.0.1:4222 RAW_PORT=9100 COAP_PORT=5684 GROUP=node-example node worker.mjs
import { connect, headers, nanos } from "@nats-io/transport-node";
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
} from "@nats-io/jetstream";

const natsURL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const rawPort = process.env.RAW_PORT ?? "9100";
const coapPort = process.env.COAP_PORT ?? "5684";
const group = process.env.GROUP ?? "node-example";
const stream = process.env.STREAM ?? "UDPGATE_IN"; // "The stream"
const prefix = process.env.PREFIX ?? "udpgate"; // UDPGATE_SUBJECT_PREFIX of the gateway

// "Subjects": PREFIX.in.PORT for a raw listener; for a coap listener the
// method and one (escaped) token per Uri-Path segment follow, so the group
// receives exactly the resources it serves.
const rawSubject = `${prefix}.in.${rawPort}`;
const greetingSubject = `${prefix}.in.${coapPort}.GET.greeting.*`;

const nc = await connect({ servers: natsURL });
const jsm = await jetstreamManager(nc);

// "Worker groups": a group is one durable pull consumer. The first instance
// creates it; every other instance binds to it as it is.
try {
  await jsm.consumers.info(stream, group);
} catch (err) {
  if (!(err instanceof JetStreamApiError && err.code === JetStreamApiCodes.ConsumerNotFound)) {
    throw err;
  }
  await jsm.consumers.add(stream, {
    durable_name: group,
    filter_subjects: [rawSubject, greetingSubject],
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.New, // a new group does not work through the capture
    ack_wait: nanos(2000), // how soon a crashed instance's request goes to another one
    max_deliver: 5,
  });
}
const consumer = await jetstream(nc).consumers.get(stream, group);
// Pull one message at a time: this loop handles one at a time, and a
// message waiting in a client-side buffer is on its ack-wait clock with
// nobody to say "in progress" ("Worker groups": pull only for idle handlers).
const messages = await consumer.consume({ max_messages: 1 });

// Stop on SIGTERM or SIGINT: the loop below finishes the messages already
// received, then the connection drains (flushing the last replies and acks).
// Anything not acknowledged is redelivered to another instance.
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.once(signal, () => messages.stop());
}
console.log("ready");

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// handle returns the reply to a request: its headers besides udpgate-id,
// and its body.
function handle(m) {
  const h = m.headers;
  if (m.subject === rawSubject) {
    // "Request messages": the body is the datagram, byte for byte (read
    // here as UTF-8 text, as this service expects).
    return { headers: {}, body: encoder.encode(decoder.decode(m.data).toUpperCase()) };
  }
  // "CoAP requests": udpgate-coap-path is "/greeting/NAME", each segment
  // percent-encoded. "Reply messages" to CoAP: the code and Content-Format
  // are headers, the body is the payload.
  const name = decodeURIComponent(h.get("udpgate-coap-path").split("/")[2]);
  return {
    headers: { "udpgate-coap-code": "2.05", "udpgate-coap-content-format": "0" },
    body: encoder.encode(`Hello, ${name}`),
  };
}

// "Worker groups", for each message: skip it if too late, else reply, then ack.
for await (const m of messages) {
  const h = m.headers;
  // udpgate-deadline is Unix time in milliseconds; absent counts as passed.
  if (!h || Number(h.get("udpgate-deadline")) <= Date.now()) {
    m.ack(); // too late: nobody is waiting for the answer
    continue;
  }
  const reply = handle(m);
  // "Reply messages": one core NATS message (not JetStream) to the
  // request's udpgate-reply subject, udpgate-id copied unchanged.
  const rh = headers();
  rh.set("udpgate-id", h.get("udpgate-id"));
  for (const [k, v] of Object.entries(reply.headers)) {
    rh.set(k, v);
  }
  nc.publish(h.get("udpgate-reply"), reply.body, { headers: rh });
  m.ack(); // after the reply, on the same connection: an ack implies the reply
  console.log(`replied ${m.subject}`);
}
await nc.drain();
