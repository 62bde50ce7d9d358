// The load client of bench/scale.py: thousands of websocket connections on raw
// `net` sockets, driven by JSON commands, one per line on stdin, each answered
// by one JSON line on stdout. One process per node: a process may hold as many
// sockets as RLIMIT_NOFILE allows (20,000 here).
//
//   {"cmd": "open", "url": "ws://127.0.0.1:8000/ws", "n": 1000, "big": true,
//    "group": 100, "offset": 0, "concurrency": 100, "ready": "big",
//    "track": 25, "quota": {"1234": 500}, "timeout": 60}
//     opens n connections, at most `concurrency` handshakes at once, each
//     with ?room=big (if big) and ?room=small:<(offset+i)/group> (if group).
//     A connection is ready once the server's "welcome" came and, with
//     "ready": "big", its presence.state of big. With a quota, one that the
//     welcome shows on a worker whose quota is full is closed and opened
//     again. Every `track`-th connection in big is *tracked*: it parses every
//     presence frame of big and keeps its view of the room (a set of refs).
//     Answers when all are ready (or at the timeout, with "error").
//   {"cmd": "mark"}       counting starts now (the moment of a kill)
//   {"cmd": "report", "dead": PID, "expect": E}
//     what happened since the mark: presence frames of big per surviving
//     member (all of them, counted from the frame's first bytes; tracked
//     ones, read fully, until their view held E members), when each tracked
//     view first held E, connections closed (by close code).
//   {"cmd": "views"}      tracked views' sizes (median, min, max)
//   {"cmd": "close"}      destroys every socket
//   {"cmd": "exit"}
//
// Frames of no interest are skipped from their first 48 bytes without being
// buffered; pings are answered. Times are milliseconds on this process's
// monotonic clock; "t0" of a report is the mark.

import crypto from "node:crypto";
import net from "node:net";
import readline from "node:readline";
import { performance } from "node:perf_hooks";

const now = () => performance.now();
const PREFIX = 48;
const P_STATE_BIG = Buffer.from('{"type":"presence.state","data":{"room":"big"');
const P_DIFF_BIG = Buffer.from('{"type":"presence.diff","data":{"room":"big"');
const P_PRESENCE = Buffer.from('{"type":"presence.');
const P_WELCOME = Buffer.from('{"type":"welcome"');

let conns = [];
let markAt = null;
let received = 0; // bytes read, all connections (the client's own load)
let markBytes = 0;

function startsWith(buf, start, end, prefix) {
  return end - start >= prefix.length && buf.compare(prefix, 0, prefix.length, start, start + prefix.length) === 0;
}

function masked(opcode, payload) {
  const mask = crypto.randomBytes(4);
  const len = payload.length;
  const head = len < 126 ? Buffer.from([0x80 | opcode, 0x80 | len])
    : Buffer.from([0x80 | opcode, 0x80 | 126, len >> 8, len & 255]);
  const body = Buffer.from(payload);
  for (let i = 0; i < body.length; i++) body[i] ^= mask[i & 3];
  return Buffer.concat([head, mask, body]);
}

class Conn {
  constructor(index, big, tracked) {
    this.index = index;
    this.big = big;
    this.tracked = tracked;
    this.socket = null;
    this.pid = 0;
    this.open = false; // upgraded
    this.closed = false;
    this.code = null; // close code received, or 1006 for none
    this.welcomed = false;
    this.stateAt = null;
    this.bigFrames = 0; // presence frames of big since the mark
    this.otherPresence = 0;
    this.view = tracked ? new Set() : null;
    this.history = tracked ? [] : null; // [time, size] after the mark
    this.parts = []; // buffered bytes (a header, or a frame read whole)
    this.have = 0;
    this.want = 0; // bytes needed before parsing goes on
    this.skip = 0; // payload bytes still to discard
    this.onReady = null;
    this.onWelcome = null;
  }

