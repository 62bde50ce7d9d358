// The fan-out load client: many websocket connections on raw `net` sockets,
// frames parsed in place (no per-message objects), so the client is not what
// a benchmark measures.
//
//   node bench/loadclient.mjs --url ws://127.0.0.1:8000/ws --clients 1000 --k 200
//
// With --rate R [--duration S] it runs the chat scenario: every client sends R
// messages/s, the server broadcasts each to all; prints latency over all.
// With --hold 1 it only opens C connections, prints {"ready": C} and keeps them
// until its stdin closes (the idle-memory scenario). Otherwise it opens C
// connections, then sends {"type":"go","data":{"k":K}} on the first;
// the server broadcasts K messages of ~100 bytes, each carrying its send time
// as "t" (epoch milliseconds).
//
// --url may list several URLs, comma-separated (the nodes of one cluster):
// client i connects to URL i mod n; the trigger goes to the first. With
// --proto socketio it speaks Engine.IO 4 / Socket.IO 5 over the websocket:
// it joins the default namespace ("40"), answers pings, sends events as
// 42["type",data] and counts only event frames. With --stalled N it opens N
// more connections that stop reading at once (stalled clients: they count for
// nothing, the server must not let them slow the others). Prints one JSON line: delivered messages/s
// (C*K over the time from the trigger to the last frame) and latency p50/p99
// (receive time minus "t", sampled on every message). Exits non-zero if not
// every frame arrived within --timeout seconds. With --sync 1 it prints
// {"phase":"ready"} once connected and settled, starts when a line arrives on
// stdin, and prints {"phase":"done"} the moment the last frame is in (before
// its result): bench/measure.py reads the servers' CPU counters at those two
// points. bench/loadclient.c is the same client in C, and much faster.
//
// --deflate 1 offers permessage-deflate (the server must agree to no context
// takeover) and inflates each frame with RSV1 set on its own; the result
// also counts the bytes read off the sockets in the burst (wire_bytes) and
// the frames that came compressed. --body TEXT: chat messages carry TEXT.

import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import zlib from "node:zlib";
import { performance } from "node:perf_hooks";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const urls = (args.url ?? "ws://127.0.0.1:8000/ws").split(",").map((u) => new URL(u));
const socketio = args.proto === "socketio";
const clients = Number(args.clients ?? 100);
const k = Number(args.k ?? 100);
const timeout = Number(args.timeout ?? 60) * 1000;
const now = () => performance.timeOrigin + performance.now();
const deflate = Number(args.deflate ?? 0) === 1;
const body = args.body;
const TAIL = Buffer.from([0, 0, 0xff, 0xff]);
// The message ends in a sync flush, not the end of a deflate stream.
const SYNC = { finishFlush: zlib.constants.Z_SYNC_FLUSH };
let wireBytes = 0;
let compressed = 0;
const seen = new Map(); // compressed bytes (latin1) -> inflated text, lately

const T_KEY = Buffer.from('"t":');
let received = 0;
let lastAt = 0;
let firstAt = 0; // the first counted frame: a late start shows here
let doneAt = -1; // `received` at the end of the burst
const syncMode = args.sync !== undefined;
let doneSaid = false;

// Synchronous writes: the caller must hear "done" before anything else runs.
function sayDone() {
  if (syncMode && !doneSaid) {
    doneSaid = true;
    fs.writeSync(1, '{"phase":"done"}\n');
  }
}

async function waitGo() {
  if (!syncMode) return;
  fs.writeSync(1, '{"phase":"ready"}\n');
  await new Promise((resolve) => process.stdin.once("data", resolve));
  process.stdin.pause();
}

const cpuMs = () => {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
};
// Latency samples kept (chat mode: pass --samples for C*C*rate*duration/every).
const latencies = new Float64Array(Number(args.samples ?? clients * k));
let sampled = 0;

function maskedText(text) {
  const payload = Buffer.from(text);
  const mask = crypto.randomBytes(4);
  const head = payload.length < 126 ? Buffer.from([0x81, 0x80 | payload.length])
    : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 255]);
  for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
  return Buffer.concat([head, mask, payload]);
}

// One event, in the server's framing.
function event(type, data) {
  return socketio ? `42${JSON.stringify([type, data])}` : JSON.stringify({ type, data });
}

// Latency is sampled on one message in `every` (all are counted): parsing
// the time stamp of each was most of the client's work per message.
const every = Number(args.every ?? 1);
let skip = 0;

