"""The docs stay true to the code: every config key, every included file."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from sanic_ws_ext import DEFAULTS

DOCS = Path(__file__).resolve().parent.parent / "docs"
ROOT = DOCS.parent
# | `WS_KEY` | `default` | meaning |
ROW = re.compile(r"^\| `(WS_[A-Z0-9_]+)` \| `([^`]*)` \|", re.M)


def documented_keys() -> dict[str, str]:
    rows = ROW.findall((DOCS / "reference" / "config.md").read_text())
    keys = dict(rows)
    assert len(keys) == len(rows), "a key is documented twice"
    return keys


def test_every_config_key_is_documented_with_its_default() -> None:
    documented = documented_keys()
    missing = sorted(set(DEFAULTS) - set(documented))
    assert not missing, f"docs/reference/config.md lacks {missing}"
    unknown = sorted(set(documented) - set(DEFAULTS))
    assert not unknown, f"docs/reference/config.md documents unknown keys {unknown}"
    for key, default in documented.items():
        assert ast.literal_eval(default) == DEFAULTS[key], (
            f"{key}: the docs say {default}, config.py {DEFAULTS[key]!r}"
        )


def test_every_page_is_in_the_nav_and_included_files_exist() -> None:
    in_nav = set(
        re.findall(r"([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    )
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages <= in_nav, f"pages missing from mkdocs.yml's nav: {pages - in_nav}"
    assert in_nav <= pages, f"nav entries with no page: {in_nav - pages}"
    for page in DOCS.rglob("*.md"):
        # A snippet line a formatter mangled ("--8 < --") is shown as text.
        assert not re.search(r"^\s*--8 +<", page.read_text(), re.M), (
            f"{page.name}: a snippet include written '--8 <': it is shown as text"
        )
        for included in re.findall(r'^\s*--8<-- "([^"]+)"', page.read_text(), re.M):
            path = included.split(":")[0]  # "file.py:section"
            assert (ROOT / path).is_file(), f"{page.name} includes missing {path}"


def test_the_readmes_links_to_the_docs_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links
    for link in links:
        assert (ROOT / link).is_file(), f"README.md links to missing {link}"


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def test_getting_starteds_test_runs_under_plain_pytest(tmp_path: Path) -> None:
    """The page's test, with the page's own app and handlers, passes under
    pytest with no plugin and no configuration, as a newcomer runs it."""
    turn_on, handlers = _python_blocks(DOCS / "getting-started.md")[:2]
    test = next(
        b for b in _python_blocks(DOCS / "getting-started.md") if "def test_" in b
    )
    module = "\n".join([turn_on, handlers, "app.blueprint(bp)\n", test])
    (tmp_path / "test_getting_started.py").write_text(module)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # none of ours
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
