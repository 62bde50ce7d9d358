// Chat-like text, the same bytes as bench/chattext.py (which see).
import fs from "node:fs";

const WORDS = fs
  .readFileSync(new URL("chat_words.txt", import.meta.url), "latin1")
  .split(/\s+/)
  .filter((w) => w);
export const VARIANTS = 64;

export function body(size, seed) {
  let x = (Math.imul(seed, 2654435761 | 0) + 1) >>> 0 || 1;
  const out = [];
  let n = 0;
  while (n <= size) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    const r = x >>> 8;
    const w = WORDS.length; // skewed to the first, common words
    const pick = Math.floor(((r % w) * ((r >>> 8) % w) * ((r >>> 16) % w)) / (w * w));
    let word = r % 16 === 0 ? String(r % 1000) : WORDS[pick];
    if (r % 9 === 0) word += ".";
    out.push(word);
    n += word.length + 1;
  }
  return out.join(" ").slice(0, size);
}

export function bodies(size) {
  const out = [];
  for (let seed = 0; size && seed < VARIANTS; seed++) out.push(body(size, seed));
  return out;
}
