// The load client of bench/history.py --recovery: many clients that each
// missed the same publications come back at once and resume.
//
//   node bench/recoveryclient.mjs --url ws://... --clients N --room R
//        --offset O --epoch E --missed K [--inflight 100] [--timeout 120]
//
// Each connection, once welcomed, joins R with since {offset: O, epoch: E};
// it must get exactly the K publications after O, in order, then
// "room.joined" with recovered: true. At most --inflight handshakes are in
// flight (Sanic's listen backlog is 100); all may be catching up at once. Prints one JSON line: clients,
// caught_up (exactly right), not_recovered, wrong (a gap, a duplicate, a
// close), seconds (first connect to the last client caught up), and per
// client the time from its connect to caught up: p50_ms, p99_ms, max_ms.
// Every socket is closed at the end; the whole run is bounded by --timeout.

import { performance } from "node:perf_hooks";
import WebSocket from "ws";

const args = {};
for (let i = 2; i < process.argv.length; i += 2) {
  args[process.argv[i].replace(/^--/, "")] = process.argv[i + 1];
}
const url = args.url;
const clients = Number(args.clients);
const room = args.room;
const since = { offset: Number(args.offset), epoch: args.epoch };
const missed = Number(args.missed);
const inflight = Number(args.inflight ?? 100);
const timeout = Number(args.timeout ?? 120) * 1000;

const start = performance.now();
const sockets = [];
const took = [];
let started = 0;
let settled = 0;
let caughtUp = 0;
let notRecovered = 0;
let wrong = 0;
let lastDone = start;

function finish() {
  took.sort((a, b) => a - b);
  const at = (q) => (took.length ? took[Math.min(took.length - 1, Math.floor(q * took.length))] : null);
  process.stdout.write(
    JSON.stringify({
      clients,
      caught_up: caughtUp,
      not_recovered: notRecovered,
      wrong,
      seconds: (lastDone - start) / 1000,
      p50_ms: at(0.5),
      p99_ms: at(0.99),
      max_ms: took.length ? took[took.length - 1] : null,
    }) + "\n",
  );
  for (const ws of sockets) ws.terminate();
  process.exit(0);
}

function done(outcome, t0) {
  settled += 1;
  if (outcome === "ok") {
    caughtUp += 1;
    took.push(performance.now() - t0);
    lastDone = performance.now();
  } else if (outcome === "not_recovered") notRecovered += 1;
  else wrong += 1;
  if (settled === clients) finish();
}

function open() {
  started += 1;
  const t0 = performance.now();
  const ws = new WebSocket(url, { perMessageDeflate: false });
  sockets.push(ws);
  let next = since.offset + 1;
  let over = false;
  let handshook = false;
  // The next handshake starts when this one is over, however it ended.
  const handshakeOver = () => {
    if (handshook) return;
    handshook = true;
    if (started < clients) open();
  };
  ws.on("open", handshakeOver);
  const end = (outcome) => {
    handshakeOver();
    if (over) return;
    over = true;
    done(outcome, t0);
  };
  ws.on("message", (data) => {
    const env = JSON.parse(data);
    if (env.type === "welcome") {
      ws.send(JSON.stringify({ type: "room.join", data: { room, since } }));
    } else if (env.type === "m" && env.room === room) {
      if (env.offset !== next) end("wrong");
      next += 1;
    } else if (env.type === "room.joined") {
      if (!env.data.recovered) end("not_recovered");
      else end(next === since.offset + missed + 1 ? "ok" : "wrong");
    }
  });
  ws.on("error", () => end("wrong"));
  ws.on("close", () => end("wrong"));
}

setTimeout(finish, timeout).unref();
for (let i = 0; i < Math.min(inflight, clients); i++) open();
