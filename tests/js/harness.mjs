// A client on fake sockets for the tests of tests/js/ (not a test file).
import assert from "node:assert/strict";

import { WSClient } from "../../sanic_ws_ext/static/client.js";
import { FakeSocket } from "./fake-socket.mjs";

/** A client on fake sockets, hand-driven timers and clock; heartbeat off unless asked. */
export function client(url, options = {}) {
  FakeSocket.made = [];
  const timers = new Map();
  let next = 0;
  const clock = { now: 0 };
  const ws = new WSClient(url ?? "ws://test/ws", {
    WebSocket: FakeSocket,
    random: () => 0.5,
    now: () => clock.now,
    setTimeout: (fn, ms) => {
      timers.set(++next, { fn, ms });
      return next;
    },
    clearTimeout: (id) => timers.delete(id),
    heartbeatMs: 0,
    ...options,
    connect: false,
  });
  /** Fire the pending timer of `ms` (the only one, without `ms`). */
  const fire = (ms) => {
    const found = [...timers].filter(([, t]) => ms === undefined || t.ms === ms);
    const pending = [...timers.values()].map((t) => t.ms);
    assert.ok(found.length, `no timer${ms === undefined ? "" : ` of ${ms} ms`}: ${pending}`);
    assert.ok(ms !== undefined || found.length === 1, "which timer?");
    timers.delete(found[0][0]);
    found[0][1].fn();
  };
  const socket = () => FakeSocket.made.at(-1);
  const sent = () => socket().sent.map((f) => JSON.parse(f));
  const events = [];
  for (const type of ["auth.error", "auth.refreshed", "room.refused"]) {
    ws.on(type, (event) => events.push([type, event]));
  }
  if (options.connect !== false) ws.connect();
  return { ws, timers, fire, clock, socket, sent, events };
}

/** Let promise callbacks run. */
export const settle = () => new Promise((resolve) => setImmediate(resolve));

/** Open `socket` and answer the ping the client confirms a connection with. */
export function accept(socket) {
  socket.open();
  const ping = JSON.parse(socket.sent.at(-1));
  assert.equal(ping.type, "ping");
  socket.receive(JSON.stringify({ type: "reply", ref: ping.ref, ok: true, data: null }));
}

