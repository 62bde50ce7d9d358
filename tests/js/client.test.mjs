// Unit tests for the browser client's backoff and queueing: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DEFAULT_BACKOFF,
  SendQueue,
  WSClient,
  backoffDelay,
  shouldReconnect,
} from "../../sanic_ws_ext/static/client.js";
import { FakeSocket, unref } from "./fake-socket.mjs";

function client(options = {}) {
  FakeSocket.made = [];
  const timers = [];
  const delays = [];
  const clock = { now: 0 };
  const ws = new WSClient("ws://test/ws", {
    WebSocket: FakeSocket,
    random: () => 0.5,
    now: () => clock.now,
    setTimeout: (fn, ms) => delays.push(ms) && timers.push({ fn, ms }) - 1,
    clearTimeout: (i) => (timers[i] = null),
    ...options,
  });
  const fire = () => {
    const timer = timers.findLast((t) => t !== null);
    assert.ok(timer, "no reconnect scheduled");
    timers[timers.indexOf(timer)] = null;
    timer.fn();
  };
  return { ws, timers, delays, clock, fire, socket: () => FakeSocket.made.at(-1) };
}

test("backoff grows exponentially, is capped, and jitter only shortens it", () => {
  const never = () => 0;
  const always = () => 1;
  assert.equal(backoffDelay(0, {}, never), DEFAULT_BACKOFF.base);
  assert.equal(backoffDelay(3, {}, never), DEFAULT_BACKOFF.base * 8);
  assert.equal(backoffDelay(50, {}, never), DEFAULT_BACKOFF.max);
  assert.equal(backoffDelay(50, {}, always), DEFAULT_BACKOFF.max * (1 - DEFAULT_BACKOFF.jitter));
  const spread = new Set(Array.from({ length: 50 }, () => backoffDelay(4)));
  assert.ok(spread.size > 40, "jitter spreads clients apart");
  for (const d of spread) assert.ok(d >= 4000 && d <= 8000);
});

test("the send queue is bounded and drops the oldest", () => {
  const q = new SendQueue(3);
  for (const f of ["a", "b", "c", "d", "e"]) q.push(f);
  assert.deepEqual(q.items, ["c", "d", "e"]);
  assert.equal(q.dropped, 2);
  const out = [];
  q.flush((f) => out.push(f));
  assert.deepEqual(out, ["c", "d", "e"]);
  assert.equal(q.length, 0);
});

test("sends while offline are queued and flushed in order after rooms", () => {
  const { ws, fire, socket } = client();
  ws.send("early", 1); // before the first open
  socket().open();
  assert.deepEqual(socket().sent.map((f) => JSON.parse(f).type), ["early"]);
  ws.join("lobby");
  socket().drop();
  assert.equal(ws.state, "reconnecting");
  ws.send("chat", "a");
  ws.send("chat", "b");
  ws.sendBinary(new Uint8Array([1, 2]));
  assert.equal(ws.queue.length, 3);
  fire();
  socket().open();
  const sent = socket().sent;
  assert.deepEqual(unref(sent[0]), { type: "room.join", data: { room: "lobby" } });
  assert.deepEqual(sent.slice(1, 3).map((f) => JSON.parse(f).data), ["a", "b"]);
  assert.deepEqual([...sent[3]], [1, 2]);
  assert.equal(ws.queue.length, 0);
  assert.equal(ws.state, "open");
});

test("reconnect delays back off, and reset only after a stable connection", () => {
  const { ws, delays, clock, fire, socket } = client();
  const half = () => 0.5;
  socket().drop(); // the first attempt fails before opening
  fire();
  socket().drop();
  fire();
  socket().drop();
  assert.deepEqual(delays, [0, 1, 2].map((n) => backoffDelay(n, {}, half)));
  assert.equal(ws.status.attempt, 3);
  // A server that accepts and closes at once: the backoff keeps growing.
  fire();
  socket().open();
  socket().drop(1011);
  assert.equal(delays.at(-1), backoffDelay(3, {}, half));
  // A connection that lasted: the next delay starts over.
  fire();
  socket().open();
  clock.now += ws.stableMs;
  socket().drop();
  assert.equal(delays.at(-1), backoffDelay(0, {}, half));
  assert.equal(ws.status.attempt, 1);
});

test("rooms are state: offline changes replay as the wanted set, in order", () => {
  const { ws, fire, socket } = client();
  socket().open();
  ws.join("A");
  socket().drop();
  ws.join("B");
  ws.leave("A");
  ws.send("chat", "to B");
  ws.leave("B");
  ws.join("A");
  fire();
  socket().open();
  assert.deepEqual(
    socket().sent.map(unref),
    [
      { type: "room.join", data: { room: "A" } },
      { type: "chat", data: "to B" },
    ],
  );
});

