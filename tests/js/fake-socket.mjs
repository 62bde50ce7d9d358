// A WebSocket stand-in the tests drive by hand (the server side is not under
// test). Not a test file: node --test runs only *.test.mjs.
import assert from "node:assert/strict";

export class FakeSocket {
  /** Every socket made since the last reset, in order. */
  static made = [];
  static get last() {
    return FakeSocket.made.at(-1);
  }
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.made.push(this);
  }
  send(frame) {
    assert.equal(this.readyState, 1, "send on a socket that is not open");
    this.sent.push(frame);
  }
  close(code = 1000) {
    this.readyState = 3;
    this.onclose?.({ code });
  }
  // The test's side:
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code });
  }
  receive(data) {
    this.onmessage?.({ data });
  }
  /** An envelope from the server. */
  receiveEnvelope(type, data) {
    this.receive(JSON.stringify({ type, data }));
  }
}
