// The browser client's connection parameters, in-band refusals (4401, 4403)
// and token refresh: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import { RequestError, WSClient, shouldReconnect } from "../../sanic_ws_ext/static/client.js";
import { FakeSocket } from "./fake-socket.mjs";
import { accept, client, settle } from "./harness.mjs";

const query = (socket) => Object.fromEntries(new URL(socket.url).searchParams);

test("url, params and token are evaluated on every attempt, never cached", async () => {
  const asked = [];
  let n = 0;
  const { ws, socket, fire } = client(() => "ws://test/ws?v=1", {
    params: () => ({ room: "r", n: ++n, gone: undefined }),
    token: async (info) => {
      asked.push(info);
      return `t${asked.length}`;
    },
  });
  assert.equal(FakeSocket.made.length, 0, "the token is being fetched");
  assert.equal(ws.state, "connecting");
  await settle();
  assert.deepEqual(query(socket()), { v: "1", room: "r", n: "1", token: "t1" });
  accept(socket());
  socket().drop(1006);
  fire();
  await settle();
  assert.deepEqual(query(socket()), { v: "1", room: "r", n: "2", token: "t2" });
  assert.deepEqual(asked, [
    { reason: "connect", attempt: 0 },
    { reason: "reconnect", attempt: 1 },
  ]);
  // A token function may give null: no token this time.
  const bare = client("ws://test/ws", { token: () => null });
  assert.equal(bare.socket().url, "ws://test/ws");
  void ws;
});

test("static parameters keep the attempt synchronous", () => {
  const { socket } = client("ws://test/ws", { params: { a: 1 }, token: "abc" });
  assert.deepEqual(query(socket()), { a: "1", token: "abc" });
  const plain = client("ws://test/ws?x=1");
  assert.equal(plain.socket().url, "ws://test/ws?x=1", "no parameters: the URL as given");
});

test("with a token the connection counts as open once the server answered", () => {
  const { ws, socket } = client("ws://test/ws", { token: "abc" });
  ws.send("early", 1);
  ws.join("lobby");
  socket().open();
  assert.equal(ws.state, "connecting", "opened, not yet accepted");
  assert.deepEqual(
    socket().sent.map((f) => JSON.parse(f).type),
    ["ping"],
    "nothing else goes out until then: an in-band refusal would lose it",
  );
  const pending = ws.request("asked");
  assert.equal(socket().sent.length, 1);
  socket().receive(JSON.stringify({ type: "reply", ref: "x", ok: true }));
  assert.equal(ws.state, "open");
  assert.deepEqual(
    socket().sent.map((f) => JSON.parse(f).type),
    ["ping", "room.join", "early", "asked"],
  );
  ws.close();
  return assert.rejects(pending, { code: "closed" });
});

test("an in-band refusal loses nothing queued", async () => {
  const { ws, socket, fire } = client("ws://test/ws", { token: () => "abc" });
  ws.send("kept", 1);
  socket().open();
  socket().drop(4401, "token expired");
  fire();
  accept(socket());
  assert.deepEqual(
    socket().sent.map((f) => JSON.parse(f).type),
    ["ping", "kept"],
  );
  void ws;
});

test("4401 asks for a new token and reconnects with backoff", async () => {
  const reasons = [];
  let n = 0;
  const { ws, socket, fire, timers, events, clock } = client("ws://test/ws", {
    token: async ({ reason }) => {
      reasons.push(reason);
      return `t${++n}`;
    },
  });
  await settle();
  accept(socket());
  clock.now += 60000; // a connection that lasted: the first retry is quick
  socket().drop(4401, "token expired");
  assert.equal(ws.state, "reconnecting");
  assert.equal(ws.status.closeCode, 4401);
  assert.equal(ws.status.closeReason, "token expired");
  assert.deepEqual(events, [
    ["auth.error", { stage: "connect", code: 4401, reason: "token expired", final: false }],
  ]);
  assert.deepEqual([...timers.values()].map((t) => t.ms), [375]);
  fire();
  await settle();
  assert.equal(query(socket()).token, "t2");
  // Refused again at once: the backoff grows, the token is asked for again.
  socket().open();
  socket().drop(4401, "bad token");
  assert.deepEqual([...timers.values()].map((t) => t.ms), [750]);
  fire();
  await settle();
  assert.equal(query(socket()).token, "t3");
  assert.deepEqual(reasons, ["connect", "unauthorized", "unauthorized"]);
});

