// An observable CoAP resource from the wire contract alone
// (schemas/README.md, "CoAP Observe"): GET /counter on a coap listener
// answers the counter, accepts Observe registrations, and every INTERVAL
// milliseconds the counter goes up and is published to its notify
// subject, which every gateway node holding observers of /counter sends
// to each of them. Any number of instances may run: each answers
// registrations in the queue group, and each notifies.
import { connect, headers } from "@nats-io/transport-node";

const port = process.env.COAP_PORT ?? "5683";
const nc = await connect({ servers: process.env.NATS_URL ?? "nats://127.0.0.1:4222" });
const encoder = new TextEncoder();
let counter = 0;

// Text, Content-Format 0; a notification carries the reply headers.
const representation = () => {
  const h = headers();
  h.set("udpgate-coap-content-format", "0");
  return h;
};

nc.subscribe(`udpgate.in.${port}.GET.counter`, {
  queue: "counter",
  callback: (err, m) => {
    if (err) return;
    const h = representation();
    // Observe 0 asks to register: accept it.
    if (m.headers?.get("udpgate-coap-observe") === "0") h.set("udpgate-coap-observe", "1");
    m.respond(encoder.encode(String(counter)), { headers: h });
  },
});
const timer = setInterval(() => {
  counter++;
  nc.publish(`udpgate.notify.${port}.counter`, encoder.encode(String(counter)), { headers: representation() });
}, Number(process.env.INTERVAL ?? "1000"));
await nc.flush();
console.log("ready");
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.once(signal, () => {
    clearInterval(timer);
    nc.drain();
  });
}
