"""The missing-redis error says how to install the extra, however this
package was installed: from a clone (editable), from a file URL, from a
repository or an archive URL, or (once published) from the package index
(issue 23)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sanic import Sanic
from sanic_ext import Extend

import sanic_ws_ext
from sanic_ws_ext import ConfigError, WSExtension
from sanic_ws_ext.extension import redis_install_hint
from sanic_ws_ext.testing import serve

AppFactory = Callable[..., Sanic[Any, Any]]
ROOT = Path(__file__).resolve().parent.parent


def test_from_a_clone_the_hint_installs_the_clone_with_its_extra() -> None:
    assert redis_install_hint() == f"pip install -e '{ROOT}[redis]'"


def _installed_copy(site: Path, direct_url: dict[str, Any] | None) -> str:
    """What ``import sanic_ws_ext`` finds in ``site`` says, in a new process.

    ``site`` is laid out as pip lays out an installed wheel: the package and a
    dist-info directory with its metadata (and ``direct_url.json`` when pip
    installed it from a URL).
    """
    shutil.copytree(Path(sanic_ws_ext.__file__).parent, site / "sanic_ws_ext")
    info = site / "sanic_ws_ext-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sanic-ws-ext\nVersion: 0.1.0\n"
    )
    if direct_url is not None:
        (info / "direct_url.json").write_text(json.dumps(direct_url))
    code = (
        "import sanic_ws_ext.extension as e;"
        f"assert e.__file__.startswith({str(site)!r}), e.__file__;"
        "print(e.redis_install_hint())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        cwd=site,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_installed_from_a_file_url_the_hint_uses_that_url(tmp_path: Path) -> None:
    url = "file:///home/me/src/sanic-ws-ext"
    hint = _installed_copy(tmp_path, {"url": url, "dir_info": {}})
    assert hint == f"pip install 'sanic-ws-ext[redis] @ {url}'"


def test_installed_from_a_repository_the_hint_uses_it_at_that_commit(
    tmp_path: Path,
) -> None:
    # pip records a "git+" URL without its prefix and revision (PEP 610): the
    # index's name would fail while the package is on no index.
    commit = "0123456789abcdef0123456789abcdef01234567"
    vcs = {"vcs": "git", "requested_revision": "main", "commit_id": commit}
    url = "https://example.com/me/sanic-ws-ext.git"
    hint = _installed_copy(
        tmp_path, {"url": url, "vcs_info": vcs, "subdirectory": "py"}
    )
    want = f"git+{url}@{commit}#subdirectory=py"
    assert hint == f"pip install 'sanic-ws-ext[redis] @ {want}'"


def test_installed_from_an_archive_url_the_hint_uses_that_url(tmp_path: Path) -> None:
    url = "https://example.com/dist/sanic_ws_ext-0.1.0-py3-none-any.whl"
    hint = _installed_copy(tmp_path, {"url": url, "archive_info": {}})
    assert hint == f"pip install 'sanic-ws-ext[redis] @ {url}'"


def test_installed_from_an_index_the_hint_names_the_extra(tmp_path: Path) -> None:
    assert _installed_copy(tmp_path, None) == "pip install 'sanic-ws-ext[redis]'"


async def test_a_redis_url_without_redis_py_names_the_install(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(WS_BACKPLANE="redis://127.0.0.1:6379/0")
    Extend(app).register(WSExtension)
    # As in an environment without redis-py: importing it fails.
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigError) as refused:
        async with serve(app):
            pass
    assert refused.value.key == "WS_BACKPLANE"
    assert f"pip install -e '{ROOT}[redis]'" in str(refused.value)
    assert "pip install 'redis>=5'" in str(refused.value)