test("close() wins over a pending reconnect, and connect() after it starts anew", () => {
  const { ws, timers, fire, socket } = client();
  socket().drop();
  ws.connect(); // "retry now" during the backoff
  assert.equal(timers.filter((t) => t !== null).length, 0, "the backoff timer is cancelled");
  socket().drop();
  ws.close();
  assert.equal(timers.filter((t) => t !== null).length, 0);
  assert.equal(ws.state, "closed");
  const made = FakeSocket.made.length;
  ws.connect();
  assert.equal(FakeSocket.made.length, made + 1);
  socket().open();
  assert.equal(ws.state, "open");
  void fire;
});

test("a throwing subscriber or handler stops nothing", () => {
  const errors = [];
  const reportError = globalThis.reportError;
  globalThis.reportError = (e) => errors.push(e.message);
  try {
    const { ws, timers, socket } = client();
    ws.subscribe((s) => {
      if (s.state === "reconnecting") throw new Error("subscriber");
    });
    const got = [];
    ws.on("m", () => {
      throw new Error("handler");
    });
    ws.on("*", (_, env) => got.push(env.type));
    ws.on("text", (t) => got.push(`text:${t}`));
    socket().open();
    socket().receive(JSON.stringify({ type: "m", data: 1 }));
    socket().receive("null");
    socket().receive("plain words");
    socket().drop();
    assert.equal(timers.filter((t) => t !== null).length, 1, "the reconnect is still scheduled");
    assert.deepEqual(got, ["m", "text:null", "text:plain words"]);
    assert.deepEqual(errors, ["handler", "subscriber"]);
  } finally {
    globalThis.reportError = reportError;
  }
});

test("the status is a Svelte store: current value at once, then each change", () => {
  const { ws, socket } = client();
  const seen = [];
  const record = (s) => seen.push(s.state);
  const unsubscribe = ws.subscribe(record);
  const second = ws.subscribe(record); // the same function twice: two subscriptions
  assert.deepEqual(seen, ["connecting", "connecting"]);
  second();
  socket().open();
  socket().drop();
  unsubscribe();
  ws.close();
  assert.deepEqual(seen, ["connecting", "connecting", "open", "reconnecting"]);
});

test("close() stops reconnecting", () => {
  const { ws, timers, socket } = client();
  socket().open();
  ws.close();
  assert.equal(ws.state, "closed");
  assert.equal(timers.filter((t) => t !== null).length, 0);
  assert.equal(FakeSocket.made.length, 1);
});

test("handlers by type, for every envelope, and for binary frames", () => {
  const { ws, socket } = client();
  socket().open();
  const got = [];
  const off = ws.on("chat.message", (data, env) => got.push(["typed", data, env.type]));
  ws.on("*", (data, env) => got.push(["any", env.type]));
  ws.on("binary", (buf) => got.push(["binary", buf.byteLength]));
  socket().receive(JSON.stringify({ type: "chat.message", data: "hi" }));
  socket().receive(new ArrayBuffer(3));
  off();
  socket().receive(JSON.stringify({ type: "chat.message", data: "again" }));
  assert.deepEqual(got, [
    ["typed", "hi", "chat.message"],
    ["any", "chat.message"],
    ["binary", 3],
    ["any", "chat.message"],
  ]);
});

test("a close the server meant is final; others reconnect", () => {
  assert.equal(shouldReconnect(1001), true); // server restarting
  assert.equal(shouldReconnect(1006), true); // connection lost
  assert.equal(shouldReconnect(1011), true);
  assert.equal(shouldReconnect(1000), false);
  assert.equal(shouldReconnect(4000), false); // kicked by the app
  const { ws, timers, socket } = client();
  socket().open();
  socket().drop(4000);
  assert.equal(ws.state, "closed");
  assert.equal(ws.status.closeCode, 4000);
  assert.equal(timers.filter((t) => t !== null).length, 0, "no reconnect, no heartbeat");
});

test("offline, volatile sends are dropped and a key keeps only its latest", () => {
  const { ws, fire, socket } = client();
  socket().open();
  socket().drop();
  ws.send("cursor", { x: 1 }, { volatile: true });
  ws.send("chat", "a");
  ws.send("position", 1, { key: "pos" });
  ws.send("chat", "b");
  ws.send("position", 2, { key: "pos" });
  ws.send("position", 3, { key: "pos" });
  assert.equal(ws.queue.length, 3);
  fire();
  socket().open();
  assert.deepEqual(
    socket().sent.map((f) => [JSON.parse(f).type, JSON.parse(f).data]),
    [["chat", "a"], ["position", 3], ["chat", "b"]],
  );
  ws.send("cursor", { x: 2 }, { volatile: true }); // online: sent
  assert.deepEqual(JSON.parse(socket().sent.at(-1)), { type: "cursor", data: { x: 2 } });
});
