// The browser client's heartbeat: a ping after silence, a dead connection
// noticed when nothing comes back. node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DEFAULT_HEARTBEAT_MS,
  DEFAULT_HEARTBEAT_TIMEOUT_MS,
  WSClient,
} from "../../sanic_ws_ext/static/client.js";
import { FakeSocket } from "./fake-socket.mjs";
import { accept, client } from "./harness.mjs";

const BEAT = { heartbeatMs: 1000, heartbeatTimeoutMs: 400 };
const types = (socket) => socket.sent.map((f) => JSON.parse(f).type);

test("a silent connection is pinged, and kept while it answers", () => {
  const { ws, socket, fire, clock, timers } = client(undefined, BEAT);
  socket().open();
  assert.deepEqual([...timers.values()].map((t) => t.ms), [1000]);
  clock.now += 1000;
  fire(1000);
  const ping = JSON.parse(socket().sent.at(-1));
  assert.equal(ping.type, "ping");
  assert.equal(typeof ping.ref, "string");
  clock.now += 100;
  socket().receive(JSON.stringify({ type: "reply", ref: ping.ref, ok: true, data: null }));
  clock.now += 300;
  fire(400);
  assert.equal(ws.state, "open");
  // The next ping comes heartbeatMs after the last frame.
  assert.deepEqual([...timers.values()].map((t) => t.ms), [700]);
});

test("any frame counts: a busy connection sends no pings", () => {
  const { ws, socket, fire, clock } = client(undefined, BEAT);
  socket().open();
  for (let i = 0; i < 5; i++) {
    clock.now += 600;
    socket().receiveEnvelope("tick", i);
    clock.now += 400;
    fire(); // 600 ms after the frame: not yet
    assert.deepEqual(types(socket()), []);
  }
  assert.equal(ws.state, "open");
});

test("no answer in time: the connection is dead, closed and reconnected", () => {
  const { ws, socket, fire, clock } = client(undefined, BEAT);
  const offline = [];
  socket().open();
  ws.join("lobby");
  ws.subscribe((s) => offline.push(s.state));
  const dead = socket();
  clock.now += 1000;
  fire(1000);
  assert.deepEqual(types(dead).at(-1), "ping");
  clock.now += 400;
  fire(400);
  assert.equal(ws.state, "reconnecting");
  assert.equal(ws.status.closeCode, 1006);
  assert.equal(ws.status.closeReason, "heartbeat timeout");
  assert.deepEqual(dead.closedWith, { code: 3008, reason: "heartbeat timeout" });
  dead.receiveEnvelope("late", 1); // the old socket is nothing to the client now
  fire();
  assert.notEqual(socket(), dead);
  socket().open();
  assert.deepEqual(types(socket()), ["room.join"]);
  assert.deepEqual(offline, ["open", "reconnecting", "reconnecting", "open"]);
});

test("the confirming ping of a token client times out as a heartbeat does", () => {
  const { ws, socket, fire } = client(undefined, { token: "t", heartbeatTimeoutMs: 400 });
  socket().open();
  assert.deepEqual(types(socket()), ["ping"]);
  fire(400);
  assert.equal(ws.state, "reconnecting");
  assert.equal(ws.status.closeReason, "heartbeat timeout");
  fire();
  accept(socket());
  assert.equal(ws.state, "open");
});

test("heartbeatMs: 0 turns it off; the defaults", () => {
  const { timers, socket } = client(undefined, { heartbeatMs: 0 });
  socket().open();
  assert.equal(timers.size, 0);
  FakeSocket.made = [];
  const ws = new WSClient("ws://test/ws", { WebSocket: FakeSocket, connect: false });
  assert.equal(ws.heartbeatMs, DEFAULT_HEARTBEAT_MS);
  assert.equal(ws.heartbeatTimeoutMs, DEFAULT_HEARTBEAT_TIMEOUT_MS);
  assert.ok(DEFAULT_HEARTBEAT_MS + DEFAULT_HEARTBEAT_TIMEOUT_MS <= 30000, "seconds, not minutes");
});

test("close() stops the heartbeat", () => {
  const { ws, socket, timers } = client(undefined, { heartbeatMs: 1000 });
  socket().open();
  assert.equal(timers.size, 1);
  ws.close();
  assert.equal(timers.size, 0);
});
