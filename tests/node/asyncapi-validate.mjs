// Validate an AsyncAPI document with the official parser (@asyncapi/parser).
// Usage: node asyncapi-validate.mjs document.json
// Exit 0 when it parses with no error diagnostics; else print them and exit 1.
import { readFileSync } from "node:fs";
import { Parser } from "@asyncapi/parser";

const text = readFileSync(process.argv[2], "utf8");
const parser = new Parser();
const { document, diagnostics } = await parser.parse(text);
// Spectral severities: 0 error, 1 warning, 2 info, 3 hint.
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  const where = (d.path || []).join("/");
  console.log(`${["error", "warning", "info", "hint"][d.severity]} ${d.code} at ${where}: ${d.message}`);
}
if (!document || errors.length) {
  console.log(`INVALID: ${errors.length} error(s)`);
  process.exit(1);
}
console.log(`VALID: ${document.operations().length} operations, ${document.channels().length} channels, ${document.allMessages().length} messages`);
