// A WebSocket stand-in the tests drive by hand (the server side is not under
// test). Not a test file: node --test runs only *.test.mjs.
import assert from "node:assert/strict";

export class FakeSocket {
  /** Every socket made since the last reset, in order. */
  static made = [];
  static get last() {
    return FakeSocket.made.at(-1);
  }
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols; // as given (undefined: none)
    this.protocol = ""; // the server's choice, set by the test before open()
    this.readyState = 0;
    this.sent = [];
    FakeSocket.made.push(this);
  }
  send(frame) {
    assert.equal(this.readyState, 1, "send on a socket that is not open");
    this.sent.push(frame);
  }
  close(code = 1000, reason = "") {
    this.closedWith = { code, reason };
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  // The test's side:
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  receive(data) {
    this.onmessage?.({ data });
  }
  /** An envelope from the server. */
  receiveEnvelope(type, data) {
    this.receive(JSON.stringify({ type, data }));
  }
}

/**
 * A sent text frame, parsed; a `room.join`'s ref (a string: every join asks
 * for a reply, to know a refusal by) is checked and left out, to compare.
 */
export function unref(frame) {
  const parsed = JSON.parse(frame);
  if (parsed?.type === "room.join") {
    assert.equal(typeof parsed.ref, "string", "a room.join carries a ref");
    delete parsed.ref;
  }
  return parsed;
}
