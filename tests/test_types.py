"""TypeScript types from the declarations, checked by tsc --strict.

A small typed client compiles against the demo's generated types (and the
every-feature app's); a wrong payload, an unknown type or a wrong use of a
reply fails to compile; the untyped client.d.ts still takes what it took.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from .nodetools import ROOT_DIR, tsc

CLIENT_DTS = ROOT_DIR / "sanic_ws_ext" / "static" / "client.d.ts"

DEMO_CLIENT = """
import { WSClient } from "./client.js";
import type { Messages, ChatMessage } from "./messages.js";

const ws = new WSClient<Messages>("ws://localhost:8000/ws");
ws.send("chat.send", { room: "lobby", text: "hi" });
ws.on("chat.message", (data) => {
  const line: string = `${data.from}: ${data.text} in ${data.room}`;
  console.log(line);
});
ws.on("chat.welcome", (data, envelope) => {
  const rooms: string[] = data.rooms;
  const same: ChatMessage | undefined = undefined;
  console.log(rooms, envelope.type, same);
});
ws.on("error", (data) => console.log(data.code, data.field ?? "", data.problem));
ws.on("room.joined", (data) => console.log(data.room, data.position?.offset));
ws.on("binary", (data: ArrayBuffer) => console.log(data.byteLength));
"""

WRONG = {
    "a wrong payload": 'ws.send("chat.send", { room: "lobby", text: 5 });',
    "a missing field": 'ws.send("chat.send", { room: "lobby" });',
    "no payload": 'ws.send("chat.send");',
    "an unknown type": 'ws.send("chat.sned", { room: "lobby", text: "hi" });',
    "a wrong field read": 'ws.on("chat.message", (data) => data.txt);',
    "an unknown server type": 'ws.on("chat.mesage", (data) => data);',
}

TYPED_APP_CLIENT = """
import { WSClient } from "./client.js";
import type { Messages, Ack } from "./messages.js";

async function main(): Promise<void> {
  const ws = new WSClient<Messages>();
  const ack: Ack = await ws.request("board.draw", {
    color: "red",
    points: [{ x: 1, y: 2 }],
  });
  const n: number = ack.count;
  ws.send("game.move", { piece: "knight", to: [1, 2] });
  ws.send("profile.rename", { profile: { name: "ann", tags: ["a"] }, reason: null });
  ws.send("untyped", { anything: [1, "goes"] });
  ws.send("untyped");
  const echoed: unknown = await ws.request("untyped", 1, { timeout: 500 });
  ws.on("board.drawn", (data) => console.log(data.stroke.points.length, data.by));
  ws.on("game.moved", (data) => console.log(data.to[0] + data.to[1]));
  console.log(n, echoed);
}
main();
"""

TYPED_APP_WRONG = {
    "a literal outside the enum": (
        'ws.send("board.draw", { color: "pink", points: [] });'
    ),
    "a tuple too long": 'ws.send("game.move", { piece: "k", to: [1, 2, 3] });',
    "a reply used as the wrong type": (
        'ws.request("board.draw", { color: "red", points: [] })'
        ".then((ack) => ack.count.toUpperCase());"
    ),
}

UNTYPED_CLIENT = """
import { WSClient, RequestError } from "./client.js";

interface Chat { text: string }
const ws = new WSClient();
ws.send("anything", { a: 1 });
ws.send("ping");
ws.send("keyed", 1, { key: "k", volatile: true });
ws.on("chat", (data) => console.log(data));
ws.on<Chat>("chat", (data) => console.log(data.text));
ws.on("error", (data) => console.log(data.code));
ws.request<number>("add", { a: 1 }).then((n) => n + 1, (e: RequestError) => e.code);
ws.request("x").then((v: unknown) => v);
ws.onRequest<Chat>("question", (data) => data.text);
"""


def generate(target: str, out: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sanic_ws_ext", "types", target],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (out / "messages.d.ts").write_text(result.stdout)


def compile(where: Path, source: str) -> subprocess.CompletedProcess[str]:
    shutil.copy(CLIENT_DTS, where / "client.d.ts")
    (where / "app.ts").write_text(source)
    return tsc(
        "--noEmit", "--strict", "--target", "es2022", "--module", "es2022",
        "--moduleResolution", "bundler", "--lib", "es2022,dom",
        str(where / "app.ts"),
    )  # fmt: skip


def refused_lines(where: Path, source: str, wrong: dict[str, str]) -> None:
    """Compile ``source`` plus each wrong line (one tsc run, tsc being slow):
    every one of them must be an error, and nothing else."""
    lines = source.count("\n") + 1
    numbered = {lines + i: name for i, name in enumerate(wrong)}
    result = compile(where, source + "\n".join(wrong.values()) + "\n")
    failed = {
        int(line) for line in re.findall(r"app\.ts\((\d+),\d+\): error", result.stdout)
    }
    missed = [name for line, name in numbered.items() if line not in failed]
    assert not missed, f"compiled: {missed}\n{result.stdout}"
    assert failed <= set(numbered), result.stdout


def test_demo_types(tmp_path: Path) -> None:
    generate("demo.server:app", tmp_path)
    result = compile(tmp_path, DEMO_CLIENT)
    assert result.returncode == 0, result.stdout + result.stderr
    refused_lines(tmp_path, DEMO_CLIENT, WRONG)


def test_every_feature_types(tmp_path: Path) -> None:
    generate("tests.apps.typed_instance:app", tmp_path)
    result = compile(tmp_path, TYPED_APP_CLIENT)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (tmp_path / "messages.d.ts").read_text()
    assert 'color: "red" | "green" | "blue";' in text
    assert "to: [number, number];" in text
    assert "reason?: string | null;" in text
    source = TYPED_APP_CLIENT + "const ws = new WSClient<Messages>();"
    refused_lines(tmp_path, source, TYPED_APP_WRONG)


def test_untyped_client_unchanged(tmp_path: Path) -> None:
    result = compile(tmp_path, UNTYPED_CLIENT)
    assert result.returncode == 0, result.stdout + result.stderr
