"""The package's imports go one way (docs/architecture.md): no cycles at run time,
and the parts the manager owns never import it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "sanic_ws_ext"

#: The parts the manager owns and wires together.
PARTS = (
    "applier",
    "cluster",
    "dispatch",
    "health",
    "heartbeat",
    "index",
    "outbox",
    "queries",
    "sessions",
    "tracker",
)


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


def _runtime_imports(path: Path) -> set[str]:
    """Modules of the package ``path`` imports at run time (not for typing)."""
    name = _module(path).split(".") if _module(path) else []
    package = name if path.name == "__init__.py" else name[:-1]
    found: set[str] = set()
    # Top-level statements only: imports under ``if TYPE_CHECKING:`` are for
    # types, and cannot make a cycle at run time.
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:  # from . import sanic_compat
                found.update(".".join([*base, a.name]) for a in node.names)
    # Importing ``delivery.relay`` runs ``delivery/__init__.py`` first.
    return found | {t.rpartition(".")[0] for t in found if "." in t}


def _graph() -> dict[str, set[str]]:
    return {_module(path): _runtime_imports(path) for path in PACKAGE.rglob("*.py")}


def test_no_import_cycle() -> None:
    graph = _graph()
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, " -> ".join((*trail, name))
        if name in done:
            return
        for target in graph.get(name, ()):
            visit(target, (*trail, name))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_the_parts_do_not_import_the_manager() -> None:
    graph = _graph()
    for part in PARTS:
        assert "manager" not in graph[part], part


#: The manager's private names other modules may reach: the Sanic glue that
#: starts it, hands it sockets and serves its figures, and the connection
#: handle. Everything else talks to it through its public API, or through the
#: objects it hands out (``WireHost``, ``DeliveryEvents``).
MANAGER_FRIENDS = {
    "asyncapi": {"_registry"},
    "connection": {"_check_out", "_update_presence"},
    "endpoint": {"_accept", "_clock", "_config", "_limits", "_lingering", "_registry"},
    "extension": {"_check_out", "_dispatcher", "_start", "_stop"},
    "monitoring": {"_cluster_stats", "_config", "_health_check"},
    "publish_route": {"_config"},
}


def test_only_the_glue_reaches_into_the_manager() -> None:
    pattern = re.compile(r"\bmanager\.(_[a-z]\w*)")
    for path in PACKAGE.rglob("*.py"):
        name = _module(path)
        if name == "manager":
            continue
        reached = set(pattern.findall(path.read_text()))
        assert reached <= MANAGER_FRIENDS.get(name, set()), name