test("4401 with nothing new to offer (a fixed token) is final", () => {
  const { ws, socket, timers, events } = client("ws://test/ws?token=fixed");
  socket().open();
  socket().drop(4401, "token expired");
  assert.equal(ws.state, "closed");
  assert.equal(timers.size, 0);
  assert.deepEqual(events, [
    ["auth.error", { stage: "connect", code: 4401, reason: "token expired", final: true }],
  ]);
});

test("4403 stops reconnecting, and says why", async () => {
  const { ws, socket, timers, events } = client("ws://test/ws", { token: () => "abc" });
  const joined = ws.join("lobby");
  const asked = ws.request("x");
  socket().open();
  socket().drop(4403, "banned");
  assert.equal(ws.state, "closed");
  assert.equal(ws.status.closeCode, 4403);
  assert.equal(ws.status.closeReason, "banned");
  assert.equal(timers.size, 0, "no reconnect, no heartbeat");
  assert.deepEqual(events, [
    ["auth.error", { stage: "connect", code: 4403, reason: "banned", final: true }],
  ]);
  await assert.rejects(joined, { code: "closed" });
  await assert.rejects(asked, { code: "closed" });
});

test("the rule for other 4xxx codes", () => {
  // 4000 + an HTTP status another attempt may cure: reconnect.
  for (const code of [4401, 4408, 4429, 4500, 4502, 4503, 4599]) {
    assert.equal(shouldReconnect(code), true, code);
  }
  // The app's own codes, and refusals that would only repeat: final.
  for (const code of [4000, 4001, 4400, 4403, 4404, 4409, 4999, 1000]) {
    assert.equal(shouldReconnect(code), false, code);
  }
  const { ws, socket } = client("ws://test/ws");
  socket().open();
  socket().drop(4429, "too many connections");
  assert.equal(ws.state, "reconnecting");
  // An app's shouldReconnect decides alone, 4401 included.
  const own = client("ws://test/ws?token=fixed", { shouldReconnect: (code) => code === 4401 });
  own.socket().open();
  own.socket().drop(4401);
  assert.equal(own.ws.state, "reconnecting");
});

test("a token function that throws is reported, and retried with backoff", async () => {
  let fail = true;
  const { ws, socket, fire, timers, events } = client("ws://test/ws", {
    token: async () => {
      if (fail) throw new Error("login service down");
      return "ok";
    },
  });
  await settle();
  assert.equal(FakeSocket.made.length, 0);
  assert.equal(ws.state, "reconnecting");
  assert.equal(events.length, 1);
  const [type, event] = events[0];
  assert.equal(type, "auth.error");
  assert.equal(event.stage, "connect");
  assert.equal(event.code, "token_error");
  assert.equal(event.reason, "login service down");
  assert.equal(event.error.message, "login service down");
  assert.deepEqual([...timers.values()].map((t) => t.ms), [375]);
  fire();
  await settle();
  assert.deepEqual([...timers.values()].map((t) => t.ms), [750], "backoff grows");
  fail = false;
  fire();
  await settle();
  assert.equal(query(socket()).token, "ok");
});

test("a throwing token function with nobody listening goes to reportError", async () => {
  const reported = [];
  const reportError = globalThis.reportError;
  globalThis.reportError = (e) => reported.push(e.message);
  try {
    FakeSocket.made = [];
    const ws = new WSClient("ws://test/ws", {
      WebSocket: FakeSocket,
      heartbeatMs: 0,
      setTimeout: () => 0,
      clearTimeout: () => {},
      token: () => {
        throw new Error("no session");
      },
    });
    assert.deepEqual(reported, ["no session"]);
    assert.equal(ws.state, "reconnecting");
  } finally {
    globalThis.reportError = reportError;
  }
});

