"""The Node tools some tests run: the AsyncAPI parser and tsc.

They live in tests/node (package.json there; node_modules never committed):
scripts/test installs them when missing, and so does the first test that
needs them (``npm install --prefix tests/node``, bounded).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT_DIR = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT_DIR / "tests" / "node"
NPM_TIMEOUT = 600


def ensure_node_tools() -> Path:
    """tests/node with its node_modules; skips when Node is not installed."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed (Node 18+)")
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    if not marker.exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
            check=True,
            timeout=NPM_TIMEOUT,
            capture_output=True,
        )
    return NODE_DIR


def run_node(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``node args...`` in tests/node; its output and exit code."""
    ensure_node_tools()
    return subprocess.run(
        ["node", *args],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tsc(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the TypeScript compiler of tests/node."""
    ensure_node_tools()
    return run_node(str(NODE_DIR / "node_modules" / "typescript" / "bin" / "tsc"),
                    *args, timeout=timeout)  # fmt: skip
