// The browser client in history rooms: positions, resuming, duplicates, gaps.
// node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import { WSClient } from "../../sanic_ws_ext/static/client.js";
import { FakeSocket, unref } from "./fake-socket.mjs";

function client() {
  FakeSocket.made = [];
  const timers = [];
  const ws = new WSClient("ws://test/ws", {
    WebSocket: FakeSocket,
    random: () => 0.5,
    setTimeout: (fn, ms) => timers.push({ fn, ms }) - 1,
    clearTimeout: (i) => (timers[i] = null),
  });
  const reconnect = () => {
    const timer = timers.findLast((t) => t !== null);
    timers[timers.indexOf(timer)] = null;
    timer.fn();
  };
  return { ws, reconnect, socket: () => FakeSocket.made.at(-1) };
}

function publication(socket, room, offset, data, epoch = "e1") {
  socket.receive(JSON.stringify({ room, offset, epoch, type: "msg", data }));
}

function joined(socket, data) {
  socket.receiveEnvelope("room.joined", data);
}

const sentFrames = (socket) => socket.sent.map(unref);

test("join resolves to room.joined and the position is remembered", async () => {
  const { ws, socket } = client();
  socket().open();
  const answer = ws.join("chat:1");
  assert.deepEqual(sentFrames(socket()).at(-1), { type: "room.join", data: { room: "chat:1" } });
  joined(socket(), { room: "chat:1", position: { offset: 4, epoch: "e1" } });
  assert.deepEqual(await answer, { room: "chat:1", position: { offset: 4, epoch: "e1" } });
  publication(socket(), "chat:1", 5, "a");
  assert.deepEqual(ws.positions.get("chat:1"), { offset: 5, epoch: "e1" });
});

test("after a reconnect it re-joins with since, drops duplicates, reports recovery", async () => {
  const { ws, socket, reconnect } = client();
  socket().open();
  ws.join("chat:1");
  joined(socket(), { room: "chat:1", position: { offset: 0, epoch: "e1" } });
  const got = [];
  const recoveries = [];
  ws.on("msg", (data) => got.push(data));
  ws.on("room.recovery", (r) => recoveries.push(r));
  publication(socket(), "chat:1", 1, "a");
  publication(socket(), "chat:1", 2, "b");
  socket().drop();
  reconnect();
  socket().open();
  assert.deepEqual(sentFrames(socket())[0], {
    type: "room.join",
    data: { room: "chat:1", since: { offset: 2, epoch: "e1" } },
  });
  const again = ws.join("chat:1"); // the app may await the re-join too
  publication(socket(), "chat:1", 2, "b"); // a duplicate: dropped
  publication(socket(), "chat:1", 3, "c");
  joined(socket(), { room: "chat:1", recovered: true, position: { offset: 3, epoch: "e1" } });
  publication(socket(), "chat:1", 3, "c"); // live, already replayed: dropped
  publication(socket(), "chat:1", 4, "d");
  assert.deepEqual(got, ["a", "b", "c", "d"]);
  assert.deepEqual(recoveries, [
    { room: "chat:1", recovered: true, position: { offset: 3, epoch: "e1" } },
  ]);
  assert.equal((await again).recovered, true);
});

test("not recovered: the app is told, and the new position is taken", () => {
  const { ws, socket } = client();
  socket().open();
  ws.join("chat:1");
  joined(socket(), { room: "chat:1", position: { offset: 7, epoch: "e1" } });
  const recoveries = [];
  ws.on("room.recovery", (r) => recoveries.push(r.recovered));
  joined(socket(), { room: "chat:1", recovered: false, position: { offset: 90, epoch: "e2" } });
  const got = [];
  ws.on("msg", (data) => got.push(data));
  publication(socket(), "chat:1", 91, "x", "e2");
  assert.deepEqual(got, ["x"]);
  assert.deepEqual(recoveries, [false]);
  assert.deepEqual(ws.positions.get("chat:1"), { offset: 91, epoch: "e2" });
});

test("a new epoch seen live is taken and reported as not recovered", () => {
  const { ws, socket } = client();
  socket().open();
  ws.join("chat:1");
  joined(socket(), { room: "chat:1", position: { offset: 57, epoch: "e1" } });
  const got = [];
  const recoveries = [];
  ws.on("msg", (data) => got.push(data));
  ws.on("room.recovery", (r) => recoveries.push(r));
  publication(socket(), "chat:1", 1, "fresh", "e2"); // not a duplicate of offset 1 of e1
  assert.deepEqual(got, ["fresh"]);
  assert.deepEqual(recoveries, [
    { room: "chat:1", recovered: false, position: { offset: 1, epoch: "e2" } },
  ]);
});