test("close() while the token is being fetched makes no socket", async () => {
  let release;
  const { ws } = client("ws://test/ws", {
    token: () => new Promise((resolve) => (release = resolve)),
  });
  ws.close();
  release("late");
  await settle();
  assert.equal(FakeSocket.made.length, 0);
  assert.equal(ws.state, "closed");
});

test("a token as a subprotocol entry: bearer.<token>, besides the app's protocols", async () => {
  const { ws, socket } = client("ws://test/ws", {
    protocols: ["chat.v1"],
    tokenTransport: "subprotocol",
    token: async () => "eyJ1c2VyIjoiYW5uIn0.c2ln",
  });
  await settle();
  assert.equal(socket().url, "ws://test/ws", "not in the URL");
  assert.deepEqual(socket().protocols, ["chat.v1", "bearer.eyJ1c2VyIjoiYW5uIn0.c2ln"]);
  socket().protocol = "chat.v1";
  accept(socket());
  assert.equal(ws.protocol, "chat.v1");
  socket().drop();
  assert.equal(ws.protocol, "");
  // Without app protocols browsers would fail the handshake: refused early.
  assert.throws(
    () => new WSClient("ws://test/ws", { tokenTransport: "subprotocol", connect: false }),
    TypeError,
  );
  assert.throws(() => new WSClient("ws://test/ws", { tokenTransport: "header" }), TypeError);
  // Plain protocols, no token.
  const plain = client("ws://test/ws", { protocols: "chat.v1" });
  assert.deepEqual(plain.socket().protocols, ["chat.v1"]);
});

test("a token a subprotocol cannot carry is a token_error", () => {
  const { ws, events } = client("ws://test/ws", {
    protocols: ["chat.v1"],
    tokenTransport: "subprotocol",
    token: () => "has spaces/and=",
  });
  assert.equal(FakeSocket.made.length, 0);
  assert.equal(events[0][1].code, "token_error");
  assert.equal(ws.state, "reconnecting");
});

test("auth.refresh: a fresh token goes back in a request, without a reconnect", async () => {
  const asked = [];
  const { ws, socket, sent, events } = client("ws://test/ws", {
    token: async (info) => {
      asked.push(info.reason);
      return `t${asked.length}`;
    },
  });
  await settle();
  accept(socket());
  const seen = [];
  ws.on("auth.refresh", (data) => seen.push(data));
  socket().receiveEnvelope("auth.refresh", { expires_at: 1795689162 });
  socket().receiveEnvelope("auth.refresh", { expires_at: 1795689162 }); // one at a time
  await settle();
  const request = sent().at(-1);
  assert.equal(request.type, "auth.refresh");
  assert.deepEqual(request.data, { token: "t2" });
  assert.equal(sent().filter((f) => f.type === "auth.refresh").length, 1);
  socket().receive(
    JSON.stringify({ type: "reply", ref: request.ref, ok: true, data: { expires_at: 1795690000 } }),
  );
  await settle();
  assert.deepEqual(events, [["auth.refreshed", { expires_at: 1795690000 }]]);
  assert.deepEqual(asked, ["connect", "refresh"]);
  assert.equal(seen.length, 2, "the app's handlers see the push too");
  assert.equal(FakeSocket.made.length, 1, "no reconnect");
  // Refused: reported; the connection stays (the server closes it at expiry).
  socket().receiveEnvelope("auth.refresh", { expires_at: 1795690000 });
  await settle();
  const again = sent().at(-1);
  socket().receive(
    JSON.stringify({
      type: "reply",
      ref: again.ref,
      ok: false,
      error: { code: "auth_refused", reason: "token revoked" },
    }),
  );
  await settle();
  assert.deepEqual(events.at(-1), [
    "auth.error",
    { stage: "refresh", code: "auth_refused", reason: "token revoked", final: false },
  ]);
  assert.equal(ws.state, "open");
});

