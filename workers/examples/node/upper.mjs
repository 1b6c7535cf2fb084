import { connect } from "@nats-io/transport-node";

const nc = await connect({ servers: process.env.NATS_URL ?? "nats://127.0.0.1:4222" });
const sub = nc.subscribe(process.env.SUBJECT ?? "udpgate.in.9100", { queue: "upper" });
await nc.flush();
console.log("ready");
process.once("SIGTERM", () => nc.drain());
for await (const m of sub) {
  m.respond(new TextEncoder().encode(new TextDecoder().decode(m.data).toUpperCase()));
}
