// A CoAP client that observes a resource (RFC 7641) through a udpgate
// coap listener, with node-coap (npm coap): it prints the registration's
// response, then each notification, one line each ("CODE PAYLOAD"), and
// after COUNT notifications deregisters (a GET with Observe 1 and the
// registration's token) and exits. URL is the resource
// (coap://127.0.0.1:5683/counter); COUNT 0 observes until SIGINT or
// SIGTERM.
import { randomBytes } from "node:crypto";
import dgram from "node:dgram";
import coap from "coap";

const url = new URL(process.env.URL ?? "coap://127.0.0.1:5683/counter");
const count = Number(process.env.COUNT ?? "0");
// The agent gets a socket of ours: one it opened itself it would close
// with the observation, before the deregistration is sent.
const socket = dgram.createSocket("udp4");
const agent = new coap.Agent({ socket });
const target = { agent, hostname: url.hostname, port: Number(url.port || 5683), pathname: url.pathname };
const token = randomBytes(8);

const done = (code) => {
  agent.close();
  socket.close();
  process.exitCode = code;
};

const req = coap.request({ ...target, observe: true, token });
req.on("response", (res) => {
  if (res.headers.Observe === undefined) {
    console.error(`not registered: ${res.code} ${res.payload}`);
    return done(1);
  }
  let seen = -1; // notifications after the registration's response
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    res.close();
    const dereg = coap.request({ ...target, observe: 1, token });
    dereg.on("response", () => done(0));
    dereg.on("error", (err) => {
      console.error(`deregister: ${err.message}`);
      done(1);
    });
    dereg.end();
  };
  res.on("data", (payload) => {
    if (stopping) return;
    console.log(`${res.code} ${payload.toString().trimEnd()}`);
    seen++;
    if (count > 0 && seen === count) stop();
  });
  for (const signal of ["SIGTERM", "SIGINT"]) process.once(signal, stop);
});
req.on("error", (err) => {
  console.error(`observe ${url}: ${err.message}`);
  done(1);
});
req.end();
