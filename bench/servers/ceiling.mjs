// Not a peer: the load client's ceiling. A raw `net` server that answers the
// handshake and, on any frame, writes K pre-framed ~100-byte messages to every
// client in one write each (and re-sends each chat message to everyone as it
// is; a request, a frame with a "ref", gets its reply at once): the cheapest
// server possible, so the figure is the client's limit. node bench/servers/ceiling.mjs PORT
import crypto from "node:crypto";
import net from "node:net";
import { performance } from "node:perf_hooks";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const sockets = new Set();
let chat = [];

function flushChat() {
  const all = Buffer.concat(chat);
  chat = [];
  for (const s of sockets) s.write(all);
}

function frame(text) {
  const payload = Buffer.from(text);
  return Buffer.concat([Buffer.from([0x81, payload.length]), payload]);
}

net.createServer({ noDelay: true }, (socket) => {
  let open = false;
  let head = Buffer.alloc(0);
  let pending = Buffer.alloc(0);
  socket.on("data", (chunk) => {
    if (!open) {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf("\r\n\r\n");
      if (end === -1) return;
      const key = /Sec-WebSocket-Key: (.+)\r\n/i.exec(head.toString("latin1"))[1].trim();
      const accept = crypto.createHash("sha1").update(key + GUID).digest("base64");
      socket.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept}\r\n\r\n`);
      open = true;
      sockets.add(socket);
      return;
    }
    // Client frames (masked, short): a chat message is re-sent as it is to
    // everyone; the trigger {"type":"go","data":{"k":K}} makes K messages.
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    let pos = 0;
    while (pending.length - pos >= 6) {
      let len = pending[pos + 1] & 0x7f;
      let size = 6;
      if (len === 126) {
        if (pending.length - pos < 8) break;
        len = pending.readUInt16BE(pos + 2);
        size = 8;
      }
      if (pending.length - pos < size + len) break;
      const mask = pending.subarray(pos + size - 4, pos + size);
      const body = Buffer.from(pending.subarray(pos + size, pos + size + len)).map((b, i) => b ^ mask[i & 3]);
      pos += size + len;
      const text = body.toString();
      const ref = /"ref":"([^"]{1,100})"/.exec(text);
      if (ref) {
        // A request: its reply at once.
        socket.write(frame(JSON.stringify({ type: "reply", ref: ref[1], ok: true, data: 0 })));
        continue;
      }
      if (text.includes('"chat"')) {
        // Corked: one write per client per event-loop turn.
        if (!chat.length) setImmediate(flushChat);
        chat.push(frame(text));
        continue;
      }
      const k = JSON.parse(text).data.k;
      const t = performance.timeOrigin + performance.now();
      const frames = [];
      for (let i = 0; i < k; i++) {
        frames.push(frame(JSON.stringify({ type: "tick", data: { t, i, pad: "x".repeat(40) } })));
      }
      const all = Buffer.concat(frames);
      for (const s of sockets) s.write(all);
    }
    pending = pending.subarray(pos);
  });
  socket.on("close", () => sockets.delete(socket));
  socket.on("error", () => sockets.delete(socket));
}).listen(Number(process.argv[2]), "127.0.0.1");
