// Node's `ws` as a client of a compressing server (tests/test_deflate.py):
//   node tests/interop/ws_deflate_client.mjs URL on|off
// Sends a large "echo" message and prints {"extensions", "echoed"} as JSON.
import { createRequire } from "node:module";

const require = createRequire(new URL("../../bench/package.json", import.meta.url));
const WebSocket = require("ws");

const [url, mode] = process.argv.slice(2);
const body = { text: "the quick brown fox jumps over the lazy dog ".repeat(40) };
const ws = new WebSocket(url, { perMessageDeflate: mode === "on" ? { threshold: 0 } : false });
const timer = setTimeout(() => { console.error("timed out"); process.exit(2); }, 20000);
ws.on("open", () => ws.send(JSON.stringify({ type: "echo", data: body })));
ws.on("message", (raw) => {
  const reply = JSON.parse(raw.toString());
  if (reply.type !== "echo") return;
  clearTimeout(timer);
  console.log(JSON.stringify({
    extensions: ws.extensions,
    echoed: JSON.stringify(reply.data) === JSON.stringify(body),
  }));
  ws.close();
});
ws.on("error", (error) => { console.error(String(error)); process.exit(1); });