// `at`: when the chunk holding the frame arrived (read once per chunk).
function onMessage(buf, start, end, opcode, at) {
  if (opcode !== 1) return; // pings, pongs, binary: not counted
  // Socket.IO: only events count ("42[..."); "2" pings are answered elsewhere.
  if (socketio && (buf[start] !== 52 || buf[start + 1] !== 50)) return;
  if (received++ === 0) firstAt = at;
  lastAt = at;
  if (received === doneAt) sayDone();
  if (++skip < every) return;
  skip = 0;
  const i = buf.indexOf(T_KEY, start);
  if (i !== -1 && i < end) {
    let j = i + 4;
    while (j < end && buf[j] !== 44 && buf[j] !== 125) j++; // up to , or }
    const t = Number(buf.toString("latin1", i + 4, j));
    if (Number.isFinite(t) && sampled < latencies.length) latencies[sampled++] = at - t;
  }
}

function connect(index) {
  const url = urls[index % urls.length];
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: url.hostname, port: Number(url.port), noDelay: true });
    const key = crypto.randomBytes(16).toString("base64");
    let pending = null; // unparsed bytes
    let open = false;
    socket.on("connect", () => {
      socket.write(
        `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n` +
          `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\n` +
          `Sec-WebSocket-Version: 13\r\nOrigin: http://${url.host}\r\n` +
          (deflate ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "") +
          "\r\n",
      );
    });
    socket.on("data", (chunk) => {
      const at = now();
      wireBytes += chunk.length;
      let buf = pending ? Buffer.concat([pending, chunk]) : chunk;
      pending = null;
      let pos = 0;
      if (!open) {
        const end = buf.indexOf("\r\n\r\n");
        if (end === -1) { pending = buf; return; }
        if (!buf.toString("latin1", 0, 12).includes("101")) {
          reject(new Error(`client ${index}: ${buf.toString("latin1", 0, end)}`));
          socket.destroy();
          return;
        }
        if (deflate && !buf.toString("latin1", 0, end).includes("server_no_context_takeover")) {
          reject(new Error(`client ${index}: no server_no_context_takeover`));
          socket.destroy();
          return;
        }
        open = true;
        pos = end + 4;
        if (!socketio) resolve(socket);
      }
      while (buf.length - pos >= 2) {
        const opcode = buf[pos] & 0x0f;
        let len = buf[pos + 1] & 0x7f;
        let head = 2;
        if (len === 126) {
          if (buf.length - pos < 4) break;
          len = buf.readUInt16BE(pos + 2);
          head = 4;
        } else if (len === 127) {
          if (buf.length - pos < 10) break;
          len = Number(buf.readBigUInt64BE(pos + 2));
          head = 10;
        }
        if (buf.length - pos < head + len) break;
        if (buf[pos] & 0x40) {
          // Compressed (RFC 7692): raw deflate, its 00 00 ff ff tail left off;
          // inflated on its own (no context takeover), then read as text.
          if (!deflate) throw new Error("a compressed frame without --deflate");
          // The connections stand for as many machines, each inflating its
          // own copy; bytes inflated lately (a broadcast: the same bytes to
          // all) are looked up instead, or the client would be the limit.
          const key = buf.toString("latin1", pos + head, pos + head + len);
          let text = seen.get(key);
          if (text === undefined) {
            const raw = buf.subarray(pos + head, pos + head + len);
            text = zlib.inflateRawSync(Buffer.concat([raw, TAIL]), SYNC);
            if (seen.size >= 4096) seen.clear();
            seen.set(key, text);
          }
          compressed += 1;
          onMessage(text, 0, text.length, opcode, at);
          pos += head + len;
          continue;
        }
        if (socketio && opcode === 1 && buf[pos + head] !== 52) {
          // Engine.IO control: "0{...}" open, then we join the namespace;
          // "40{...}" joined: connected; "2" ping: answer "3".
          const text = buf.toString("latin1", pos + head, pos + head + len);
          if (text[0] === "0") socket.write(maskedText("40"));
          else if (text[0] === "2") socket.write(maskedText("3"));
        } else if (socketio && opcode === 1 && buf[pos + head + 1] === 48) {
          resolve(socket); // "40": in the namespace, events will reach us
        } else {
          onMessage(buf, pos + head, pos + head + len, opcode, at);
        }
        pos += head + len;
      }
      if (pos < buf.length) pending = buf.subarray(pos);
    });
    socket.on("error", reject);
  });
}

