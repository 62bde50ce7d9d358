// The request/reply load client: C connections, each with one request in
// flight at a time, for D seconds; prints one JSON line with round trips per
// second and their latency percentiles (every round trip timed).
//
//   node bench/requestclient.mjs --url ws://127.0.0.1:8000/ws --clients 50 --duration 5
//
// --proto ws: our envelopes, {"type":"add","data":{...},"ref":"..."} answered
// by {"type":"reply","ref":...,"ok":true,"data":...}. --proto socketio:
// Engine.IO 4 / Socket.IO 5, an event with an ack id, 42<id>["add",{...}],
// answered by 43<id>[...]: what python-socketio's call() and a client's
// emit-with-ack do.
//
// --pair across|same: the server asks another client. Each connection first
// asks "whoami" (its id and its server process), then pairs with a
// connection on another process (across) or on its own (same), and asks
// {"type":"ask_peer","data":{"to":<peer>,"a":n}}: the server's handler
// requests "add" of the peer (conn.request / sio.call), which every
// connection answers, and replies with the peer's answer. One round trip
// is then two requests: the client's to the server, the server's to the peer.
// Across needs connections on two processes: more are opened (up to 200)
// while they all land on one. With --sync 1 it waits, connected and paired,
// for a line on stdin, and prints {"phase":"done"} at the end
// (bench/measure.py reads the servers' CPU at those two points).

import fs from "node:fs";
import { performance } from "node:perf_hooks";

import WebSocket from "ws";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const url = args.url;
const socketio = args.proto === "socketio";
const clients = Number(args.clients ?? 50);
const duration = Number(args.duration ?? 5) * 1000;
const warmup = Number(args.warmup ?? 1) * 1000;
const pair = args.pair; // undefined, "across" or "same"

/** The server asked this client to add: the sum. */
function answer(data) {
  return data.a + data.b;
}

function open() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    const state = { ws, seq: 0, pending: null, who: null, peer: null };
    ws.on("error", reject);
    ws.on("message", (raw, binary) => {
      if (binary) return;
      const text = raw.toString();
      if (socketio) {
        if (text[0] === "0") ws.send("40");
        else if (text === "2") ws.send("3");
        else if (text.startsWith("40")) resolve(state);
        else if (text.startsWith("43")) {
          const at = text.indexOf("[");
          const id = Number(text.slice(2, at));
          if (state.pending && id === state.seq) state.pending(JSON.parse(text.slice(at))[0]);
        } else if (text.startsWith("42")) {
          // The server's event with an ack id (its call()): answer it.
          const at = text.indexOf("[");
          if (at > 2) {
            const [, data] = JSON.parse(text.slice(at));
            ws.send(`43${text.slice(2, at)}${JSON.stringify([answer(data)])}`);
          }
        }
        return;
      }
      const message = JSON.parse(text);
      if (message.type === "reply") {
        if (state.pending && message.ref === String(state.seq)) state.pending(message.data);
      } else if (typeof message.ref === "string") {
        // The server's request (conn.request): answer it.
        const data = answer(message.data);
        ws.send(JSON.stringify({ type: "reply", ref: message.ref, ok: true, data }));
      }
    });
    if (!socketio) ws.on("open", () => resolve(state));
  });
}

/** One request; resolves with the reply's data. */
function ask(state, type, data) {
  state.seq += 1;
  const seq = state.seq;
  return new Promise((resolve) => {
    state.pending = resolve;
    state.ws.send(
      socketio
        ? `42${seq}${JSON.stringify([type, data])}`
        : JSON.stringify({ type, data, ref: String(seq) }),
    );
  });
}

const states = await Promise.all(Array.from({ length: clients }, open));
if (pair) {
  const groups = new Map(); // server process -> its connections
  const place = async (state) => {
    state.who = await ask(state, "whoami", null);
    if (!groups.has(state.who.worker)) groups.set(state.who.worker, []);
    groups.get(state.who.worker).push(state);
  };
  await Promise.all(states.map(place));
  while (pair === "across" && groups.size < 2 && states.length < clients + 200) {
    const more = await open();
    states.push(more);
    await place(more);
  }
  if (pair === "across" && groups.size < 2) {
    console.error("every connection landed on one server process");
    process.exit(2);
  }
  const lists = [...groups.values()];
  lists.forEach((list, g) => {
    const other = lists[(g + 1) % lists.length];
    list.forEach((state, i) => {
      state.peer = pair === "across" ? other[i % other.length] : list[(i + 1) % list.length];
    });
  });
}
if (args.sync !== undefined) {
  // bench/measure.py: the servers' CPU is read from here (connected, paired)
  // to "done", as bench/loadclient.mjs does.
  fs.writeSync(1, '{"phase":"ready"}\n');
  await new Promise((r) => process.stdin.once("data", r));
}
/** The request each round trip makes. */
const next = pair
  ? (state) => ["ask_peer", { to: state.peer.who.id, a: state.seq + 1, b: 1 }]
  : (state) => ["add", { a: state.seq + 1, b: 1 }];

const latencies = [];
let total = 0; // every round trip, the warm-up's too: the servers' CPU spans them
let wrong = 0;
let measuring = false;
const start = performance.now();
const stopAt = start + warmup + duration;
setTimeout(() => (measuring = true), warmup);

await Promise.all(
  states.map(async (state) => {
    while (performance.now() < stopAt) {
      const t0 = performance.now();
      const [type, data] = next(state);
      const got = await ask(state, type, data);
      if (got !== data.a + data.b) wrong += 1; // the ceiling's are all 0
      total += 1;
      if (measuring) latencies.push(performance.now() - t0);
    }
  }),
);
if (args.sync !== undefined) fs.writeSync(1, '{"phase":"done"}\n');
for (const state of states) state.ws.close();
latencies.sort((a, b) => a - b);
const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
console.log(
  JSON.stringify({
    round_trips_per_s: latencies.length / (duration / 1000),
    p50_ms: at(0.5),
    p99_ms: at(0.99),
    count: latencies.length,
    total,
    received: total, // for bench/measure.py: the servers' CPU per round trip
    connections: states.length,
    wrong,
  }),
);
process.exit(0);
