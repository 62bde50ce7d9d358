// Unit tests for the browser client's presence stores: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import { PresenceStore, WSClient } from "../../sanic_ws_ext/static/client.js";
import { FakeSocket, unref } from "./fake-socket.mjs";

/** A client on a FakeSocket, already open; reconnects run when `fire()` is called. */
function client() {
  FakeSocket.made = [];
  const timers = [];
  const ws = new WSClient("ws://test/ws", {
    WebSocket: FakeSocket,
    random: () => 0.5,
    setTimeout: (fn) => timers.push(fn),
    clearTimeout: () => {},
  });
  FakeSocket.last.open();
  const fire = () => timers.pop()();
  return { ws, fire, server: () => FakeSocket.last };
}

/** What the store's join and leave callbacks report, as "+key" and "-key". */
function events(store) {
  const seen = [];
  store.onJoin((key, metas, { initial }) => seen.push(`+${key}${initial ? " (initial)" : ""}`));
  store.onLeave((key, metas) => seen.push(`-${key} [${metas.map((m) => m.ref)}]`));
  return seen;
}

const keys = (store) => store.list().map((p) => p.key);
const refs = (store, key) => store.get(key)?.map((m) => m.ref);

const state = (room, users) => ["presence.state", { room, users }];
const diff = (room, joins = {}, leaves = {}) => ["presence.diff", { room, joins, leaves }];

test("a state, then diffs: joins, leaves, list, get and count", () => {
  const { ws, server } = client();
  const lobby = ws.presence("lobby");
  assert.equal(ws.presence("lobby"), lobby, "one store per room");
  assert.ok(lobby instanceof PresenceStore);
  assert.equal(lobby.synced, false);
  assert.deepEqual(lobby.list(), []);
  const seen = events(lobby);

  server().receiveEnvelope(
    ...state("lobby", {
      ann: [{ ref: "a1", name: "Ann" }],
      bob: [{ ref: "b1", name: "Bob" }],
    }),
  );
  assert.equal(lobby.synced, true);
  assert.deepEqual(lobby.list(), [
    { key: "ann", metas: [{ ref: "a1", name: "Ann" }] },
    { key: "bob", metas: [{ ref: "b1", name: "Bob" }] },
  ]);
  assert.deepEqual(seen, ["+ann (initial)", "+bob (initial)"]);

  server().receiveEnvelope(
    ...diff("lobby", { cat: [{ ref: "c1", name: "Cat" }] }, { bob: [{ ref: "b1" }] }),
  );
  assert.deepEqual(keys(lobby), ["ann", "cat"]);
  assert.deepEqual(lobby.get("cat"), [{ ref: "c1", name: "Cat" }]);
  assert.equal(lobby.get("bob"), undefined);
  assert.deepEqual(lobby.count, { connections: 2, users: 2 });
  assert.deepEqual(
    lobby.list((key, metas) => metas[0].name),
    ["Ann", "Cat"],
  );
  assert.deepEqual(seen.slice(2), ["+cat", "-bob [b1]"]);

  // Other rooms' frames go to their own stores; unknown refs and keys are ignored.
  server().receiveEnvelope(...state("other", { dan: [{ ref: "d1" }] }));
  server().receiveEnvelope(...diff("lobby", {}, { zed: [{ ref: "z1" }], ann: [{ ref: "nope" }] }));
  assert.deepEqual(keys(lobby), ["ann", "cat"]);
  assert.deepEqual(keys(ws.presence("other")), ["dan"]);
  assert.equal(seen.length, 4);
});

