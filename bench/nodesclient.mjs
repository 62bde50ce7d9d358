// The load client of bench/nodes.py: room members on many nodes, publishers
// among them, latency measured where the messages arrive.
//
//   node bench/nodesclient.mjs      (commands on stdin, one JSON line back each)
//
// {"cmd": "open", "groups": [{"url": ..., "room": ..., "n": ...}], "timeout": s}
//   opens n connections to url?room=<room> for every group (at most 50
//   handshakes in flight) and waits for each one's "welcome" (sent once the
//   server joined it to its room). Answers {"opened": total}.
// {"cmd": "run", "phase": p, "rooms": [...], "rate": r, "count": c, "timeout": s,
//  "presence": bool}
//   sends c "pub" envelopes (with "presence": the sender's presence changes too) at r per second (1 ms ticks), to the rooms in
//   turn, each from the room's next member (so from each of its nodes in
//   turn), stamped with the send time. Every member of a room, sender
//   included, should get each one back as "msg". Answers once all arrived,
//   or at the timeout: {"sent", "expected", "received", "p50", "p99", "max"}
//   (latency in ms, from the stamp to the arrival), "missing" (messages a
//   member never got), "duplicates" (got twice) and "seconds" (first send to
//   last arrival).
// Closing stdin closes every socket and exits. Only the `ws` package (npm
// install --prefix bench); the rates here are modest, so plain JSON parsing
// is not the limit. Every wait is bounded by its timeout.

import { performance } from "node:perf_hooks";
import readline from "node:readline";
import WebSocket from "ws";

const now = () => performance.timeOrigin + performance.now();
const members = new Map(); // room -> [socket]
const sockets = [];
let current = null; // the phase being measured

function answer(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function onFrame(ws, data) {
  const env = JSON.parse(data);
  if (env.type !== "msg" || current === null || env.data.phase !== current.phase) return;
  current.received += 1;
  // Per member, by message: a loss and a duplicate never cancel out.
  if (ws.seen.has(env.data.n)) current.duplicates += 1;
  else ws.seen.add(env.data.n);
  const late = now() - env.data.t;
  if (current.lat.length < current.lat.capacity) current.lat.push(late);
  current.lastAt = now();
  const unique = current.received - current.duplicates;
  if (unique >= current.expected && current.sent === current.count) {
    current.done();
  }
}

function openOne(url, room, deadline) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url}?room=${encodeURIComponent(room)}`);
    ws.seen = new Set(); // message numbers of the phase being measured
    ws.expect = 0;
    const timer = setTimeout(() => reject(new Error(`no welcome from ${url}`)), deadline - now());
    ws.on("message", (data) => {
      if (ws.welcomed) return onFrame(ws, data);
      if (JSON.parse(data).type === "welcome") {
        ws.welcomed = true;
        clearTimeout(timer);
        resolve(ws);
      }
    });
    ws.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

async function open({ groups, timeout }) {
  const deadline = now() + timeout * 1000;
  const todo = groups.flatMap((g) => Array.from({ length: g.n }, () => g));
  let next = 0;
  async function lane() {
    while (next < todo.length) {
      const { url, room } = todo[next++];
      const ws = await openOne(url, room, deadline);
      sockets.push(ws);
      if (!members.has(room)) members.set(room, []);
      members.get(room).push(ws);
    }
  }
  await Promise.all(Array.from({ length: Math.min(50, todo.length) }, lane));
  return { opened: todo.length };
}

function run({ phase, rooms, rate, count, timeout, presence = false }) {
  return new Promise((resolve) => {
    const lat = [];
    lat.capacity = 2_000_000;
    const turn = new Map(rooms.map((r) => [r, 0]));
    const phaseState = {
      phase, count, lat, sent: 0, expected: 0, received: 0, duplicates: 0, lastAt: 0,
      done: () => finish(),
    };
    for (const ws of sockets) {
      ws.seen.clear();
      ws.expect = 0;
    }
    current = phaseState;
    const started = now();
    const perTick = Math.max(1, Math.round(rate / 1000));
    const tickMs = (1000 * perTick) / rate;
    let ticks = 0;
    let ended = false;
    const limit = setTimeout(() => finish(), timeout * 1000);
    function tick() {
      if (ended) return;
      for (let i = 0; i < perTick && phaseState.sent < count; i++) {
        const room = rooms[phaseState.sent % rooms.length];
        const list = members.get(room);
        const ws = list[turn.get(room) % list.length];
        turn.set(room, turn.get(room) + 1);
        phaseState.expected += list.length;
        for (const member of list) member.expect += 1;
        const n = phaseState.sent++;
        ws.send(JSON.stringify({ type: "pub", data: { room, phase, n, t: now(), presence } }));
      }
      if (phaseState.sent < count) {
        ticks += 1;
        // Paced against the start, so a late tick does not lower the rate.
        setTimeout(tick, Math.max(0, started + ticks * tickMs - now()));
      } else if (phaseState.received - phaseState.duplicates >= phaseState.expected) {
        finish();
      }
    }
    function finish() {
      if (ended) return;
      ended = true;
      clearTimeout(limit);
      current = null;
      lat.sort((a, b) => a - b);
      const at = (q) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(lat.length * q))] : null);
      resolve({
        phase,
        sent: phaseState.sent,
        expected: phaseState.expected,
        received: phaseState.received,
        missing: sockets.reduce((sum, ws) => sum + ws.expect - ws.seen.size, 0),
        duplicates: phaseState.duplicates,
        p50: at(0.5),
        p99: at(0.99),
        max: lat.length ? lat[lat.length - 1] : null,
        seconds: ((phaseState.lastAt || now()) - started) / 1000,
      });
    }
    tick();
  });
}

const commands = { open, run };
const lines = readline.createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const command = JSON.parse(line);
  try {
    answer(await commands[command.cmd](command));
  } catch (err) {
    answer({ error: String(err?.stack ?? err) });
  }
});
lines.on("close", () => {
  for (const ws of sockets) ws.terminate();
  process.exit(0);
});