test("a gap re-joins once from the last position; the replay fills it in order", () => {
  const { ws, socket } = client();
  socket().open();
  ws.join("chat:1");
  joined(socket(), { room: "chat:1", position: { offset: 1, epoch: "e1" } });
  const got = [];
  ws.on("msg", (data) => got.push(data));
  socket().sent = [];
  publication(socket(), "chat:1", 3, "c"); // 2 went missing
  publication(socket(), "chat:1", 4, "d");
  assert.deepEqual(sentFrames(socket()), [
    { type: "room.join", data: { room: "chat:1", since: { offset: 1, epoch: "e1" } } },
  ]);
  for (const [offset, data] of [[2, "b"], [3, "c"], [4, "d"]]) {
    publication(socket(), "chat:1", offset, data);
  }
  joined(socket(), { room: "chat:1", recovered: true, position: { offset: 4, epoch: "e1" } });
  publication(socket(), "chat:1", 5, "e");
  assert.deepEqual(got, ["b", "c", "d", "e"]);
});

test("leaving forgets the position; plain rooms are untouched", () => {
  const { ws, socket } = client();
  socket().open();
  ws.join("chat:1");
  joined(socket(), { room: "chat:1", position: { offset: 3, epoch: "e1" } });
  ws.leave("chat:1");
  assert.equal(ws.positions.has("chat:1"), false);
  ws.join("chat:1");
  assert.deepEqual(sentFrames(socket()).at(-1), { type: "room.join", data: { room: "chat:1" } });
  const got = [];
  ws.on("said", (data) => got.push(data));
  socket().receiveEnvelope("said", "plain");
  socket().receive(JSON.stringify({ room: 5, offset: "x", type: "said", data: "odd" }));
  assert.deepEqual(got, ["plain", "odd"]);
});

test("join with since resumes a room left earlier, from the saved position", async () => {
  const { ws, socket } = client();
  socket().open();
  ws.join("chat:1");
  joined(socket(), { room: "chat:1", position: { offset: 3, epoch: "e1" } });
  const saved = ws.positions.get("chat:1");
  ws.leave("chat:1");
  assert.equal(ws.positions.has("chat:1"), false);
  const got = [];
  ws.on("msg", (data) => got.push(data));
  const answer = ws.join("chat:1", { since: saved });
  assert.deepEqual(sentFrames(socket()).at(-1), {
    type: "room.join",
    data: { room: "chat:1", since: { offset: 3, epoch: "e1" } },
  });
  publication(socket(), "chat:1", 3, "already had");
  publication(socket(), "chat:1", 4, "missed");
  joined(socket(), { room: "chat:1", recovered: true, position: { offset: 4, epoch: "e1" } });
  assert.deepEqual(got, ["missed"]);
  assert.equal((await answer).recovered, true);
  // A since that is no position is ignored: a plain join.
  ws.leave("chat:1");
  ws.join("chat:1", { since: { offset: "3" } });
  assert.deepEqual(sentFrames(socket()).at(-1), { type: "room.join", data: { room: "chat:1" } });
});

test("a room the server joined it to is resumed from its own position", () => {
  const { ws, socket, reconnect } = client();
  socket().open();
  const got = [];
  const recoveries = [];
  ws.on("msg", (data) => got.push(data));
  ws.on("room.recovery", (r) => recoveries.push(r));
  // The server's on_connect joins it: no room.join of its own.
  joined(socket(), { room: "feed:1", position: { offset: 0, epoch: "e1" } });
  publication(socket(), "feed:1", 1, "a");
  socket().drop();
  reconnect();
  socket().open();
  assert.deepEqual(sentFrames(socket()), []); // not a room it joined itself
  joined(socket(), { room: "feed:1", position: { offset: 3, epoch: "e1" } });
  assert.deepEqual(sentFrames(socket()), [
    { type: "room.join", data: { room: "feed:1", since: { offset: 1, epoch: "e1" } } },
  ]);
  publication(socket(), "feed:1", 4, "d"); // live, past the gap: replayed below
  publication(socket(), "feed:1", 2, "b");
  publication(socket(), "feed:1", 3, "c");
  joined(socket(), { room: "feed:1", recovered: true, position: { offset: 3, epoch: "e1" } });
  publication(socket(), "feed:1", 4, "d");
  assert.deepEqual(got, ["a", "b", "c", "d"]);
  assert.deepEqual(recoveries, [
    { room: "feed:1", recovered: true, position: { offset: 3, epoch: "e1" } },
  ]);
  assert.equal(ws.rooms.has("feed:1"), false); // still the server's room
});

test("a room the server joined it to in another epoch is reported lost", () => {
  const { ws, socket, reconnect } = client();
  socket().open();
  const recoveries = [];
  ws.on("room.recovery", (r) => recoveries.push(r));
  joined(socket(), { room: "feed:1", position: { offset: 5, epoch: "e1" } });
  socket().drop();
  reconnect();
  socket().open();
  joined(socket(), { room: "feed:1", position: { offset: 2, epoch: "e2" } });
  assert.deepEqual(sentFrames(socket()), []);
  assert.deepEqual(recoveries, [
    { room: "feed:1", recovered: false, position: { offset: 2, epoch: "e2" } },
  ]);
  assert.deepEqual(ws.positions.get("feed:1"), { offset: 2, epoch: "e2" });
});
