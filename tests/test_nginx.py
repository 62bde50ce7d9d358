"""The nginx configuration of the docs, run by a real nginx, in front of 4 workers.

docs/deploy/nginx.conf is what docs/deploy/nginx.md shows. Here it runs, with
only its addresses and its ``proxy_read_timeout`` changed, in Debian's nginx
(``bash .ci/run`` installs it when missing; this test is skipped only outside
CI when nginx is not installed), from a temporary prefix with its own pid file,
logs and temp paths, in front of ``sanic quickstart:app --workers 4``
(docs/examples/quickstart.py). Both are ended by PID.

Through nginx: the handshake and the origin check work (nginx passes on the
Host), messages go both ways, a broadcast reaches clients held by every worker,
and a quiet period longer than ``proxy_read_timeout`` is survived thanks to
the server's pings (``WS_PING_INTERVAL`` below the timeout). The control:
with no ping in the quiet period, nginx cuts the same connection once
``proxy_read_timeout`` has passed, so the test measures what it claims to.
"""

from __future__ import annotations

import asyncio
import grp
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from sanic_ws_ext.testing import WSTestClient

from .conftest import units
from .procs import SanicProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "docs" / "deploy" / "nginx.conf"
EXAMPLES = ROOT / "docs" / "examples"
WORKERS = 4
CI = bool(os.environ.get("CI"))


def find_nginx() -> str | None:
    """Debian installs nginx in /usr/sbin, which a non-root PATH may lack."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    return found


NGINX = find_nginx()

needs_nginx = pytest.mark.skipif(
    NGINX is None and not CI,
    reason="nginx not found: bash .ci/run installs Debian's nginx-light",
)


def site_config(listen: int, upstream: int, read_timeout: float) -> str:
    """docs/deploy/nginx.conf with test addresses and a short read timeout."""
    text = SITE.read_text()
    timeout_ms = round(read_timeout * 1000)
    changes = {
        "listen 80;": f"listen 127.0.0.1:{listen};",
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream};",
        "proxy_read_timeout 60s;": f"proxy_read_timeout {timeout_ms}ms;",
    }
    for old, new in changes.items():
        # The docs' file changed shape: this test must change with it.
        assert text.count(old) == 1, f"{SITE} should contain {old!r} once"
        text = text.replace(old, new)
    return text


def worker_user() -> str:
    """As root, nginx's workers must become someone: nobody, in whichever of
    Debian's ``nogroup`` or other systems' ``nobody`` groups exists."""
    if os.geteuid() != 0:
        return ""  # the directive would be ignored, with a warning
    groups = {g.gr_name for g in grp.getgrall()}
    group = next((g for g in ("nogroup", "nobody") if g in groups), "root")
    return f"user nobody {group};\n"


def main_config(prefix: Path, site: Path, modules: str) -> str:
    """A whole nginx.conf around the site: foreground, every path in ``prefix``."""
    # Temp paths of modules this nginx was built without would be errors.
    temp_paths = "".join(
        f"    {name}_temp_path {prefix / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        if f"--without-http_{name}_module" not in modules
    )
    return (
        "daemon off;\n"
        f"{worker_user()}"
        "worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} info;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        f"    access_log {prefix / 'access.log'};\n"
        f"{temp_paths}"
        f"    include {site};\n"
        "}\n"
    )


def prepare(nginx: str, upstream: int, read_timeout: float) -> tuple[Path, int]:
    """A prefix holding the configuration; the port nginx will listen on."""
    prefix = Path(tempfile.mkdtemp(prefix="nginx-test-"))
    # nginx's workers drop root privileges (to nobody): let them in.
    prefix.chmod(0o755)
    port = free_port()
    site = prefix / "site.conf"
    site.write_text(site_config(port, upstream, read_timeout))
    modules = subprocess.run(
        [nginx, "-V"], capture_output=True, text=True, check=True
    ).stderr
    (prefix / "nginx.conf").write_text(main_config(prefix, site, modules))
    return prefix, port


@asynccontextmanager
async def nginx(upstream: int, read_timeout: float) -> AsyncIterator[int]:
    """A real nginx in front of 127.0.0.1:``upstream``; yields its port."""
    if NGINX is None:
        pytest.fail("nginx not found, in CI: .ci/run should have installed it")
    prefix, port = prepare(NGINX, upstream, read_timeout)
    error_log = prefix / "error.log"
    # -e: the error log before the configuration is read (else /var/log/nginx).
    conf = prefix / "nginx.conf"
    command = [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(error_log)]
    output = prefix / "output.log"
    with output.open("wb") as out:
        proc = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            command, stdout=out, stderr=out, start_new_session=True
        )

    def logs() -> str:
        parts = [output.read_text(errors="replace")]
        if error_log.exists():
            parts.append(error_log.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    try:
        await wait_http(f"http://127.0.0.1:{port}/health", proc, logs)
        yield port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown, by PID
        try:
            await asyncio.wait_for(asyncio.to_thread(proc.wait), units(10))
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        print(f"--- nginx log ---\n{logs()}")
        shutil.rmtree(prefix, ignore_errors=True)


async def wait_http(
    url: str, proc: subprocess.Popen[bytes], logs: Callable[[], str]
) -> None:
    """Until ``url`` answers 200 through nginx (so the upstream is reached)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + units(15)
    async with httpx.AsyncClient() as http:
        while True:
            assert proc.poll() is None, f"nginx exited: {logs()}"
            try:
                if (await http.get(url, timeout=units(1))).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert loop.time() < deadline, f"nginx never served {url}"
            await asyncio.sleep(0.05)  # another process: poll it


