// join() as a promise: resolved by room.joined, rejected by a refusal, and a
// refused room forgotten. node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import { RequestError } from "../../sanic_ws_ext/static/client.js";
import { unref } from "./fake-socket.mjs";
import { client, settle } from "./harness.mjs";

const refuse = (socket, ref, code = "room_refused", reason = "may not join") =>
  socket.receive(JSON.stringify({ type: "reply", ref, ok: false, error: { code, reason } }));
const accepted = (socket, ref, room) => {
  socket.receiveEnvelope("room.joined", { room });
  socket.receive(JSON.stringify({ type: "reply", ref, ok: true, data: { room } }));
};
const joins = (socket) =>
  socket.sent.map((f) => JSON.parse(f)).filter((f) => f.type === "room.join");

test("join resolves on room.joined; a refusal rejects and the room is forgotten", async () => {
  const { ws, socket, fire, events } = client();
  socket().open();
  const lobby = ws.join("lobby");
  const secret = ws.join("secret");
  const [a, b] = joins(socket());
  assert.notEqual(a.ref, b.ref);
  accepted(socket(), a.ref, "lobby");
  refuse(socket(), b.ref);
  assert.deepEqual(await lobby, { room: "lobby" });
  await assert.rejects(secret, (error) => {
    assert.ok(error instanceof RequestError);
    assert.equal(error.code, "room_refused");
    assert.equal(error.reason, "may not join");
    return true;
  });
  assert.deepEqual([...ws.rooms], ["lobby"]);
  assert.deepEqual(events, [
    ["room.refused", { room: "secret", code: "room_refused", reason: "may not join" }],
  ]);
  // After a reconnect only the accepted room is joined again.
  socket().drop();
  fire();
  socket().open();
  assert.deepEqual(socket().sent.map(unref), [{ type: "room.join", data: { room: "lobby" } }]);
});

test("a re-join refused after a reconnect forgets the room and says so", async () => {
  const { ws, socket, fire, events } = client();
  socket().open();
  ws.join("doc:1");
  accepted(socket(), joins(socket())[0].ref, "doc:1");
  const presence = ws.presence("doc:1");
  socket().receiveEnvelope("presence.state", { room: "doc:1", users: { ann: [{ ref: "r1" }] } });
  socket().drop();
  fire();
  socket().open();
  const again = ws.join("doc:1"); // awaited while the re-join is on its way
  const [rejoin, second] = joins(socket());
  refuse(socket(), rejoin.ref, "room_refused", "access revoked");
  // The first refusal is of an older join: the newer one decides.
  assert.deepEqual(events, []);
  assert.ok(ws.rooms.has("doc:1"));
  refuse(socket(), second.ref, "room_refused", "access revoked");
  await assert.rejects(again, { code: "room_refused", reason: "access revoked" });
  assert.deepEqual(events, [
    ["room.refused", { room: "doc:1", code: "room_refused", reason: "access revoked" }],
  ]);
  assert.equal(ws.rooms.has("doc:1"), false);
  assert.equal(presence.value.list.length, 0, "its presence is emptied");
  socket().drop();
  fire();
  socket().open();
  assert.deepEqual(joins(socket()), [], "never sent again");
});

test("a join made offline resolves on the join sent once connected", async () => {
  const { ws, socket, fire } = client();
  socket().open();
  socket().drop();
  let done = null;
  ws.join("lobby").then((data) => (done = data));
  await settle();
  assert.equal(done, null);
  fire();
  socket().open();
  const [join] = joins(socket());
  // A connection dropped before the answer: sent again on the next one.
  socket().drop();
  fire();
  socket().open();
  const [rejoin] = joins(socket());
  assert.notEqual(rejoin.ref, join.ref);
  accepted(socket(), rejoin.ref, "lobby");
  await settle();
  assert.deepEqual(done, { room: "lobby" });
});

test("leave() and close() settle joins still waiting", async () => {
  const { ws, socket, events } = client();
  const left = ws.join("a");
  const closed = ws.join("b");
  ws.leave("a");
  await assert.rejects(left, { name: "RequestError", code: "left" });
  socket().open();
  const [b] = joins(socket());
  ws.close();
  await assert.rejects(closed, { code: "closed" });
  refuse(socket(), b.ref); // late, on a closed client: nothing happens
  assert.deepEqual(events, []);
});

test("a join nobody awaits is no unhandled rejection", async () => {
  const unhandled = [];
  const listener = (reason) => unhandled.push(reason);
  process.on("unhandledRejection", listener);
  try {
    const { ws, socket } = client();
    socket().open();
    ws.join("secret");
    refuse(socket(), joins(socket())[0].ref);
    ws.join("gone");
    ws.leave("gone");
    await settle();
    await settle();
    assert.deepEqual(unhandled, []);
  } finally {
    process.off("unhandledRejection", listener);
  }
});

test("history re-joins carry refs too, and their refusal forgets the position", async () => {
  const { ws, socket } = client();
  socket().open();
  ws.join("chat:1");
  const [first] = joins(socket());
  socket().receiveEnvelope("room.joined", { room: "chat:1", position: { offset: 1, epoch: "e" } });
  const reply = { type: "reply", ref: first.ref, ok: true, data: { room: "chat:1" } };
  socket().receive(JSON.stringify(reply));
  // A gap: re-joined from the last position.
  socket().receive(JSON.stringify({ room: "chat:1", offset: 3, epoch: "e", type: "m", data: 3 }));
  const rejoin = joins(socket()).at(-1);
  assert.deepEqual(rejoin.data, { room: "chat:1", since: { offset: 1, epoch: "e" } });
  refuse(socket(), rejoin.ref);
  assert.equal(ws.positions.has("chat:1"), false);
  assert.equal(ws.rooms.has("chat:1"), false);
});
