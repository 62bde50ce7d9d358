// Node's `ws` library: wss.clients.forEach(send). node bench/servers/node_ws.mjs PORT
import { WebSocketServer } from "ws";
import { performance } from "node:perf_hooks";

const pad = "x".repeat(40);
const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(process.argv[2]), path: "/ws", perMessageDeflate: false });
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
      const text = JSON.stringify({ type: "tick", data: { t: performance.timeOrigin + performance.now(), i, pad } });
      for (const client of wss.clients) client.send(text);
    }
  });
});