test("several tabs of one user are one key: join and leave on its first and last meta", () => {
  const { ws, server } = client();
  const lobby = ws.presence("lobby");
  const seen = events(lobby);
  server().receiveEnvelope(...state("lobby", {}));
  assert.deepEqual(lobby.count, { connections: 0, users: 0 });

  server().receiveEnvelope(...diff("lobby", { ann: [{ ref: "a1" }] }));
  server().receiveEnvelope(...diff("lobby", { ann: [{ ref: "a2" }] })); // a second tab
  assert.deepEqual(refs(lobby, "ann"), ["a1", "a2"]);
  assert.deepEqual(lobby.count, { connections: 2, users: 1 });
  assert.deepEqual(seen, ["+ann"]);

  server().receiveEnvelope(...diff("lobby", {}, { ann: [{ ref: "a1" }] })); // one tab closed
  assert.deepEqual(refs(lobby, "ann"), ["a2"]);
  assert.deepEqual(seen, ["+ann"], "the key stays");

  server().receiveEnvelope(...diff("lobby", {}, { ann: [{ ref: "a2" }] })); // the last one
  assert.deepEqual(keys(lobby), []);
  assert.deepEqual(seen, ["+ann", "-ann [a2]"]);

  // Two tabs at once, in one state or one diff: one join.
  server().receiveEnvelope(...diff("lobby", { bob: [{ ref: "b1" }, { ref: "b2" }] }));
  assert.deepEqual(seen.slice(2), ["+bob"]);
  // A tab that came and went within one interval: nothing to report.
  server().receiveEnvelope(...diff("lobby", { cat: [{ ref: "c1" }] }, { cat: [{ ref: "c1" }] }));
  assert.equal(lobby.get("cat"), undefined);
  assert.deepEqual(seen.slice(2), ["+bob"]);
});

test("a metadata update (old ref out, new ref in) is not a leave and a join", () => {
  const { ws, server } = client();
  const lobby = ws.presence("lobby");
  const seen = events(lobby);
  const values = [];
  lobby.subscribe((v) => values.push(v));
  server().receiveEnvelope(
    ...state("lobby", {
      ann: [{ ref: "a1", typing: false }],
      bob: [{ ref: "b1", typing: false }],
    }),
  );
  const bobEntry = lobby.list()[1];

  server().receiveEnvelope(
    ...diff(
      "lobby",
      { ann: [{ ref: "a2", typing: true }] },
      { ann: [{ ref: "a1", typing: false }] },
    ),
  );
  assert.deepEqual(lobby.get("ann"), [{ ref: "a2", typing: true }]);
  assert.deepEqual(keys(lobby), ["ann", "bob"], "the key keeps its place");
  assert.deepEqual(seen, ["+ann (initial)", "+bob (initial)"]);
  assert.equal(values.length, 3, "subscribers see the update");
  assert.notEqual(values[2], values[1], "a new value per change");
  assert.equal(values[2].list[1], bobEntry, "an unchanged key keeps its entry");

  // A join whose ref is already there replaces that meta.
  server().receiveEnvelope(...diff("lobby", { ann: [{ ref: "a2", typing: true, extra: 1 }] }));
  assert.deepEqual(lobby.get("ann"), [{ ref: "a2", typing: true, extra: 1 }]);
});

test("diffs before the first state wait for it and are applied after it, in order", () => {
  const { ws, server } = client();
  const lobby = ws.presence("lobby");
  const seen = events(lobby);
  const values = [];
  lobby.subscribe((v) => values.push(v));

  // One the state will already contain (bob), one made after its snapshot
  // (cat), and an update of a meta the state has (ann's a1 -> a2).
  server().receiveEnvelope(...diff("lobby", { bob: [{ ref: "b1" }] }));
  server().receiveEnvelope(...diff("lobby", { cat: [{ ref: "c1" }] }));
  server().receiveEnvelope(...diff("lobby", { ann: [{ ref: "a2" }] }, { ann: [{ ref: "a1" }] }));
  assert.deepEqual(keys(lobby), [], "nothing applied without a state");
  assert.equal(values.length, 1);

  server().receiveEnvelope(...state("lobby", { ann: [{ ref: "a1" }], bob: [{ ref: "b1" }] }));
  assert.deepEqual(lobby.list(), [
    { key: "ann", metas: [{ ref: "a2" }] },
    { key: "bob", metas: [{ ref: "b1" }] },
    { key: "cat", metas: [{ ref: "c1" }] },
  ]);
  assert.deepEqual(seen, ["+ann (initial)", "+bob (initial)", "+cat (initial)"]);
  assert.equal(values.length, 2, "one change for the state and what waited");

  // Once applied, they are gone: the next state is not followed by them again.
  const bobEntry = lobby.list()[1];
  server().receiveEnvelope(...state("lobby", { bob: [{ ref: "b1" }] }));
  assert.deepEqual(keys(lobby), ["bob"]);
  assert.equal(lobby.list()[0], bobEntry, "a key the state leaves as it was keeps its entry");
});

