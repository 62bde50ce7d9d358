"""Chat-like text for messages of a given size (``BENCH_BODY`` bytes).

Not a run of one character, which compresses absurdly: words and names drawn
from ``bench/servers/chat_words.txt`` by a fixed pseudo-random sequence, with
a number now and then, common words more often than rare ones, so that text
compresses as real chat does (about 2 times with zlib on one message of 1 KB).
``body(size, seed)``: a different text for each seed, the same on every run
and in ``bench/servers/chattext.mjs``, which the Node server uses (same
generator, same words: same bytes).
"""

from __future__ import annotations

import os
from pathlib import Path

WORDS = (Path(__file__).parent / "servers" / "chat_words.txt").read_text().split()
_M = 0xFFFFFFFF
#: How many different bodies a server cycles through.
VARIANTS = 64


def body(size: int, seed: int) -> str:
    """``size`` characters (ASCII, nothing JSON escapes) of chat-like text."""
    x = (seed * 2654435761 + 1) & _M or 1
    out: list[str] = []
    length = 0
    while length <= size:  # bounded: every word adds at least 2
        x ^= (x << 13) & _M
        x ^= x >> 17
        x ^= (x << 5) & _M
        r = x >> 8
        if r % 16 == 0:
            word = str(r % 1000)
        else:  # skewed to the first, common words, as in real text
            n = len(WORDS)
            word = WORDS[(r % n) * ((r >> 8) % n) * ((r >> 16) % n) // (n * n)]
        if r % 9 == 0:
            word += "."
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


def env_size() -> int:
    """``BENCH_BODY`` as a size in bytes; 0 when unset (the ~100-byte ticks)."""
    return int(os.environ.get("BENCH_BODY") or 0)


def bodies(size: int) -> list[str]:
    """The texts a server cycles through, message ``i`` taking ``i % VARIANTS``."""
    return [body(size, seed) for seed in range(VARIANTS)] if size else []