@asynccontextmanager
async def behind_nginx(
    ping_interval: float, read_timeout: float
) -> AsyncIterator[tuple[SanicProcess, int]]:
    server = SanicProcess(
        "quickstart:app",
        "--workers",
        str(WORKERS),
        cwd=str(EXAMPLES),
        env={
            "SANIC_WS_PING_INTERVAL": str(ping_interval),
            "SANIC_PROXIES_COUNT": "1",
        },
    )
    async with server, nginx(server.port, read_timeout) as port:
        yield server, port


async def connect(url: str, origin: str | None = None) -> tuple[WSTestClient, str]:
    """A client that sends nothing by itself (no client-side pings)."""
    client = await WSTestClient.connect(url, origin=origin, ping_interval=None)
    welcome = await client.expect("welcome")
    worker: str = welcome.data["worker"]
    return client, worker


@needs_nginx
async def test_through_nginx_quiet_connections_live_on_pings() -> None:
    read_timeout = units(2)
    ping_interval = read_timeout / 4
    async with behind_nginx(ping_interval, read_timeout) as (_server, port):
        url = f"ws://127.0.0.1:{port}/ws"
        # The browser's own origin passes: nginx hands on the Host it was sent.
        # A foreign page's does not.
        with pytest.raises(InvalidStatus) as refused:
            await WSTestClient.connect(url, origin="https://evil.example")
        assert refused.value.response.status_code == 403
        own = f"http://127.0.0.1:{port}"
        # Connect until every worker holds a client (bounded).
        clients: list[WSTestClient] = []
        workers: set[str] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + units(30)
        while len(workers) < WORKERS:
            assert loop.time() < deadline, f"connections reached only {workers}"
            client, worker = await connect(url, origin=own)
            clients.append(client)
            workers.add(worker)
        try:
            # A broadcast from a client of one worker reaches all of them.
            await clients[0].send("chat.send", {"text": "through nginx"})
            for client in clients:
                message = await client.expect("chat.message")
                assert message.data["text"] == "through nginx"
            # Quiet: no client sends anything for longer than nginx waits.
            quiet = 2.5 * read_timeout
            await asyncio.sleep(quiet)  # the quiet period is the point
            # Every connection is still there, and still carries messages.
            await clients[-1].send("chat.send", {"text": "after the quiet"})
            for client in clients:
                message = await client.expect("chat.message")
                assert message.data["text"] == "after the quiet"
        finally:
            for client in clients:
                await client.close()


@needs_nginx
async def test_control_without_pings_nginx_cuts_a_quiet_connection() -> None:
    read_timeout = units(2)
    # No ping within the test: the first would come an hour after the last
    # frame (an environment variable cannot say None).
    async with behind_nginx(3600.0, read_timeout) as (_server, port):
        client, _ = await connect(f"ws://127.0.0.1:{port}/ws")
        try:
            await client.send("chat.send", {"text": "last words"})
            await client.expect("chat.message")
            loop = asyncio.get_running_loop()
            quiet_since = loop.time()
            # Same quiet period as above; nginx closes the socket, with no
            # close frame (the server did not close it: it would say why).
            code, _reason = await client.wait_closed(2.5 * read_timeout)
            elapsed = loop.time() - quiet_since
            assert code is None, f"closed by the server ({code}), not by nginx"
            assert client.connection.state.name == "CLOSED"
            # ...after proxy_read_timeout, not before (timers: some slack).
            assert 0.9 * read_timeout <= elapsed < 2.5 * read_timeout, elapsed
            with pytest.raises(ConnectionClosed):
                await client.send("chat.send", {"text": "anyone?"})
        finally:
            await client.close()


def test_the_docs_show_the_tested_file() -> None:
    page = (ROOT / "docs" / "deploy" / "nginx.md").read_text()
    assert '--8<-- "docs/deploy/nginx.conf"' in page
    assert re.search(r"proxy_read_timeout \d+s;", SITE.read_text())
