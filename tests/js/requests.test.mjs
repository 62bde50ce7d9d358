// Request and reply in the browser client: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  DEFAULT_REQUEST_TIMEOUT,
  RequestError,
  WSClient,
} from "../../sanic_ws_ext/static/client.js";
import { FakeSocket } from "./fake-socket.mjs";

/** A client on fake sockets and hand-driven timers. */
function client(options = {}) {
  FakeSocket.made = [];
  const timers = new Map();
  let next = 0;
  const ws = new WSClient("ws://test/ws", {
    WebSocket: FakeSocket,
    random: () => 0.5,
    setTimeout: (fn, ms) => {
      timers.set(++next, { fn, ms });
      return next;
    },
    clearTimeout: (id) => timers.delete(id),
    heartbeatMs: 0, // its timer would stand among the requests' (heartbeat.test.mjs)
    ...options,
  });
  /** Fire the pending timer set for `ms` (a request's timeout, a reconnect). */
  const fire = (ms) => {
    const found = [...timers].find(([, t]) => t.ms === ms);
    assert.ok(found, `no timer of ${ms} ms`);
    timers.delete(found[0]);
    found[1].fn();
  };
  const socket = () => FakeSocket.made.at(-1);
  const sent = () => socket().sent.map((f) => JSON.parse(f));
  return { ws, timers, fire, socket, sent };
}

