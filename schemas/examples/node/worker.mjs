// A udpgate worker in JavaScript, written from schemas/README.md alone (no
// udpgate code): it upper-cases every request on SUBJECT. The gateway tests
// run it (TestNodeWorker in gateway/contract_test.go).
//
//   npm ci && NATS_URL=nats://127.0.0.1:4222 SUBJECT=udpgate.in.9100 GROUP=upper node worker.mjs
import { connect, headers, AckPolicy, DeliverPolicy, nanos } from "nats";

const stream = process.env.STREAM ?? "UDPGATE_IN";
const subject = process.env.SUBJECT ?? "udpgate.in.9100";
const group = process.env.GROUP ?? "upper";

const nc = await connect({ servers: process.env.NATS_URL ?? "nats://127.0.0.1:4222" });
const jsm = await nc.jetstreamManager();
try {
  await jsm.consumers.info(stream, group); // the group exists: bind to it as it is
} catch {
  await jsm.consumers.add(stream, {
    durable_name: group,
    filter_subject: subject,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.New, // a new group does not work through the capture
    ack_wait: nanos(2000),
    max_deliver: 5,
  });
}
const consumer = await nc.jetstream().consumers.get(stream, group);
const messages = await consumer.consume();
console.log("ready");

for await (const m of messages) {
  const h = m.headers;
  if (!h || Number(h.get("udpgate-deadline")) <= Date.now()) {
    m.ack(); // too late: nobody is waiting for the answer
    continue;
  }
  const reply = headers();
  reply.set("udpgate-id", h.get("udpgate-id"));
  const body = new TextEncoder().encode(new TextDecoder().decode(m.data).toUpperCase());
  nc.publish(h.get("udpgate-reply"), body, { headers: reply });
  m.ack(); // after the reply, on the same connection
}
