// docs/examples/sveltekit/chat-store.js does what docs/howto/frontend.md says:
// node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import { chatStore } from "../../docs/examples/sveltekit/chat-store.js";
import { WSClient } from "../../sanic_ws_ext/static/client.js";
import { FakeSocket } from "./fake-socket.mjs";

test("the store follows the chat and sends through the client", () => {
  const ws = new WSClient("ws://test/ws", { WebSocket: FakeSocket });
  const chat = chatStore(ws, { limit: 2 });
  const seen = [];
  const unsubscribe = chat.subscribe((messages) => seen.push(messages));
  assert.deepEqual(seen, [[]]); // called at once, as Svelte expects

  chat.say("queued while connecting");
  const socket = FakeSocket.last;
  assert.deepEqual(socket.sent, []);
  socket.open();
  assert.deepEqual(socket.sent.map((f) => JSON.parse(f)), [
    { type: "chat.send", data: "queued while connecting" },
  ]);

  socket.receiveEnvelope("welcome", { id: "c1", worker: "Sanic-Server-0-0" });
  socket.receiveEnvelope("chat.message", { from: "c1", text: "one" });
  socket.receiveEnvelope("chat.message", { from: "c2", text: "two" });
  assert.deepEqual(seen.at(-1), [
    { from: "c1", text: "one" },
    { from: "c2", text: "two" },
  ]); // the last `limit` messages
  assert.equal(seen.at(-3)[0].from, "server");

  unsubscribe();
  chat.destroy();
  socket.receiveEnvelope("chat.message", { from: "c3", text: "unseen" });
  assert.equal(seen.at(-1).length, 2);
  ws.close();
});