  data(chunk) {
    received += chunk.length;
    if (this.skip > 0) {
      const n = Math.min(this.skip, chunk.length);
      this.skip -= n;
      if (n === chunk.length) return;
      chunk = chunk.subarray(n);
    }
    if (this.parts.length) {
      this.parts.push(chunk);
      this.have += chunk.length;
      if (this.have < this.want) return;
      chunk = Buffer.concat(this.parts, this.have);
      this.parts = [];
      this.have = 0;
      this.want = 0;
    }
    this.parse(chunk);
  }

  keep(buf, pos, want) {
    const rest = buf.subarray(pos);
    this.parts = [rest];
    this.have = rest.length;
    this.want = want;
  }

  parse(buf) {
    let pos = 0;
    if (!this.open) {
      const end = buf.indexOf("\r\n\r\n");
      if (end === -1) return this.keep(buf, 0, buf.length + 1);
      if (!buf.toString("latin1", 0, 12).includes("101")) {
        this.fail(new Error(buf.toString("latin1", 0, end)));
        return;
      }
      this.open = true;
      this.openedAt = now();
      this.onOpen?.();
      pos = end + 4;
    }
    while (pos < buf.length) {
      const avail = buf.length - pos;
      if (avail < 2) return this.keep(buf, pos, avail + 1);
      const opcode = buf[pos] & 0x0f;
      let len = buf[pos + 1] & 0x7f;
      let head = 2;
      if (len === 126) {
        if (avail < 4) return this.keep(buf, pos, 4);
        len = buf.readUInt16BE(pos + 2);
        head = 4;
      } else if (len === 127) {
        if (avail < 10) return this.keep(buf, pos, 10);
        len = Number(buf.readBigUInt64BE(pos + 2));
        head = 10;
      }
      const start = pos + head;
      const whole = avail >= head + len;
      const seen = Math.min(len, avail - head); // payload bytes at hand
      if (!whole) {
        // Read whole: control frames, the welcome, and tracked presence of big.
        if (seen < Math.min(len, PREFIX)) return this.keep(buf, pos, head + Math.min(len, PREFIX));
        if (opcode !== 1 || this.needsWhole(buf, start, start + seen)) return this.keep(buf, pos, head + len);
        this.glance(buf, start, start + seen);
        this.skip = len - seen;
        return;
      }
      if (opcode === 1) {
        if (this.needsWhole(buf, start, start + len)) this.read(buf, start, start + len);
        else this.glance(buf, start, start + len);
      } else if (opcode === 9) {
        this.socket.write(masked(10, buf.subarray(start, start + len)));
      } else if (opcode === 8) {
        this.code = len >= 2 ? buf.readUInt16BE(start) : 1005;
        this.socket.write(masked(8, buf.subarray(start, start + Math.min(len, 2))));
        this.socket.end();
      }
      pos = start + len;
    }
  }

  needsWhole(buf, start, end) {
    if (startsWith(buf, start, end, P_WELCOME)) return true;
    return this.tracked && (startsWith(buf, start, end, P_STATE_BIG) || startsWith(buf, start, end, P_DIFF_BIG));
  }

  // A frame known from its first bytes.
  glance(buf, start, end) {
    if (startsWith(buf, start, end, P_STATE_BIG)) {
      this.gotState();
      if (markAt !== null) this.bigFrames += 1;
    } else if (startsWith(buf, start, end, P_DIFF_BIG)) {
      if (markAt !== null) this.bigFrames += 1;
    } else if (startsWith(buf, start, end, P_PRESENCE)) {
      this.otherPresence += 1;
    }
  }

  // A frame read whole: the welcome, or tracked presence of big.
  read(buf, start, end) {
    const msg = JSON.parse(buf.toString("utf8", start, end));
    if (msg.type === "welcome") {
      this.pid = msg.data.pid;
      this.welcomed = true;
      this.onWelcome?.();
      this.checkReady();
      return;
    }
    const view = this.view;
    if (msg.type === "presence.state") {
      view.clear();
      for (const metas of Object.values(msg.data.users)) for (const m of metas) view.add(m.ref);
      this.gotState();
    } else {
      for (const metas of Object.values(msg.data.joins)) for (const m of metas) view.add(m.ref);
      for (const metas of Object.values(msg.data.leaves)) for (const m of metas) view.delete(m.ref);
    }
    if (markAt !== null) {
      this.bigFrames += 1;
      this.history.push([now(), view.size]);
    }
  }

