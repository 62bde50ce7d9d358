// Node's `ws` library: wss.clients.forEach(send). node bench/servers/node_ws.mjs PORT
//
// BENCH_BODY=N: each tick carries N bytes of chat-like text (./chattext.mjs)
// instead of the pad. BENCH_DEFLATE=1: permessage-deflate on, as ours does it
// (no context takeover either way, messages under 256 bytes plain).
import { WebSocketServer } from "ws";
import { performance } from "node:perf_hooks";
import { bodies } from "./chattext.mjs";

const pad = "x".repeat(40);
const BODIES = bodies(Number(process.env.BENCH_BODY || 0));
const perMessageDeflate = process.env.BENCH_DEFLATE === "1" && {
  serverNoContextTakeover: true,
  clientNoContextTakeover: true,
  threshold: 256,
};
const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(process.argv[2]), path: "/ws", perMessageDeflate });
wss.on("connection", (ws) => {
  ws.on("message", (raw) => {
    const message = JSON.parse(raw);
    if (message.type === "chat") {
      const text = raw.toString();
      for (const client of wss.clients) client.send(text);
      return;
    }
    const k = message.data.k;
    for (let i = 0; i < k; i++) {
      const t = performance.timeOrigin + performance.now();
      const data = BODIES.length ? { t, i, body: BODIES[i % BODIES.length] } : { t, i, pad };
      const text = JSON.stringify({ type: "tick", data });
      for (const client of wss.clients) client.send(text);
    }
  });
});
