// The quickstart chat as a Svelte store, on top of a WSClient
// (docs/howto/frontend.md). Plain JavaScript: tests/js/docs_chat_store.test.mjs
// runs it. In SvelteKit, put it in src/lib/.

/**
 * `$chat` is the list of the last `limit` messages; `chat.say(text)` sends one.
 * Takes the client rather than making it, so the page decides when to connect
 * (in the browser only) and tests can pass one with a stand-in socket.
 */
export function chatStore(ws, { limit = 100 } = {}) {
  let messages = [];
  const subscribers = new Set();
  const changed = () => {
    for (const run of subscribers) run(messages);
  };
  const stop = [
    ws.on("welcome", (data) => {
      messages = [...messages, { from: "server", text: `you are on ${data.worker}` }];
      changed();
    }),
    ws.on("chat.message", (data) => {
      messages = [...messages, data].slice(-limit);
      changed();
    }),
  ];
  return {
    // The Svelte store contract: call run now and on every change.
    subscribe(run) {
      subscribers.add(run);
      run(messages);
      return () => subscribers.delete(run);
    },
    say(text) {
      ws.send("chat.send", text); // queued while offline
    },
    destroy() {
      for (const off of stop) off();
    },
  };
}