test("a lost connection: the view stays, marked stale, until the next state replaces it", () => {
  const { ws, fire, server } = client();
  ws.join("lobby");
  const lobby = ws.presence("lobby");
  const seen = events(lobby);
  const values = [];
  lobby.subscribe((v) => values.push(v));
  server().receiveEnvelope(
    ...state("lobby", { ann: [{ ref: "a1" }], bob: [{ ref: "b1" }, { ref: "b2" }] }),
  );
  assert.equal(values.at(-1).synced, true);

  server().drop();
  assert.equal(lobby.synced, false);
  assert.deepEqual(values.at(-1).synced, false, "subscribers see it stale");
  assert.deepEqual(keys(lobby), ["ann", "bob"], "no flicker of everyone leaving");
  assert.deepEqual(lobby.count, { connections: 3, users: 2 });

  fire();
  server().open();
  assert.deepEqual(unref(server().sent[0]), { type: "room.join", data: { room: "lobby" } });
  // A diff before the new state waits for it; none is applied to the stale view.
  server().receiveEnvelope(...diff("lobby", { dan: [{ ref: "d1" }] }));
  assert.deepEqual(keys(lobby), ["ann", "bob"]);
  assert.equal(lobby.synced, false);

  // Meanwhile ann left, bob closed a tab and cat came.
  server().receiveEnvelope(...state("lobby", { cat: [{ ref: "c1" }], bob: [{ ref: "b2" }] }));
  assert.equal(lobby.synced, true);
  assert.deepEqual(lobby.list(), [
    { key: "bob", metas: [{ ref: "b2" }] },
    { key: "cat", metas: [{ ref: "c1" }] },
    { key: "dan", metas: [{ ref: "d1" }] },
  ]);
  assert.deepEqual(seen.slice(2), ["+cat", "+dan", "-ann [a1]"], "bob stayed: not reported");
  assert.equal(values.at(-1).synced, true);

  // close() marks it stale too.
  ws.close();
  assert.equal(lobby.synced, false);
  assert.deepEqual(keys(lobby), ["bob", "cat", "dan"]);
});

test("diffs waiting when the connection is lost are dropped: the new state has them", () => {
  const { ws, fire, server } = client();
  const lobby = ws.presence("lobby");
  server().receiveEnvelope(...diff("lobby", { ann: [{ ref: "a1" }] }));
  server().drop();
  fire();
  server().open();
  server().receiveEnvelope(...state("lobby", { bob: [{ ref: "b1" }] }));
  assert.deepEqual(keys(lobby), ["bob"]);
});

test("counts-only rooms: presence.count gives the count, with no list", () => {
  const { ws, fire, server } = client();
  const hall = ws.presence("hall");
  const seen = events(hall);
  const values = [];
  hall.subscribe((v) => values.push(v));
  server().receiveEnvelope("presence.count", { room: "hall", connections: 120, users: 97 });
  assert.equal(hall.synced, true);
  assert.deepEqual(hall.count, { connections: 120, users: 97 });
  assert.deepEqual(hall.list(), []);
  assert.deepEqual(values.at(-1), {
    room: "hall",
    synced: true,
    list: [],
    count: { connections: 120, users: 97 },
  });
  server().receiveEnvelope("presence.count", { room: "hall", connections: 121, users: 97 });
  assert.equal(values.at(-1).count.connections, 121);

  server().drop();
  assert.equal(hall.synced, false);
  assert.deepEqual(hall.count, { connections: 121, users: 97 }, "the last count stays, stale");
  fire();
  server().open();
  server().receiveEnvelope("presence.count", { room: "hall", connections: 5, users: 5 });
  assert.equal(hall.synced, true);
  assert.deepEqual(hall.count, { connections: 5, users: 5 });
  assert.deepEqual(seen, [], "counts name nobody");

  // A room that turns to full presence counts its list again.
  server().receiveEnvelope(...state("hall", { ann: [{ ref: "a1" }, { ref: "a2" }] }));
  assert.deepEqual(hall.count, { connections: 2, users: 1 });
});

