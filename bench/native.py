"""The native load client and ceiling server, built with the machine's compiler.

``build("loadclient")`` compiles ``bench/loadclient.c`` (``build("ceiling")``:
``bench/servers/ceiling.c``) with ``cc -O2`` (the load client with zlib) into
``bench/build/`` (ignored by git), again only when the source is newer than the
binary; ``None`` when there is no C compiler, and the callers fall back to the
Node programs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BUILD = BENCH / "build"
SOURCES = {
    "loadclient": BENCH / "loadclient.c",
    "ceiling": BENCH / "servers" / "ceiling.c",
}


#: What each links with: zlib inflates permessage-deflate (``--deflate 1``).
LIBS = {"loadclient": ["-lz"]}


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(name: str) -> Path | None:
    """The binary of ``name``, compiled if it is missing or stale."""
    cc = compiler()
    if cc is None:
        return None
    source, binary = SOURCES[name], BUILD / name
    if binary.exists() and binary.stat().st_mtime >= source.stat().st_mtime:
        return binary
    BUILD.mkdir(exist_ok=True)
    # Compile beside it, then rename: a concurrent run never sees half a file.
    tmp = BUILD / f".{name}.{os.getpid()}"
    argv = [cc, "-O2", "-Wall", "-o", str(tmp), str(source), *LIBS.get(name, [])]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stderr[-4000:]}")
    tmp.replace(binary)
    return binary