/** Let promise callbacks run. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

test("a request resolves with the reply's data, matched by ref", async () => {
  const { ws, socket, sent, timers } = client();
  socket().open();
  const first = ws.request("add", { a: 1, b: 2 });
  const second = ws.request("add", { a: 3, b: 4 });
  const [one, two] = sent();
  assert.equal(one.type, "add");
  assert.deepEqual(one.data, { a: 1, b: 2 });
  assert.equal(typeof one.ref, "string");
  assert.notEqual(one.ref, two.ref);
  assert.ok(one.ref.length >= 1 && one.ref.length <= 64);
  // Replies in any order; one for an unknown ref is dropped.
  socket().receive(JSON.stringify({ type: "reply", ref: "nobody", ok: true, data: 0 }));
  socket().receive(JSON.stringify({ type: "reply", ref: two.ref, ok: true, data: 7 }));
  socket().receive(JSON.stringify({ type: "reply", ref: one.ref, ok: true }));
  assert.equal(await second, 7);
  assert.equal(await first, null);
  assert.equal(timers.size, 0, "the timeouts are cleared");
});

test("ok: false rejects with a RequestError carrying code and reason", async () => {
  const { ws, socket, sent } = client();
  socket().open();
  const seen = [];
  ws.on("reply", () => seen.push("reply handler"));
  const pending = ws.request("refuse");
  const { ref } = sent()[0];
  socket().receive(
    JSON.stringify({
      type: "reply",
      ref,
      ok: false,
      error: { code: "not_allowed", reason: "you may not" },
    }),
  );
  await assert.rejects(pending, (error) => {
    assert.ok(error instanceof RequestError);
    assert.equal(error.name, "RequestError");
    assert.equal(error.code, "not_allowed");
    assert.equal(error.reason, "you may not");
    assert.deepEqual(error.details, {});
    return true;
  });
  assert.deepEqual(seen, [], "replies are consumed, not handed to on()");
});

test("invalid_data: the field and the problem are in the error's details", async () => {
  const { ws, socket, sent } = client();
  socket().open();
  const pending = ws.request("chat.send", { txt: "hi" });
  const { ref } = sent()[0];
  const problem = { field: "text", problem: "Field required", count: 1 };
  socket().receive(
    JSON.stringify({
      type: "reply",
      ref,
      ok: false,
      error: { code: "invalid_data", reason: "data.text: Field required", ...problem },
    }),
  );
  await assert.rejects(pending, (error) => {
    assert.equal(error.code, "invalid_data");
    assert.deepEqual(error.details, problem);
    return true;
  });
});

test("no reply in time: rejected with timeout; a late reply is dropped", async () => {
  const { ws, socket, sent, fire } = client();
  socket().open();
  const pending = ws.request("slow", null, { timeout: 250 });
  fire(250);
  await assert.rejects(pending, { name: "RequestError", code: "timeout" });
  socket().receive(JSON.stringify({ type: "reply", ref: sent()[0].ref, ok: true }));
  const defaulted = ws.request("slow");
  fire(DEFAULT_REQUEST_TIMEOUT);
  await assert.rejects(defaulted, { code: "timeout" });
});

test("a dropped connection rejects what it carried; retries resend the same ref", async () => {
  const { ws, socket, sent, fire } = client();
  socket().open();
  const once = ws.request("once");
  const twice = ws.request("twice", "x", { retries: 1 });
  const ref = sent()[1].ref;
  socket().drop();
  await assert.rejects(once, { code: "disconnected" });
  fire(375); // the reconnect
  socket().open();
  // Sent again on the new connection, with the same ref.
  assert.deepEqual(sent(), [{ type: "twice", data: "x", ref }]);
  socket().drop(); // no retry left
  await assert.rejects(twice, { code: "disconnected" });
});

test("a request made offline waits for the connection, after queued sends", async () => {
  const { ws, socket, sent } = client();
  ws.send("before", 1);
  const pending = ws.request("asked", 2);
  socket().open();
  const [before, asked] = sent();
  assert.equal(before.type, "before");
  assert.equal(asked.type, "asked");
  socket().receive(JSON.stringify({ type: "reply", ref: asked.ref, ok: true, data: "yes" }));
  assert.equal(await pending, "yes");
});

test("close() rejects every pending request", async () => {
  const { ws, socket, timers } = client();
  socket().open();
  const sentOne = ws.request("a");
  socket().drop();
  const offline = ws.request("b");
  ws.close();
  await assert.rejects(sentOne, { code: "disconnected" });
  await assert.rejects(offline, { code: "closed" });
  assert.equal(timers.size, 0);
  // Closed for good: a new request fails at once, until connect().
  await assert.rejects(ws.request("c"), { code: "closed" });
  assert.equal(timers.size, 0);
  ws.connect();
  socket().open();
  const again = ws.request("d");
  assert.equal(JSON.parse(socket().sent[0]).type, "d");
  ws.close();
  await assert.rejects(again, { code: "closed" });
});

test("onRequest answers the server's requests", async () => {
  const { ws, socket, sent } = client();
  socket().open();
  const typed = [];
  ws.on("confirm", () => typed.push("on() handler"));
  ws.onRequest("confirm", async (data, envelope) => ({ yes: data.text, ref: envelope.ref }));
  ws.onRequest("sync", (data) => data * 2);
  ws.onRequest("nothing", () => undefined);
  ws.onRequest("fail", () => {
    throw Object.assign(new Error("not now"), { code: "busy" });
  });
  ws.onRequest("bug", async () => {
    throw new TypeError("oops");
  });
  const ask = (type, data, ref) => socket().receive(JSON.stringify({ type, data, ref }));
  ask("confirm", { text: "sure?" }, "s1");
  ask("sync", 21, "s2");
  ask("nothing", null, "s3");
  ask("fail", null, "s4");
  ask("bug", null, "s5");
  ask("unknown.kind", null, "s6");
  await settle();
  const replies = Object.fromEntries(sent().map((r) => [r.ref, r]));
  assert.deepEqual(replies.s1, {
    type: "reply",
    ref: "s1",
    ok: true,
    data: { yes: "sure?", ref: "s1" },
  });
  assert.equal(replies.s2.data, 42);
  assert.deepEqual(replies.s3, { type: "reply", ref: "s3", ok: true, data: null });
  assert.deepEqual(replies.s4.error, { code: "busy", reason: "not now" });
  assert.equal(replies.s4.ok, false);
  assert.equal(replies.s5.error.code, "handler_error");
  assert.equal(replies.s5.error.reason, "oops");
  assert.equal(replies.s6.error.code, "unknown_type");
  assert.deepEqual(typed, [], "requests go to onRequest, not on()");
});

test("onRequest's remover, and no reply on a connection that dropped", async () => {
  const { ws, socket, fire } = client();
  socket().open();
  let release;
  const off = ws.onRequest("later", () => new Promise((resolve) => (release = resolve)));
  socket().receive(JSON.stringify({ type: "later", data: null, ref: "r1" }));
  await settle();
  const asked = socket();
  asked.drop();
  release("too late");
  await settle();
  assert.deepEqual(asked.sent, [], "the server gave up on that connection");
  fire(375);
  socket().open();
  off();
  socket().receive(JSON.stringify({ type: "later", data: null, ref: "r2" }));
  await settle();
  assert.equal(JSON.parse(socket().sent[0]).error.code, "unknown_type");
});