test("leaving a room, or the server's room.left, clears its store", () => {
  const { ws, server } = client();
  ws.join("lobby");
  const lobby = ws.presence("lobby");
  const seen = events(lobby);
  const values = [];
  lobby.subscribe((v) => values.push(v));
  server().receiveEnvelope(...state("lobby", { ann: [{ ref: "a1" }] }));

  ws.leave("lobby");
  assert.deepEqual(keys(lobby), []);
  assert.equal(lobby.synced, false);
  assert.deepEqual(lobby.count, { connections: 0, users: 0 });
  assert.deepEqual(seen, ["+ann (initial)"], "nobody left: no leave events");
  assert.deepEqual(values.at(-1).list, []);
  // A diff sent before the server saw the leave waits, and room.left drops it.
  server().receiveEnvelope(...diff("lobby", { bob: [{ ref: "b1" }] }));
  server().receiveEnvelope("room.left", { room: "lobby" });

  ws.join("lobby");
  server().receiveEnvelope(...state("lobby", { ann: [{ ref: "a1" }] }));
  assert.deepEqual(keys(lobby), ["ann"]);
  assert.deepEqual(seen.slice(1), ["+ann (initial)"], "a fresh view again");

  // The server takes the client out of a room: room.left alone clears it.
  server().receiveEnvelope("room.left", { room: "lobby" });
  assert.deepEqual(keys(lobby), []);
  assert.equal(ws.presence("lobby"), lobby, "still the same store for later joins");
  server().receiveEnvelope("room.left", { room: "never-seen" }); // makes no store
});

test("the store is a Svelte store: current value at once, each change, then unsubscribe", () => {
  const { ws, server } = client();
  const lobby = ws.presence("lobby");
  const seen = [];
  const record = (v) => seen.push(v.list.map((p) => p.key).join(",") + (v.synced ? "" : "?"));
  const unsubscribe = lobby.subscribe(record);
  const second = lobby.subscribe(record); // the same function twice: two subscriptions
  assert.deepEqual(seen, ["?", "?"]);
  assert.equal(lobby.value.room, "lobby");
  second();
  server().receiveEnvelope(...state("lobby", { ann: [{ ref: "a1" }] }));
  server().receiveEnvelope(...diff("lobby", { bob: [{ ref: "b1" }] }));
  unsubscribe();
  server().receiveEnvelope(...diff("lobby", { cat: [{ ref: "c1" }] }));
  assert.deepEqual(seen, ["?", "?", "ann", "ann,bob"]);

  // Join and leave callbacks unsubscribe the same way.
  const joins = [];
  const off = lobby.onJoin((key) => joins.push(key));
  server().receiveEnvelope(...diff("lobby", { dan: [{ ref: "d1" }] }));
  off();
  server().receiveEnvelope(...diff("lobby", { eve: [{ ref: "e1" }] }));
  assert.deepEqual(joins, ["dan"]);
});

test("frames are followed before presence() is called, and apps' handlers still see them", () => {
  const { ws, server } = client();
  const got = [];
  ws.on("presence.diff", (data) => got.push(keys(ws.presence(data.room)).join(",")));
  server().receiveEnvelope(...state("lobby", { ann: [{ ref: "a1" }] }));
  server().receiveEnvelope(...diff("lobby", { bob: [{ ref: "b1" }] }));
  assert.deepEqual(keys(ws.presence("lobby")), ["ann", "bob"]);
  assert.deepEqual(got, ["ann,bob"], "the store is updated before the app's handlers run");
});

test("malformed presence frames change nothing and stop nothing", () => {
  const errors = [];
  const reportError = globalThis.reportError;
  globalThis.reportError = (e) => errors.push(e.message);
  try {
    const { ws, server } = client();
    const lobby = ws.presence("lobby");
    const joins = [];
    lobby.onJoin((key) => {
      joins.push(key);
      throw new Error("callback");
    });
    server().receiveEnvelope("presence.state", null);
    server().receiveEnvelope("presence.state", { room: "lobby", users: "nope" });
    assert.equal(lobby.synced, true);
    server().receiveEnvelope(
      ...state("lobby", { ann: [{ ref: "a1" }, { name: "no ref" }, null], bob: "x", cat: [] }),
    );
    assert.deepEqual(lobby.list(), [{ key: "ann", metas: [{ ref: "a1" }] }]);
    server().receiveEnvelope("presence.diff", { room: "lobby", joins: null, leaves: [1] });
    server().receiveEnvelope(...diff("lobby", { bob: [{ ref: "b1" }] }));
    assert.deepEqual(keys(lobby), ["ann", "bob"], "a throwing callback stops nothing");
    assert.deepEqual(joins, ["ann", "bob"]);
    assert.deepEqual(errors, ["callback", "callback"]);
  } finally {
    globalThis.reportError = reportError;
  }
});