const sockets = [];
for (let i = 0; i < clients; i += 100) {
  // Connect in batches: a listen backlog of 100 is common.
  const batch = [];
  for (let j = i; j < Math.min(clients, i + 100); j++) batch.push(connect(j));
  sockets.push(...(await Promise.all(batch)));
}
const stalled = [];
for (let i = 0; i < Number(args.stalled ?? 0); i++) {
  const socket = await connect(clients + i);
  socket.pause(); // never reads again: the kernel buffers fill, then the server's
  stalled.push(socket);
}
if (args.hold !== undefined) {
  // Idle-memory mode: report the connections open, keep them until stdin ends.
  console.log(JSON.stringify({ ready: sockets.length }));
  process.stdin.resume();
  await new Promise((r) => process.stdin.on("end", r));
  for (const s of sockets) s.destroy();
  process.exit(0);
}
if (args.rate !== undefined) {
  // Chat mode: every client sends `rate` messages/s for `duration` seconds;
  // the server broadcasts each to every client. Latency over all deliveries.
  const rate = Number(args.rate);
  const duration = Number(args.duration ?? 3);
  const tick = 10; // ms
  await new Promise((r) => setTimeout(r, 200));
  received = 0;
  sampled = 0;
  wireBytes = 0;
  compressed = 0;
  await waitGo();
  const cpu0 = cpuMs();
  const startedAt = now();
  let sent = 0;
  const target = rate * clients * duration;
  while (sent < target) {
    // Catch up with the clock: timers fire late under load, the rate must not.
    const due = Math.min(target, Math.floor((rate * clients * (now() - startedAt)) / 1000));
    while (sent < due) {
      const frame = maskedText(event("chat", body ? { t: now(), body } : { t: now() }));
      sockets[sent % clients].write(frame);
      sent += 1;
    }
    await new Promise((r) => setTimeout(r, tick));
  }
  const sendSeconds = (now() - startedAt) / 1000;
  const expectedChat = sent * clients;
  doneAt = expectedChat;
  if (received >= doneAt) sayDone();
  const drainUntil = now() + 5000;
  while (received < expectedChat && now() < drainUntil) {
    await new Promise((r) => setTimeout(r, 5));
  }
  sayDone();
  const clientCpu = cpuMs() - cpu0;
  const sorted = latencies.subarray(0, sampled).sort();
  const pct = (p) => (sampled ? sorted[Math.min(sampled - 1, Math.floor(sampled * p))] : null);
  console.log(JSON.stringify({
    clients, rate, sent, sendSeconds, received, expected: expectedChat,
    p50_ms: pct(0.5), p99_ms: pct(0.99), client_cpu_ms: clientCpu,
    wire_bytes: wireBytes, compressed,
  }));
  for (const s of sockets) s.destroy();
  process.exit(0);
}
// Let the servers finish their on-connect work before the clock starts.
await new Promise((r) => setTimeout(r, 200));
const warmup = Number(args.warmup ?? 0);
if (warmup > 0) {
  // --warmup N: one burst of N first, not measured (a server process's first
  // burst pays for its cold start).
  received = 0;
  sockets[0].write(maskedText(event("go", { k: warmup })));
  const until = now() + timeout;
  while (received < clients * warmup && now() < until) {
    await new Promise((r) => setTimeout(r, 2));
  }
  if (received < clients * warmup) throw new Error("the warm-up burst did not arrive");
  await new Promise((r) => setTimeout(r, 100));
}
received = 0;
sampled = 0;
wireBytes = 0;
compressed = 0;
const expected = clients * k;
await waitGo();
const cpu0 = cpuMs();
doneAt = expected;
const startedAt = now();
sockets[0].write(maskedText(event("go", { k })));
const deadline = startedAt + timeout;
while (received < expected && now() < deadline) {
  await new Promise((r) => setTimeout(r, 2));
}
sayDone();
const clientCpu = cpuMs() - cpu0;
const seconds = (lastAt - startedAt) / 1000;
const sorted = latencies.subarray(0, sampled).sort();
const pct = (p) => (sampled ? sorted[Math.min(sampled - 1, Math.floor(sampled * p))] : null);
console.log(
  JSON.stringify({
    clients,
    k,
    received,
    expected,
    seconds,
    rate: received / seconds,
    p50_ms: pct(0.5),
    p99_ms: pct(0.99),
    first_ms: firstAt - startedAt,
    client_cpu_ms: clientCpu,
    wire_bytes: wireBytes,
    compressed,
  }),
);
for (const s of sockets) s.destroy();
process.exit(received === expected ? 0 : 1);
