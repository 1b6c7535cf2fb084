// page.js calls a ws listener from the browser, for
// gateway/ws_browser_test.go. Its query parameters:
//
//   ws     the listener's URL (ws://host:port/path)
//   steps  the steps to run, in order, comma-separated (default getRandom)
//
// It loads schema.json (protobufjs JSON, which the test makes from the Go
// descriptors), opens the WebSocket, runs the steps and then says "ready"
// in #state; at the first error it says "failed: ..." instead, and
// "closed: ..." if the connection closes after it opened. A step is a
// function in steps below that writes what it got into the DOM, where the
// test reads it.
//
// Every message that is not the reply to a pending call is a push: it is
// decoded as a Reply (a text message as the base64 of one) and listed in
// #pushes (see pushed), so a test can publish one and wait for it in the
// DOM.
"use strict";

const query = new URLSearchParams(location.search);
const state = document.getElementById("state");

let types;  // the protobufjs types, once schema.json is loaded
let sock;   // the WebSocket, once open
// Call ids start above 2^32, so that the 64-bit varints are exercised.
let nextID = 2 ** 33 + 1;
const pending = new Map(); // call id -> {resolve, reject} of its reply

const steps = {
  // getRandom calls InterestingPlaces/GetRandom for 3 places and lists
  // them in #places; #call-id, #reply-id, #status and #error show the
  // envelopes.
  async getRandom() {
    const {id, reply} = call("InterestingPlaces", "GetRandom", types.GetRandomRequest, {limit: 3});
    setText("call-id", id);
    const r = await reply;
    setText("reply-id", r.id);
    setText("status", statusName(r.status));
    setText("error", r.error);
    if (r.status !== 0) {
      throw new Error("GetRandom: " + statusName(r.status) + " " + r.error);
    }
    for (const p of types.GetRandomResponse.decode(r.body).places) {
      const li = document.createElement("li");
      li.textContent = p.name;
      li.dataset.latitude = p.location ? p.location.latitude : "";
      li.dataset.longitude = p.location ? p.location.longitude : "";
      document.getElementById("places").appendChild(li);
    }
  },
};

// call sends a Call whose params are request, encoded as requestType,
// and returns its id and a promise of its Reply.
function call(service, method, requestType, request) {
  const id = nextID++;
  const params = requestType.encode(requestType.create(request)).finish();
  const msg = types.Call.encode(types.Call.create({id, service, method, params})).finish();
  const reply = new Promise((resolve, reject) => pending.set(id, {resolve, reject}));
  sock.send(msg);
  return {id, reply};
}

// received takes every message the connection receives: a binary one is
// a Reply, a text one the base64 of a Reply (the page sends binary calls,
// but a worker may push text).
function received(ev) {
  let r;
  if (typeof ev.data === "string") {
    try {
      r = types.Reply.decode(Uint8Array.from(atob(ev.data), c => c.charCodeAt(0)));
    } catch (e) {
      pushed(null, "a text message, not the base64 of a Reply (" + e.message + "): " + ev.data);
      return;
    }
  } else {
    const b = new Uint8Array(ev.data);
    try {
      r = types.Reply.decode(b);
    } catch (e) {
      pushed(null, "not a Reply (" + e.message + "): " + Array.from(b, x => x.toString(16).padStart(2, "0")).join(" "));
      return;
    }
  }
  const p = pending.get(r.id);
  if (p) {
    pending.delete(r.id);
    p.resolve(r);
    return;
  }
  pushed(r);
}

// pushed lists a message that answers no call in #pushes: the Reply r's
// body as UTF-8 text, its id, status and error as data-id, data-status
// and data-error; or, when the message is not a Reply, an empty item
// whose data-error says what it was.
function pushed(r, err) {
  const li = document.createElement("li");
  if (r) {
    li.textContent = new TextDecoder().decode(Uint8Array.from(r.body || []));
    li.dataset.id = String(r.id);
    li.dataset.status = statusName(r.status);
    li.dataset.error = r.error || "";
  } else {
    li.dataset.error = err;
  }
  console.log("push", li.dataset.id, li.dataset.status, li.dataset.error, li.textContent);
  document.getElementById("pushes").appendChild(li);
}

// open opens the WebSocket to url and resolves once it is open.
function open(url) {
  return new Promise((resolve, reject) => {
    const s = new WebSocket(url);
    s.binaryType = "arraybuffer";
    let opened = false;
    s.onopen = () => { opened = true; resolve(s); };
    s.onmessage = received;
    s.onclose = ev => {
      const why = "closed: " + ev.code + (ev.reason ? " " + ev.reason : "");
      if (!opened) {
        reject(new Error("WebSocket " + url + " " + why + " before it opened"));
        return;
      }
      for (const p of pending.values()) p.reject(new Error(why));
      pending.clear();
      if (!state.textContent.startsWith("failed")) state.textContent = why;
    };
  });
}

function statusName(n) {
  return types.Status.valuesById[n] || String(n);
}

function setText(id, v) {
  document.getElementById(id).textContent = String(v);
}

(async () => {
  try {
    const resp = await fetch("schema.json");
    if (!resp.ok) throw new Error("schema.json: " + resp.status);
    const root = protobuf.Root.fromJSON(await resp.json());
    types = {
      Call: root.lookupType("udpgate.rpc.v1.Call"),
      Reply: root.lookupType("udpgate.rpc.v1.Reply"),
      Status: root.lookupEnum("udpgate.rpc.v1.Status"),
      GetRandomRequest: root.lookupType("udpgate.places.v1.GetRandomRequest"),
      GetRandomResponse: root.lookupType("udpgate.places.v1.GetRandomResponse"),
    };
    state.textContent = "connecting";
    sock = await open(query.get("ws"));
    for (const name of (query.get("steps") ?? "getRandom").split(",").filter(Boolean)) {
      if (!steps[name]) throw new Error("no step " + name);
      state.textContent = "step " + name;
      await steps[name]();
    }
    state.textContent = "ready";
  } catch (e) {
    console.error(e);
    state.textContent = "failed: " + (e && e.message || e);
  }
})();