  gotState() {
    if (this.stateAt === null) {
      this.stateAt = now();
      this.checkReady();
    }
  }

  checkReady() {
    if (this.onReady && this.welcomed && (!this.needState || this.stateAt !== null)) {
      const done = this.onReady;
      this.onReady = null;
      done();
    }
  }

  fail(err) {
    this.onFail?.(err);
    this.socket?.destroy();
  }

  lost() {
    if (this.closed) return;
    this.closed = true;
    this.closedAt = now();
    if (this.code === null) this.code = 1006;
    this.onFail?.(new Error(`closed before it was ready (${this.code})`));
  }
}

function connect(conn, url, query) {
  const socket = net.connect({ host: url.hostname, port: Number(url.port), noDelay: true });
  conn.socket = socket;
  const key = crypto.randomBytes(16).toString("base64");
  socket.on("connect", () => {
    socket.write(
      `GET ${url.pathname}?${query} HTTP/1.1\r\nHost: ${url.host}\r\n` +
        `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\n` +
        `Sec-WebSocket-Version: 13\r\n\r\n`,
    );
  });
  socket.on("data", (chunk) => conn.data(chunk));
  socket.on("error", (err) => conn.onFail?.(err));
  socket.on("close", () => conn.lost());
}

function open(spec) {
  const url = new URL(spec.url);
  const n = spec.n;
  const limit = spec.concurrency ?? 100;
  const quota = spec.quota ?? null;
  const kept = {}; // pid -> connections kept by this open
  const queue = Array.from({ length: n }, (_, i) => i);
  const maxRetries = spec.retries ?? 3 * n;
  const startedAt = now();
  const bytesBefore = received;
  let inflight = 0;
  let ready = 0;
  let retries = 0;
  let failures = 0;
  let lastOpen = startedAt;
  let lastReady = startedAt;
  const mine = [];
  return new Promise((resolve) => {
    let finished = false;
    const finish = (error) => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      const perPid = {};
      for (const c of mine) if (!c.closed) perPid[c.pid] = (perPid[c.pid] ?? 0) + 1;
      resolve({
        opened: mine.filter((c) => !c.closed).length,
        ready,
        connect_ms: lastOpen - startedAt,
        ready_ms: lastReady - startedAt,
        retries,
        failures,
        per_pid: perPid,
        bytes: received - bytesBefore,
        ...(error ? { error } : {}),
      });
    };
    const timer = setTimeout(() => finish(`timeout: ${ready}/${n} ready`), (spec.timeout ?? 60) * 1000);
    const retry = (i, why) => {
      if (++retries > maxRetries) return finish(`too many retries (${why})`);
      queue.push(i);
      launch();
    };
    const launch = () => {
      while (!finished && inflight < limit && queue.length) {
        const i = queue.shift();
        const index = conns.length;
        const big = Boolean(spec.big);
        const tracked = big && spec.track > 0 && i % spec.track === 0;
        const conn = new Conn(index, big, tracked);
        conn.needState = spec.ready === "big";
        conns.push(conn);
        const rooms = [];
        if (big) rooms.push("room=big");
        if (spec.group) rooms.push(`room=small:${Math.floor(((spec.offset ?? 0) + i) / spec.group)}`);
        inflight += 1;
        let settled = false;
        conn.onOpen = () => {
          if (!settled) {
            settled = true;
            inflight -= 1;
            lastOpen = now();
            launch();
          }
        };
        conn.onFail = (err) => {
          conn.onFail = null;
          if (!settled) {
            settled = true;
            inflight -= 1;
          }
          conn.onReady = null;
          failures += 1;
          conn.dropped = true;
          retry(i, String(err.message ?? err));
        };
        conn.onWelcome = () => {
          if (quota && quota[conn.pid] !== undefined && (kept[conn.pid] ?? 0) >= quota[conn.pid]) {
            // Landed on a worker whose share is full: try again.
            conn.onFail = null;
            conn.onReady = null;
            conn.dropped = true;
            conn.socket.destroy();
            retry(i, "quota");
            return;
          }
          kept[conn.pid] = (kept[conn.pid] ?? 0) + 1;
        };
        conn.onReady = () => {
          conn.onFail = null;
          mine.push(conn);
          ready += 1;
          lastReady = now();
          if (ready === n) finish(null);
        };
        connect(conn, url, rooms.join("&"));
      }
    };
    launch();
  });
}

