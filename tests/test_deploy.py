"""The Procfile and the systemd unit of the deployment docs work as written.

- Procfile (docs/deploy/paas.md): its ``web`` command, run by a shell with
  ``PORT`` and ``WEB_CONCURRENCY`` set as a PaaS sets them, serves the demo
  and its websockets; SIGTERM (what a PaaS sends) stops it cleanly.
- docs/deploy/sanic-chat.service (docs/deploy/systemd.md): its ``ExecStart``
  with its ``Environment``, only the paths and the port changed, serves the
  quickstart app; its stop (``KillSignal`` to the main process only, as
  ``KillMode=mixed`` does) closes clients with 1001 and exits well within
  ``TimeoutStopSec``.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

import httpx

from sanic_ws_ext import DEFAULTS
from sanic_ws_ext.testing import WSTestClient

from .conftest import units
from .procs import SanicProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "docs" / "deploy" / "sanic-chat.service"


def command_process(
    command: list[str], port: int, env: dict[str, str], cwd: Path, ready: str
) -> SanicProcess:
    """SanicProcess's start, wait and stop, for a command line given whole."""
    server = SanicProcess("unused", port=port, env=env, cwd=str(cwd), ready_path=ready)
    server.args = command
    return server


def unit_service_section() -> dict[str, list[str]]:
    """``[Service]`` of the unit: each key with its values, in order."""
    values: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


async def test_the_procfile_web_command_serves_the_demo() -> None:
    line = (ROOT / "Procfile").read_text().strip()
    kind, _, command = line.partition(":")
    assert kind == "web"
    port = free_port()
    # A PaaS runs the command in a shell, with `sanic` on the PATH.
    env = {
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
    }
    shell = ["bash", "-c", f"exec {command.strip()}"]
    async with command_process(shell, port, env, ROOT, "/") as server:
        async with httpx.AsyncClient() as http:
            page = await http.get(server.url("/"))
        assert page.status_code == 200
        client = await WSTestClient.connect(server.ws_url() + "?name=paas")
        assert (await client.expect("chat.welcome")).data["name"] == "paas"
        closed = asyncio.ensure_future(client.wait_closed(units(30)))
        assert await server.stop() == 0  # SIGTERM, as a PaaS stops a dyno
        assert await closed == (1001, "server shutting down")


async def test_the_systemd_unit_starts_and_stops_as_written() -> None:
    service = unit_service_section()
    assert service["KillMode"] == ["mixed"]  # SIGTERM to the main process only
    assert service["KillSignal"] == ["SIGTERM"]
    stop_within = float(service["TimeoutStopSec"][0])
    # Clients get WS_CLOSE_TIMEOUT to answer the close, then a margin.
    assert stop_within >= 2 * DEFAULTS["WS_CLOSE_TIMEOUT"]
    env: dict[str, str] = {}
    for assignment in service["Environment"]:
        key, _, value = assignment.partition("=")
        env[key] = value
    assert env["SANIC_PROXIES_COUNT"] == "1"
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    # Only the paths and the port are the test's: the venv's `sanic` is this
    # Python's, the app is the quickstart, and the port is free.
    assert argv[0] == "/srv/chat/.venv/bin/sanic" and argv[1] == "app:app"
    port = free_port()
    assert argv[argv.index("--port") + 1] == "8000"
    argv[argv.index("--port") + 1] = str(port)
    command = [sys.executable, "-m", "sanic", "quickstart:app", *argv[2:]]
    examples = ROOT / "docs" / "examples"
    loop = asyncio.get_running_loop()
    async with command_process(command, port, env, examples, "/health") as server:
        client = await WSTestClient.connect(server.ws_url())
        await client.expect("welcome")
        closed = asyncio.ensure_future(client.wait_closed(units(30)))
        stopping = loop.time()
        assert await server.stop() == 0  # SIGTERM to the main process
        assert loop.time() - stopping < stop_within
        assert await closed == (1001, "server shutting down")
