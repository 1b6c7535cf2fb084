// A udpgate worker in JavaScript, written from the wire contract
// (schemas/README.md) alone, with only the NATS client package
// @nats-io/transport-node: no udpgate code, nothing generated, no
// JetStream. It is a direct worker group: a plain queue subscription that
// answers with msg.respond. Every instance started with the same GROUP
// joins the group and shares its requests. It serves
//
//   - the raw listener on RAW_PORT: the reply is the datagram upper-cased;
//   - GET /greeting/{name}[?greeting=TEXT] on the coap listener on COAP_PORT: 2.05, text
//     (Content-Format 0), "Hello, {name}".
//
// It announces the group through NATS's service discovery, answering
// $SRV.PING, INFO and STATS by hand as a nats micro service named GROUP,
// so that `nats micro ls` and `nats micro stats` list it, and the gateway
// lists its CoAP resources (metadata udpgate.coap.links) in the port's
// /.well-known/core and in `udpgate status`.
//
// It prints "ready" once it is subscribed, then one line per request it
// answers. The gateway's tests run it (TestNodeWorker in
// gateway/contract_test.go).
//
//   npm ci
//   NATS_URL=nats://127.0.0.1:4222 RAW_PORT=9100 COAP_PORT=5684 GROUP=node-example node worker.mjs
import { connect, headers } from "@nats-io/transport-node";

const natsURL = process.env.NATS_URL ?? "nats://127.0.0.1:4222";
const rawPort = process.env.RAW_PORT ?? "9100";
const coapPort = process.env.COAP_PORT ?? "5684";
const group = process.env.GROUP ?? "node-example";
const prefix = process.env.PREFIX ?? "udpgate"; // UDPGATE_SUBJECT_PREFIX of the gateway

// "Subjects": PREFIX.in.PORT for a raw listener; for a coap listener the
// method and one (escaped) token per Uri-Path segment follow, so the group
// receives exactly the resources it serves.
const rawSubject = `${prefix}.in.${rawPort}`;
const greetingSubject = `${prefix}.in.${coapPort}.GET.greeting.*`;

const nc = await connect({ servers: natsURL });
const encoder = new TextEncoder();
const decoder = new TextDecoder();

// "Direct groups": one queue subscription per subject, the queue named
// after the group; each request goes to one instance of the group.
const endpoints = [
  { name: "raw", subject: rawSubject, queue_group: group, metadata: {} },
  { name: "greeting", subject: greetingSubject, queue_group: group, metadata: {} },
];
const subs = endpoints.map((e) => nc.subscribe(e.subject, { queue: group }));

// "Announcing a group": answer NATS's service discovery as a micro
// service named after the group, so that `nats micro ls` lists it.
const identity = {
  name: group,
  id: Array.from(crypto.getRandomValues(new Uint8Array(11)), (b) => b.toString(16).padStart(2, "0")).join(""),
  version: "1.0.0",
  metadata: {
    "udpgate.delivery": "direct",
    // The CoAP resources, in CoRE Link Format (RFC 6690), for the port's
    // /.well-known/core. The greeting subject ends in a wildcard, so the
    // link names one concrete path as an example.
    "udpgate.coap.links": '</greeting/world>;rt="greeting";ct=0',
  },
};
const started = new Date().toISOString(); // RFC 3339
// Per endpoint: requests handled, and the time spent on them in
// nanoseconds, as nats micro counts them.
const stats = endpoints.map(() => ({ requests: 0, nanos: 0 }));
const answers = {
  PING: () => ({ ...identity, type: "io.nats.micro.v1.ping_response" }),
  INFO: () => ({ ...identity, type: "io.nats.micro.v1.info_response", description: "udpgate example worker", endpoints }),
  STATS: () => ({
    ...identity,
    type: "io.nats.micro.v1.stats_response",
    started,
    endpoints: endpoints.map((e, i) => ({
      name: e.name, subject: e.subject, queue_group: e.queue_group,
      num_requests: stats[i].requests, num_errors: 0, last_error: "",
      processing_time: stats[i].nanos,
      average_processing_time: Math.floor(stats[i].nanos / (stats[i].requests || 1)),
    })),
  }),
};
for (const [verb, answer] of Object.entries(answers)) {
  for (const subject of [`$SRV.${verb}`, `$SRV.${verb}.${group}`, `$SRV.${verb}.${group}.${identity.id}`]) {
    nc.subscribe(subject, { callback: (err, m) => err || m.respond(JSON.stringify(answer())) });
  }
}
await nc.flush(); // the server has the subscriptions: requests reach us
// Stop on SIGTERM or SIGINT: drain unsubscribes (the other instances take
// what comes next), finishes what was received, and flushes the replies.
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.once(signal, () => nc.drain());
}
console.log("ready");

// handle answers one request: "Reply messages" are the body and, for
// CoAP, the code and Content-Format headers.
function handle(m) {
  const h = m.headers;
  // udpgate-deadline is Unix time in milliseconds: past it nobody waits.
  if (!h || Number(h.get("udpgate-deadline")) <= Date.now()) {
    return;
  }
  if (m.subject === rawSubject) {
    // "Request messages": the body is the datagram, byte for byte (read
    // here as UTF-8 text, as this service expects).
    m.respond(encoder.encode(decoder.decode(m.data).toUpperCase()));
  } else {
    // "CoAP requests": udpgate-coap-request is "GET /greeting/NAME" and,
    // with Uri-Query options, "?" and the options joined by "&", each
    // percent-encoded as RFC 3986 does: ?greeting=TEXT replaces "Hello".
    const [path, query = ""] = h.get("udpgate-coap-request").split(" ")[1].split("?");
    const name = decodeURIComponent(path.split("/")[2]);
    let greeting = "Hello";
    for (const option of query.split("&")) {
      const [key, ...value] = option.split("=");
      if (decodeURIComponent(key) === "greeting") {
        greeting = decodeURIComponent(value.join("="));
      }
    }
    const rh = headers();
    rh.set("udpgate-coap-code", "2.05");
    rh.set("udpgate-coap-content-format", "0");
    m.respond(encoder.encode(`${greeting}, ${name}`), { headers: rh });
  }
  console.log(`replied ${m.subject}`);
}

await Promise.all(
  subs.map(async (sub, i) => {
    for await (const m of sub) {
      const start = process.hrtime.bigint();
      handle(m);
      stats[i].requests++;
      stats[i].nanos += Number(process.hrtime.bigint() - start);
    }
  }),
);
await nc.closed();
