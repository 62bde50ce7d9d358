// The client of bench/flood.py: R reading connections (Node's `ws`) and S
// stalled ones (raw sockets that stop reading after the handshake), then one
// trigger: {"type":"flood","data":{"n":N,"size":B}} on the first reader. The
// server broadcasts N messages of ~B bytes in a loop, then "flood.end" (what
// it closed meanwhile, by code). Each reader counts the flood messages and
// their bytes until "flood.end" or until it is closed (its close code).
//
//   node bench/floodclient.mjs --url ws://127.0.0.1:8000/ws --clients 10 \
//       --stalled 1 --n 5500 --size 4000 [--timeout 120] [--sync 1]
//
// --sync 1: prints {"phase":"ready"} once connected, starts when a line
// arrives on stdin, prints {"phase":"done"} when every reader ended (before
// its result), as bench/loadclient.mjs does for bench/measure.py. Prints one
// JSON line; exits non-zero if the run did not end within --timeout seconds.

import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import { performance } from "node:perf_hooks";

import WebSocket from "ws";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const url = new URL(args.url);
const clients = Number(args.clients ?? 10);
const stalledCount = Number(args.stalled ?? 1);
const n = Number(args.n ?? 5500);
const size = Number(args.size ?? 4000);
const timeout = Number(args.timeout ?? 120) * 1000;

function reader() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 0 });
    const state = { ws, messages: 0, bytes: 0, closeCode: null, end: null, endedAt: 0 };
    state.finished = new Promise((finish) => {
      ws.on("message", (data, binary) => {
        if (binary) return;
        if (data.length > 200) {
          state.messages += 1; // a flood frame: counted, not parsed
          state.bytes += data.length;
          return;
        }
        const message = JSON.parse(data.toString());
        if (message.type === "flood") {
          state.messages += 1;
          state.bytes += data.length;
        } else if (message.type === "flood.end") {
          state.end = message.data;
          state.endedAt = performance.now();
          finish();
        }
      });
      ws.on("close", (code) => {
        if (state.end === null) {
          state.closeCode = code; // closed before the end: a healthy reader lost
          state.endedAt = performance.now();
        }
        finish();
      });
    });
    ws.on("open", () => resolve(state));
    ws.on("error", reject);
  });
}

function stalled() {
  // A handshake on a raw socket, then no reading: the kernel's buffers fill,
  // then the server's backlog for it.
  return new Promise((resolve, reject) => {
    const socket = net.connect(Number(url.port), url.hostname);
    const key = crypto.randomBytes(16).toString("base64");
    socket.on("error", () => {}); // reset by the server: expected
    socket.once("error", reject);
    socket.on("connect", () => {
      socket.write(
        `GET ${url.pathname} HTTP/1.1\r\nHost: ${url.host}\r\nUpgrade: websocket\r\n` +
          `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
      );
    });
    let head = "";
    const onData = (chunk) => {
      head += chunk.toString("latin1");
      if (!head.includes("\r\n\r\n")) return;
      socket.off("data", onData);
      socket.pause(); // never reads again
      if (!head.startsWith("HTTP/1.1 101")) reject(new Error(`refused: ${head.slice(0, 80)}`));
      else resolve(socket);
    };
    socket.on("data", onData);
  });
}

const readers = await Promise.all(Array.from({ length: clients }, reader));
const stalls = [];
for (let i = 0; i < stalledCount; i++) stalls.push(await stalled());
await new Promise((r) => setTimeout(r, 200)); // let the server see them all
if (args.sync !== undefined) {
  fs.writeSync(1, '{"phase":"ready"}\n');
  await new Promise((r) => {
    process.stdin.once("data", r);
  });
}
const watchdog = setTimeout(() => {
  console.error(`not done within ${timeout / 1000} s`);
  process.exit(2);
}, timeout);
const startedAt = performance.now();
readers[0].ws.send(JSON.stringify({ type: "flood", data: { n, size } }));
await Promise.all(readers.map((r) => r.finished));
if (args.sync !== undefined) fs.writeSync(1, '{"phase":"done"}\n');
clearTimeout(watchdog);
const elapsed = (Math.max(...readers.map((r) => r.endedAt)) - startedAt) / 1000;
const report = readers.find((r) => r.end !== null)?.end ?? null;
const mb = readers.map((r) => r.bytes / 1e6).sort((a, b) => a - b);
console.log(
  JSON.stringify({
    received: readers.reduce((sum, r) => sum + r.messages, 0),
    expected: n * clients,
    readers: clients,
    healthy_closed: readers.filter((r) => r.closeCode !== null).length,
    healthy_close_codes: readers.filter((r) => r.closeCode !== null).map((r) => r.closeCode),
    mb_per_reader_min: mb[0],
    mb_per_reader_max: mb[mb.length - 1],
    seconds: elapsed,
    server_closed: report?.closed ?? null,
    slow_closed: report?.slow_closed ?? null,
  }),
);
for (const r of readers) r.ws.terminate();
for (const s of stalls) s.destroy();
process.exit(0);