function stats(values) {
  if (!values.length) return { n: 0, median: null, min: null, max: null };
  const sorted = [...values].sort((a, b) => a - b);
  return { n: values.length, median: sorted[Math.floor(sorted.length / 2)], min: sorted[0], max: sorted[sorted.length - 1] };
}

function live() {
  return conns.filter((c) => !c.dropped);
}

function report(spec) {
  const dead = spec.dead ?? -1;
  const expect = spec.expect ?? null;
  const all = live();
  const survivors = all.filter((c) => c.big && c.pid !== dead && !c.closed);
  const tracked = survivors.filter((c) => c.tracked);
  const rightMs = [];
  const framesUntilRight = [];
  let wrong = 0;
  for (const c of tracked) {
    const at = c.history.findIndex(([, size]) => size === expect);
    if (at === -1) {
      // Never held E after the mark: right only if it already did (no frame).
      if (c.view.size === expect && c.history.length === 0) {
        rightMs.push(0);
        framesUntilRight.push(0);
      } else wrong += 1;
      continue;
    }
    rightMs.push(c.history[at][0] - markAt);
    framesUntilRight.push(at + 1);
  }
  const closedSince = {};
  for (const c of all) {
    if (c.closed && c.pid !== dead && markAt !== null && c.closedAt >= markAt) {
      closedSince[c.code] = (closedSince[c.code] ?? 0) + 1;
    }
  }
  const closedAll = {};
  for (const c of all) if (c.closed) closedAll[c.code] = (closedAll[c.code] ?? 0) + 1;
  return {
    survivors: survivors.length,
    tracked: tracked.length,
    tracked_wrong: wrong,
    right_ms: stats(rightMs),
    frames_until_right: stats(framesUntilRight),
    frames_since_mark: stats(survivors.map((c) => c.bigFrames)),
    tracked_frames_since_mark: stats(tracked.map((c) => c.bigFrames)),
    closed_since_mark: closedSince,
    closed: closedAll,
    bytes_since_mark: received - markBytes,
    dead_conns: all.filter((c) => c.pid === dead).length,
    dead_closed: all.filter((c) => c.pid === dead && c.closed).length,
  };
}

function handle(msg) {
  switch (msg.cmd) {
    case "open":
      return open(msg);
    case "mark":
      markAt = now();
      markBytes = received;
      for (const c of conns) c.bigFrames = 0;
      return { mark: markAt, open: live().filter((c) => !c.closed).length };
    case "report":
      return report(msg);
    case "views": {
      const tracked = live().filter((c) => c.tracked && !c.closed);
      const frames = live().reduce((sum, c) => sum + c.otherPresence, 0);
      return { views: stats(tracked.map((c) => c.view.size)), other_presence: frames };
    }
    case "close": {
      const n = conns.length;
      for (const c of conns) c.socket?.destroy();
      conns = [];
      markAt = null;
      return { closed: n };
    }
    case "exit":
      for (const c of conns) c.socket?.destroy();
      process.stdout.write(`${JSON.stringify({ exit: true })}\n`, () => process.exit(0));
      return null;
    default:
      return { error: `unknown command ${msg.cmd}` };
  }
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  if (!line.trim()) return;
  let answer;
  try {
    answer = await handle(JSON.parse(line));
  } catch (err) {
    answer = { error: String(err?.stack ?? err) };
  }
  if (answer !== null) process.stdout.write(`${JSON.stringify(answer)}\n`);
});
// The bench ended without "exit": close everything and go.
lines.on("close", () => {
  for (const c of conns) c.socket?.destroy();
  process.exit(0);
});