test("auth.refresh with a fixed token, or a failing token function, is reported", async () => {
  const fixed = client("ws://test/ws", { token: "abc" });
  accept(fixed.socket());
  fixed.socket().receiveEnvelope("auth.refresh", { expires_at: 1 });
  await settle();
  assert.equal(fixed.events[0][1].code, "no_token_function");
  assert.equal(fixed.sent().at(-1).type, "ping", "nothing sent");

  let calls = 0;
  const failing = client("ws://test/ws", {
    token: () => {
      calls += 1;
      if (calls > 1) throw new Error("logged out");
      return "first";
    },
  });
  accept(failing.socket());
  failing.socket().receiveEnvelope("auth.refresh", { expires_at: 1 });
  await settle();
  assert.equal(failing.events[0][1].stage, "refresh");
  assert.equal(failing.events[0][1].code, "token_error");
  assert.equal(failing.ws.state, "open");
});

test("a refresh whose connection dropped meanwhile sends nothing", async () => {
  let release;
  let first = true;
  const { socket, events, fire } = client("ws://test/ws", {
    token: () => {
      if (first) {
        first = false;
        return "t1";
      }
      return new Promise((resolve) => (release = resolve));
    },
  });
  accept(socket());
  const old = socket();
  old.receiveEnvelope("auth.refresh", { expires_at: 1 });
  old.drop();
  release("t2");
  await settle();
  assert.deepEqual(
    old.sent.map((f) => JSON.parse(f).type),
    ["ping"],
  );
  assert.deepEqual(events, []);
  void fire;
});

test("RequestError is what join() rejects with", async () => {
  const { ws, socket, sent } = client("ws://test/ws");
  socket().open();
  const joining = ws.join("secret");
  const { ref } = sent().at(-1);
  socket().receive(
    JSON.stringify({
      type: "reply",
      ref,
      ok: false,
      error: { code: "room_refused", reason: "no" },
    }),
  );
  await assert.rejects(joining, (error) => error instanceof RequestError);
});

test("a socket that cannot be made (a malformed URL) is reported and retried", () => {
  const reported = [];
  const reportError = globalThis.reportError;
  globalThis.reportError = (e) => reported.push(e.message);
  try {
    class Refusing {
      constructor() {
        throw new SyntaxError("not a websocket URL");
      }
    }
    const { ws, timers } = client("not a url", { WebSocket: Refusing });
    assert.deepEqual(reported, ["not a websocket URL"]);
    assert.equal(ws.state, "reconnecting");
    assert.equal(timers.size, 1);
  } finally {
    globalThis.reportError = reportError;
  }
});

test("after a 4401, attempts say unauthorized until one gets a socket", async () => {
  const reasons = [];
  let fail = false;
  const { socket, fire } = client("ws://test/ws", {
    token: async ({ reason }) => {
      reasons.push(reason);
      if (fail) throw new Error("token route down");
      return "t";
    },
  });
  await settle();
  accept(socket());
  fail = true;
  socket().drop(4401, "token expired");
  fire();
  await settle(); // refused: the token route is down
  fail = false;
  fire();
  await settle();
  accept(socket());
  socket().drop(1006);
  fire();
  await settle();
  assert.deepEqual(reasons, ["connect", "unauthorized", "unauthorized", "reconnect"]);
});

test("a params function that throws is reported and retried", () => {
  const reported = [];
  const reportError = globalThis.reportError;
  globalThis.reportError = (e) => reported.push(e.message);
  try {
    let n = 0;
    const { ws, fire, socket } = client("ws://test/ws", {
      params: () => {
        if (++n === 1) throw new Error("no room yet");
        return { room: "r" };
      },
    });
    assert.deepEqual(reported, ["no room yet"]);
    assert.equal(ws.state, "reconnecting");
    fire();
    assert.deepEqual(query(socket()), { room: "r" });
  } finally {
    globalThis.reportError = reportError;
  }
});
