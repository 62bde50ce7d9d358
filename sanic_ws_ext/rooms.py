"""Rooms declared by pattern, with their policy. Pure.

A declaration names a family of rooms and says how they behave::

    chat.room("doc:{doc_id}", presence="full", client_join=may_edit)

``{name}`` matches one or more characters other than ``:``; the matched
values are passed to the guard as keyword arguments. A room name is matched
against exact declarations first, then patterns in the order declared; the
first match wins. A room no declaration matches gets :data:`UNDECLARED`: no
presence, and clients may join it only through ``on_join`` guards (as before
rooms were declared).

Presence modes:

- ``"full"``: members get ``presence.state`` on joining and ``presence.diff``
  after (see :mod:`sanic_ws_ext.presence`); the room's members are
  replicated to every process (their cost: see docs/architecture.md).
- ``"counts"``: members get ``presence.count`` when the number of
  connections in the room changes; each process shares only its count.
- ``"off"``: nothing is sent and nothing about the room crosses processes
  except what is published to it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .history import History

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["UNDECLARED", "PresenceMode", "RoomPolicies", "RoomSpec"]

PresenceMode = Literal["full", "counts", "off"]
_MODES = ("full", "counts", "off")

#: ``guard(conn, room, **params) -> bool``: may this client join this room?
JoinGuard = Callable[..., Awaitable[bool]]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: How many room names' lookups are remembered (rooms come and go).
_CACHE = 4096


@dataclass(frozen=True, slots=True)
class RoomSpec:
    """One declaration: a pattern and what rooms matching it do."""

    pattern: str
    presence: PresenceMode = "off"
    #: Whether clients may ``room.join`` by themselves: False (the server
    #: decides), True (anyone), or a guard ``(conn, room, **params) -> bool``.
    client_join: bool | JoinGuard = False
    #: Show members' connection ids and worker names in presence frames.
    expose_ids: bool = False
    #: What the room keeps of its publications (None: nothing; see
    #: :mod:`sanic_ws_ext.history`).
    history: History | None = None
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def declare(
        cls,
        pattern: str,
        *,
        presence: str = "off",
        client_join: bool | JoinGuard = False,
        expose_ids: bool = False,
        history: object = None,
    ) -> RoomSpec:
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"a room pattern must be a non-empty str, got {pattern!r}")
        if presence not in _MODES:
            raise ValueError(
                f"presence must be 'full', 'counts' or 'off', got {presence!r}"
            )
        if not (isinstance(client_join, bool) or callable(client_join)):
            raise TypeError("client_join must be True, False or an async guard")
        names = _PARAM.findall(pattern)
        if len(set(names)) != len(names):
            raise ValueError(f"room pattern {pattern!r} repeats a parameter")
        regex = None
        if names:
            parts = _PARAM.split(pattern)
            source = "".join(
                re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^:]+)"
                for i, part in enumerate(parts)
            )
            regex = re.compile(f"^{source}$")
        return cls(
            pattern,
            presence,  # type: ignore[arg-type]
            client_join,
            expose_ids,
            History.of(history),
            regex,
        )

    def match(self, room: str) -> dict[str, str] | None:
        """The pattern's parameters if ``room`` matches, else None."""
        if self._regex is None:
            return {} if room == self.pattern else None
        found = self._regex.match(room)
        return None if found is None else found.groupdict()

    async def may_join(
        self, conn: Connection, room: str, params: dict[str, str]
    ) -> bool:
        guard = self.client_join
        if isinstance(guard, bool):
            return guard
        return bool(await guard(conn, room, **params))


#: What a room no declaration matches gets.
UNDECLARED = RoomSpec("*")


class RoomPolicies:
    """Every declaration of one app, and the lookup of a room's policy."""

    __slots__ = ("_cache", "_exact", "_patterns")

    def __init__(self, specs: list[RoomSpec] | None = None) -> None:
        self._exact: dict[str, RoomSpec] = {}
        self._patterns: list[RoomSpec] = []
        self._cache: dict[str, tuple[RoomSpec, dict[str, str]]] = {}
        for spec in specs or ():
            self.add(spec)

    def specs(self) -> list[RoomSpec]:
        """Every declaration: exact names first, then patterns."""
        return [*self._exact.values(), *self._patterns]

    def add(self, spec: RoomSpec) -> None:
        if spec._regex is None:
            if spec.pattern in self._exact:
                raise ValueError(f"room {spec.pattern!r} is declared twice")
            self._exact[spec.pattern] = spec
        else:
            shape = _PARAM.sub("{}", spec.pattern)
            if any(_PARAM.sub("{}", s.pattern) == shape for s in self._patterns):
                raise ValueError(f"room pattern {spec.pattern!r} is declared twice")
            self._patterns.append(spec)
        self._cache.clear()

    def __bool__(self) -> bool:
        return bool(self._exact or self._patterns)

    def lookup(self, room: str) -> tuple[RoomSpec, dict[str, str]]:
        """The policy of ``room`` and its pattern's parameters."""
        found = self._cache.get(room)
        if found is not None:
            return found
        spec = self._exact.get(room)
        if spec is not None:
            found = (spec, {})
        else:
            found = (UNDECLARED, {})
            for candidate in self._patterns:
                params = candidate.match(room)
                if params is not None:
                    found = (candidate, params)
                    break
        if len(self._cache) >= _CACHE:
            self._cache.clear()
        self._cache[room] = found
        return found

    def presence(self, room: str) -> PresenceMode:
        return self.lookup(room)[0].presence

    def history(self, room: str) -> History | None:
        return self.lookup(room)[0].history

    def declared(self) -> list[RoomSpec]:
        return [*self._exact.values(), *self._patterns]
