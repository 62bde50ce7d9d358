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

function open(i) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    const state = { ws, seq: 0, pending: null, sentAt: 0 };
    ws.on("error", reject);
    ws.on("message", (raw, binary) => {
      if (binary) return;
      const text = raw.toString();
      if (socketio) {
        if (text[0] === "0") ws.send("40");
        else if (text === "2") ws.send("3");
        else if (text.startsWith("40")) resolve(state);
        else if (text.startsWith("43")) {
          const id = Number(text.slice(2, text.indexOf("[")));
          if (state.pending && id === state.seq) state.pending(text);
        }
        return;
      }
      const message = JSON.parse(text);
      if (message.type === "reply" && state.pending && message.ref === String(state.seq)) {
        state.pending(message);
      }
    });
    if (!socketio) ws.on("open", () => resolve(state));
    void i;
  });
}

function ask(state) {
  state.seq += 1;
  const seq = state.seq;
  const data = { a: seq, b: 1 };
  return new Promise((resolve) => {
    state.pending = resolve;
    state.ws.send(
      socketio
        ? `42${seq}${JSON.stringify(["add", data])}`
        : JSON.stringify({ type: "add", data, ref: String(seq) }),
    );
  });
}

const states = await Promise.all(Array.from({ length: clients }, (_, i) => open(i)));
const latencies = [];
let measuring = false;
const start = performance.now();
const stopAt = start + warmup + duration;
setTimeout(() => (measuring = true), warmup);

await Promise.all(
  states.map(async (state) => {
    while (performance.now() < stopAt) {
      const t0 = performance.now();
      await ask(state);
      if (measuring) latencies.push(performance.now() - t0);
    }
  }),
);
for (const state of states) state.ws.close();
latencies.sort((a, b) => a - b);
const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
console.log(
  JSON.stringify({
    round_trips_per_s: latencies.length / (duration / 1000),
    p50_ms: at(0.5),
    p99_ms: at(0.99),
    count: latencies.length,
  }),
);
process.exit(0);
