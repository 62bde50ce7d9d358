"""``WS_*`` configuration keys: their defaults, in one place, and validation.

Keys live in ``app.config`` (so ``SANIC_WS_PATH=/live`` in the environment
works as for any Sanic key). A key the app did not set gets its default when
the extension is registered. Every value is checked then, and again before the
server starts; a bad one raises :class:`~sanic_ws_ext.errors.ConfigError`
naming the key. ``None`` means "no limit" (or "off") where a key allows it.

The ``WS_`` prefix is this extension's: an unknown ``WS_*`` key (a misspelled
one, most likely) is refused too, naming the closest known key.

The environment gives strings, which Sanic turns into numbers and booleans
where it can ("off", "no" and "false" become ``False``). So that an optional
key can be switched off from there, keys that allow ``None`` also take
``False`` and the strings ``"none"`` and ``"off"`` (any case) for it:
``SANIC_WS_MAX_MESSAGE_SIZE=none``. Switches (``WS_HEALTH``, ``WS_STATS``) take
``True``/``False``, ``1``/``0`` and the strings "true", "false", "yes", "no",
"on" and "off".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["DEFAULTS", "WSConfig"]

#: Every key with its default. docs/reference/config.md documents each one.
DEFAULTS: dict[str, Any] = {
    # Where the websocket endpoint is served.
    "WS_PATH": "/ws",
    # Seconds of silence from a client before the server pings it (None: off).
    "WS_PING_INTERVAL": 20.0,
    # Seconds to wait for any frame after a ping before closing with 1011.
    "WS_PING_TIMEOUT": 20.0,
    # Largest incoming message in bytes; larger closes with 1009 (None: no limit).
    "WS_MAX_MESSAGE_SIZE": 1 << 20,
    # Frame kinds clients may send: "text" (envelopes) and/or "binary". A
    # message of another kind closes the connection with 1003.
    "WS_ACCEPT": ("text", "binary"),
    # Unsent bytes allowed per connection; past it the client is closed with
    # 1008 "slow consumer" and its backlog dropped (None: no limit).
    "WS_MAX_BACKPRESSURE": 1 << 20,
    # Browser origins allowed to connect, e.g. ["https://app.example.com"].
    # Empty: same-origin only. "*" in the list: any origin.
    "WS_ALLOWED_ORIGINS": (),
    # Request headers copied into Connection.headers (lower-cased names).
    "WS_KEEP_HEADERS": (),
    # Seconds to wait for the client's close reply before dropping the socket.
    "WS_CLOSE_TIMEOUT": 10.0,
    # A sender that queued more than its pass limit (2 to 8 MiB) unwritten
    # yields, then waits while receivers that are reading hold more than half
    # of WS_MAX_BACKPRESSURE; a receiver whose socket took nothing for this
    # many seconds is not waited for (None: never wait, only yield).
    "WS_DRAIN_TIMEOUT": 1.0,
    # A volatile send (volatile=True) skips a receiver with more than this
    # many bytes unsent instead of adding to its backlog.
    "WS_VOLATILE_BACKLOG": 64 << 10,
    # Incoming messages queued per connection while its handlers run; past it
    # the server stops reading from that socket until the queue drains.
    "WS_MAX_QUEUE": 64,
    # The same queue's bound in bytes (each message counts its size plus
    # 64 bytes): past it reading pauses too, until half of it is handled.
    "WS_MAX_QUEUE_BYTES": 1 << 20,
    # Seconds one handler call may run. Past it the handler is cancelled,
    # logged, and its connection closed with 1011 "handler timeout"
    # (None: no bound).
    "WS_HANDLER_TIMEOUT": 60.0,
    # Abuse limits, all per worker process, all off by default: the right
    # numbers depend on the deployment (see docs/howto/security.md).
    # Open connections; past it upgrades get 503 (None: no limit).
    "WS_MAX_CONNECTIONS": None,
    # Open connections per client IP (IPv6: per /64); past it 429.
    "WS_MAX_CONNECTIONS_PER_IP": None,
    # New connections per second per client IP, a token bucket of
    # WS_CONNECT_BURST_PER_IP; past it 429 with Retry-After (None: no limit).
    "WS_CONNECT_RATE_PER_IP": None,
    "WS_CONNECT_BURST_PER_IP": 10,
    # Messages per second per connection, a token bucket of WS_MESSAGE_BURST.
    # Past it each message is dropped with a "rate_limited" error frame; a
    # client still sending after WS_MESSAGE_BURST such drops is closed with
    # 1008 (None: no limit).
    "WS_MESSAGE_RATE": None,
    "WS_MESSAGE_BURST": 20,
    # Seconds between presence frames to a room's members (rooms declared
    # with presence="full" or "counts"): changes within one are batched.
    "WS_PRESENCE_INTERVAL": 0.1,
    # Largest presence metadata per connection (bytes of JSON).
    "WS_PRESENCE_META_MAX": 1024,
    # Seconds between the processes' liveness beats.
    "WS_RELAY_BEAT": 1.0,
    # Seconds of silence after which a peer process is suspect (logged,
    # kept), and after which it is dead (dropped with what it held). A
    # worker on this machine that exits is known at once, without waiting.
    "WS_PEER_SUSPECT": 3.0,
    "WS_PEER_TIMEOUT": 15.0,
    # Seconds a cluster-wide question (members of a room without presence,
    # users, rooms) waits for the other processes' answers.
    "WS_QUERY_TIMEOUT": 2.0,
    # Which delivery to use between processes: "auto" (the relay between
    # workers under `sanic --workers N`, local in a single process), "local",
    # or a Redis URL ("redis://host:6379/0", "rediss://...", "unix://...")
    # to join every machine using the same URL and channel into one cluster.
    # A node of a Redis Cluster (Redis 7+) is recognised at the first
    # connection: rooms then go over its shards with sharded pub/sub.
    "WS_BACKPLANE": "auto",
    # How the relay carries ops between the workers of one machine: "auto"
    # (SOCK_SEQPACKET inboxes where the system can make them, as on Linux;
    # else private SOCK_STREAM pairs, as on macOS), "seqpacket" or "stream".
    # Under --workers N with no working transport, the server refuses to start.
    "WS_RELAY_TRANSPORT": "auto",
    # Prefix of the Redis channels; apps sharing one Redis need distinct ones.
    "WS_REDIS_CHANNEL": "sanic-ws-ext",
    # Largest message (bytes) sent through Redis; bigger sends raise
    # PublishTooLarge before anything is delivered.
    "WS_MAX_PUBLISH": 1 << 20,
    # Bytes of outgoing ops held per process while Redis is unreachable;
    # past it ops are dropped (counted, logged) and the state is "down".
    "WS_BACKPLANE_BUFFER": 16 << 20,
    # Serve <WS_PATH>/health: liveness, readiness, relay and backplane state
    # (nothing about clients; meant for load balancers).
    "WS_HEALTH": True,
    # Serve <WS_PATH>/stats (JSON), /metrics (Prometheus) and /dashboard:
    # cluster-wide figures. Off by default: they reveal the deployment.
    "WS_STATS": False,
    # When set, /stats and /metrics need "Authorization: Bearer <token>"
    # (the dashboard reads it from its URL fragment: /dashboard#token=...).
    "WS_STATS_TOKEN": None,
    # When set, serve POST <WS_PATH>/publish: scripts and other services send
    # through the manager with "Authorization: Bearer <token>" (at least 16
    # characters). Off (no route) while unset. Fixed at registration.
    "WS_PUBLISH_TOKEN": None,
    # Largest body (bytes) POST <WS_PATH>/publish accepts (413 past it).
    "WS_PUBLISH_MAX": 64 * 1024,
    # Once a worker has started, move what startup built (modules, routes,
    # the app), and from then on what survives each full collection, out of
    # the garbage collector's sight (gc.freeze): a full collection then walks
    # only what came since, a shorter stall of the event loop.
    "WS_GC_FREEZE": True,
    # With WS_GC_FREEZE: every this many seconds, what was frozen is thawed
    # and collected once (a full collection of the whole heap), so that
    # reference cycles among long-lived objects do not stay for good.
    # None: never.
    "WS_GC_THAW": 600.0,
    # A verify hook's refusal (Reject or a Sanic HTTP exception) accepts the
    # upgrade and closes at once with 4000 + status and the reason, so that
    # browsers, which never see a refused upgrade's status, can tell why.
    "WS_AUTH_IN_BAND": False,
    # Seconds before a connection's expiry (Accept(expires_at=...)) at which
    # the server asks its client for a fresh token with "auth.refresh".
    "WS_AUTH_REFRESH_AHEAD": 30.0,
    # Longest token an "auth.refresh" request may carry (characters).
    "WS_AUTH_TOKEN_MAX": 8192,
    # Subprotocols the server speaks, for Sec-WebSocket-Protocol; the first
    # the client offers (in its order) is selected.
    "WS_SUBPROTOCOLS": (),
    # Negotiate permessage-deflate with clients that offer it (RFC 7692).
    # Off by default. Without context takeover both ways: a broadcast is
    # compressed once for every receiver, and an idle connection keeps no
    # compression state.
    "WS_COMPRESSION": False,
    # Messages smaller than this many bytes go uncompressed.
    "WS_COMPRESSION_MIN": 256,
    # zlib's level, 1 (fastest) to 9 (smallest).
    "WS_COMPRESSION_LEVEL": 6,
    # Check what sends carry under a declared type (WSHandlers.sends, typed
    # replies) against its schema, raising InvalidOutgoing in the sender:
    # None (auto) is on in debug mode (sanic --dev) and under test clients
    # (Sanic.test_mode), off in production, where it costs one test per send.
    "WS_VALIDATE_OUTGOING": None,
    # Serve <WS_PATH>/asyncapi.json (an AsyncAPI 3.0 document of the declared
    # messages, rooms and codes) and <WS_PATH>/asyncapi (a page rendering it).
    # Off by default, like WS_STATS: it describes the app's whole websocket
    # surface, and sanic-ext's OAS switch is on by default.
    "WS_ASYNCAPI": False,
}

#: ``WS_*`` names that are not settings but may be in ``app.config``: Sanic
#: copies every ``SANIC_*`` environment variable there, and
#: ``SANIC_WS_TEST_TIME_UNIT`` is read by :mod:`sanic_ws_ext.testing`.
NOT_SETTINGS = frozenset({"WS_TEST_TIME_UNIT"})

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# Values that mean None for keys that allow it (strings compared lower-cased).
_OFF_WORDS = frozenset({"none", "off"})
_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0"})
_RELAY_TRANSPORTS = ("auto", "seqpacket", "stream")
#: Smallest WS_MAX_PUBLISH: presence transfers go in parts of half of it,
#: each holding at least a few entries of WS_PRESENCE_META_MAX.
_MIN_PUBLISH = 8 * 1024
# Room for a Redis message's headers next to its largest body.
_MESSAGE_OVERHEAD = 64 * 1024


def _is_off(value: Any) -> bool:
    """Whether ``value`` says "none/off" for a key that allows ``None``."""
    if value is None or value is False:
        return True
    return isinstance(value, str) and value.strip().lower() in _OFF_WORDS


_OR_NONE = " or None ('none' or 'off' in the environment)"


def _number(key: str, value: Any, *, allow_none: bool) -> float | None:
    if allow_none and _is_off(value):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        extra = _OR_NONE if allow_none else ""
        raise ConfigError(key, f"must be a positive number{extra}, got {value!r}")
    return float(value)


def _token(key: str, value: Any) -> str | None:
    """A bearer token: None (off) or a string of at least 16 characters."""
    if _is_off(value):
        return None
    if not isinstance(value, str) or len(value) < 16:
        raise ConfigError(key, "must be None or a string of at least 16 characters")
    return value


def _integer(key: str, value: Any, *, allow_none: bool) -> int | None:
    if allow_none and _is_off(value):
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        extra = _OR_NONE if allow_none else ""
        raise ConfigError(key, f"must be a positive integer{extra}, got {value!r}")
    return value


def _switch(key: str, value: Any) -> bool:
    """``True``/``False``, also as 1/0 or words (from the environment)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ConfigError(
        key,
        f"must be True or False ('true' or 'false' in the environment), got {value!r}",
    )


# Keys people guess from other libraries, where the closest spelling would
# send them wrong (WS_REDIS_URL is nearest to WS_REDIS_CHANNEL): what they
# meant instead.
_GUESSED = {
    **dict.fromkeys(
        ("WS_REDIS_URL", "WS_REDIS", "WS_REDIS_DSN", "WS_REDIS_HOST", "WS_BROKER_URL"),
        "did you mean WS_BACKPLANE? It takes the Redis URL (redis://host:6379/0)",
    ),
    **dict.fromkeys(
        ("WS_HISTORY", "WS_HISTORY_SIZE", "WS_HISTORY_TTL"),
        "a room's history is not a config key: declare the room with"
        " history=History(...), see docs/howto/history.md",
    ),
}


def check_keys(config: Mapping[str, Any]) -> None:
    """Refuse ``WS_*`` keys this extension does not know, naming the closest."""
    for key in config:
        if not isinstance(key, str) or not key.startswith("WS_"):
            continue
        if key in DEFAULTS or key in NOT_SETTINGS:
            continue
        close = difflib.get_close_matches(key, DEFAULTS, n=1, cutoff=0.6)
        hint = _GUESSED.get(key) or (
            f"did you mean {close[0]}?"
            if close
            else "see docs/reference/config.md for the keys"
        )
        raise ConfigError(
            key,
            f"is not a sanic-ws-ext setting ({hint}); the WS_ prefix is the"
            " extension's, so an unknown WS_* key is refused rather than ignored",
        )


def _strings(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        # Environment variables arrive as one comma-separated string.
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, Iterable) or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, f"must be a list of strings, got {value!r}")
    return tuple(value)


_FRAME_KINDS = ("text", "binary")


def _frame_kinds(key: str, value: Any) -> frozenset[str]:
    kinds = _strings(key, value)
    unknown = [kind for kind in kinds if kind not in _FRAME_KINDS]
    if unknown:
        raise ConfigError(
            key, f"may list only 'text' and 'binary', got {', '.join(unknown)}"
        )
    return frozenset(kinds)


#: RFC 7230 token characters: what a Sec-WebSocket-Protocol entry is made of.
TOKEN_CHARS = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
#: Sec-WebSocket-Protocol entries carrying a bearer token start with this;
#: they are never selected (nor echoed).
BEARER_PREFIX = "bearer."


def _subprotocols(value: Any) -> tuple[str, ...]:
    key = "WS_SUBPROTOCOLS"
    names = _strings(key, value)
    for name in names:
        if not name or not set(name) <= TOKEN_CHARS:
            raise ConfigError(
                key,
                f"entries must be RFC 7230 tokens (no spaces, commas), got {name!r}",
            )
        if name.lower().startswith(BEARER_PREFIX):
            raise ConfigError(
                key,
                f"{name!r} starts with {BEARER_PREFIX!r}, which carries bearer"
                " tokens and is never selected",
            )
    return names


@dataclass(frozen=True, slots=True)
class WSConfig:
    """The validated ``WS_*`` settings of one app."""

    path: str
    ping_interval: float | None
    ping_timeout: float
    max_message_size: int | None
    max_backpressure: int | None
    accept: frozenset[str]
    allowed_origins: tuple[str, ...]
    keep_headers: tuple[str, ...]
    close_timeout: float
    drain_timeout: float | None
    volatile_backlog: int
    max_queue: int
    max_queue_bytes: int
    handler_timeout: float | None
    max_connections: int | None
    max_connections_per_ip: int | None
    connect_rate_per_ip: float | None
    connect_burst_per_ip: int
    message_rate: float | None
    message_burst: int
    presence_interval: float
    presence_meta_max: int
    relay_beat: float
    peer_suspect: float
    peer_timeout: float
    query_timeout: float
    backplane: str
    relay_transport: str
    redis_channel: str
    max_publish: int
    backplane_buffer: int
    health: bool
    stats: bool
    stats_token: str | None
    publish_token: str | None
    publish_max: int
    gc_freeze: bool
    gc_thaw: float | None
    auth_in_band: bool
    auth_refresh_ahead: float
    auth_token_max: int
    subprotocols: tuple[str, ...]
    compression: bool
    compression_min: int
    compression_level: int
    validate_outgoing: bool | None = None
    asyncapi: bool = False

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> WSConfig:
        """Validate the ``WS_*`` keys of ``config`` (defaults for missing ones)."""

        check_keys(config)

        def get(key: str) -> Any:
            return config.get(key, DEFAULTS[key])

        path = get("WS_PATH")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(
                "WS_PATH", f"must be a path starting with '/', got {path!r}"
            )
        timeout = _number("WS_PING_TIMEOUT", get("WS_PING_TIMEOUT"), allow_none=False)
        close_timeout = _number(
            "WS_CLOSE_TIMEOUT", get("WS_CLOSE_TIMEOUT"), allow_none=False
        )
        max_queue = _integer("WS_MAX_QUEUE", get("WS_MAX_QUEUE"), allow_none=False)
        volatile_backlog = _integer(
            "WS_VOLATILE_BACKLOG", get("WS_VOLATILE_BACKLOG"), allow_none=False
        )
        max_queue_bytes = _integer(
            "WS_MAX_QUEUE_BYTES", get("WS_MAX_QUEUE_BYTES"), allow_none=False
        )
        beat = _number("WS_RELAY_BEAT", get("WS_RELAY_BEAT"), allow_none=False)

        def seconds(key: str) -> float:
            value = _number(key, get(key), allow_none=False)
            assert value is not None
            return value

        suspect, peer_timeout = seconds("WS_PEER_SUSPECT"), seconds("WS_PEER_TIMEOUT")
        if peer_timeout <= suspect:
            raise ConfigError(
                "WS_PEER_TIMEOUT",
                f"must be longer than WS_PEER_SUSPECT ({suspect}), got {peer_timeout}",
            )
        meta_max = _integer(
            "WS_PRESENCE_META_MAX", get("WS_PRESENCE_META_MAX"), allow_none=False
        )
        assert meta_max is not None
        backplane = get("WS_BACKPLANE")
        if backplane not in ("auto", "local") and not (
            isinstance(backplane, str) and backplane.startswith(_REDIS_SCHEMES)
        ):
            raise ConfigError(
                "WS_BACKPLANE",
                "must be 'auto', 'local' or a redis://, rediss:// or unix:// URL,"
                f" got {backplane!r}",
            )
        transport = get("WS_RELAY_TRANSPORT")
        if transport not in _RELAY_TRANSPORTS:
            raise ConfigError(
                "WS_RELAY_TRANSPORT",
                f"must be 'auto', 'seqpacket' or 'stream', got {transport!r}",
            )
        channel = get("WS_REDIS_CHANNEL")
        if not isinstance(channel, str) or not channel or ":" in channel:
            raise ConfigError(
                "WS_REDIS_CHANNEL",
                f"must be a non-empty string without ':', got {channel!r}",
            )
        max_publish = _integer(
            "WS_MAX_PUBLISH", get("WS_MAX_PUBLISH"), allow_none=False
        )
        buffer = _integer(
            "WS_BACKPLANE_BUFFER", get("WS_BACKPLANE_BUFFER"), allow_none=False
        )
        assert timeout is not None and close_timeout is not None and beat is not None
        assert max_queue is not None and max_publish is not None
        assert max_queue_bytes is not None and volatile_backlog is not None
        assert buffer is not None
        if max_publish < _MIN_PUBLISH:
            raise ConfigError(
                "WS_MAX_PUBLISH",
                f"must be at least {_MIN_PUBLISH} bytes (presence transfers are"
                f" cut into parts of half of it), got {max_publish}",
            )
        if meta_max > max_publish // 8:
            raise ConfigError(
                "WS_PRESENCE_META_MAX",
                f"must be at most an eighth of WS_MAX_PUBLISH ({max_publish // 8})"
                f" so that presence transfers hold several entries, got {meta_max}",
            )
        if buffer < max_publish + _MESSAGE_OVERHEAD:
            raise ConfigError(
                "WS_BACKPLANE_BUFFER",
                f"must hold at least one message of WS_MAX_PUBLISH ({max_publish})"
                f" bytes plus {_MESSAGE_OVERHEAD}, got {buffer}",
            )
        origins = _strings("WS_ALLOWED_ORIGINS", get("WS_ALLOWED_ORIGINS"))
        connect_burst = _integer(
            "WS_CONNECT_BURST_PER_IP", get("WS_CONNECT_BURST_PER_IP"), allow_none=False
        )
        message_burst = _integer(
            "WS_MESSAGE_BURST", get("WS_MESSAGE_BURST"), allow_none=False
        )
        assert connect_burst is not None and message_burst is not None
        switches = {
            key: _switch(key, get(key))
            for key in (
                "WS_HEALTH",
                "WS_STATS",
                "WS_GC_FREEZE",
                "WS_AUTH_IN_BAND",
                "WS_COMPRESSION",
                "WS_ASYNCAPI",
            )
        }
        outgoing = get("WS_VALIDATE_OUTGOING")
        validate_outgoing = (
            None
            if outgoing is None
            or (isinstance(outgoing, str) and outgoing.lower() in ("auto", "none"))
            else _switch("WS_VALIDATE_OUTGOING", outgoing)
        )
        stats_token = _token("WS_STATS_TOKEN", get("WS_STATS_TOKEN"))
        publish_token = _token("WS_PUBLISH_TOKEN", get("WS_PUBLISH_TOKEN"))
        publish_max = _integer(
            "WS_PUBLISH_MAX", get("WS_PUBLISH_MAX"), allow_none=False
        )
        assert publish_max is not None
        token_max = _integer(
            "WS_AUTH_TOKEN_MAX", get("WS_AUTH_TOKEN_MAX"), allow_none=False
        )
        assert token_max is not None
        compression_min = _integer(
            "WS_COMPRESSION_MIN", get("WS_COMPRESSION_MIN"), allow_none=False
        )
        assert compression_min is not None
        level = get("WS_COMPRESSION_LEVEL")
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
            raise ConfigError(
                "WS_COMPRESSION_LEVEL", f"must be an integer from 1 to 9, got {level!r}"
            )
        return cls(
            path=path.rstrip("/") or "/",
            ping_interval=_number(
                "WS_PING_INTERVAL", get("WS_PING_INTERVAL"), allow_none=True
            ),
            ping_timeout=timeout,
            max_message_size=_integer(
                "WS_MAX_MESSAGE_SIZE", get("WS_MAX_MESSAGE_SIZE"), allow_none=True
            ),
            max_backpressure=_integer(
                "WS_MAX_BACKPRESSURE", get("WS_MAX_BACKPRESSURE"), allow_none=True
            ),
            accept=_frame_kinds("WS_ACCEPT", get("WS_ACCEPT")),
            allowed_origins=tuple(o.rstrip("/").lower() for o in origins),
            keep_headers=tuple(
                h.lower() for h in _strings("WS_KEEP_HEADERS", get("WS_KEEP_HEADERS"))
            ),
            close_timeout=close_timeout,
            drain_timeout=_number(
                "WS_DRAIN_TIMEOUT", get("WS_DRAIN_TIMEOUT"), allow_none=True
            ),
            volatile_backlog=volatile_backlog,
            max_queue=max_queue,
            max_queue_bytes=max_queue_bytes,
            handler_timeout=_number(
                "WS_HANDLER_TIMEOUT", get("WS_HANDLER_TIMEOUT"), allow_none=True
            ),
            max_connections=_integer(
                "WS_MAX_CONNECTIONS", get("WS_MAX_CONNECTIONS"), allow_none=True
            ),
            max_connections_per_ip=_integer(
                "WS_MAX_CONNECTIONS_PER_IP",
                get("WS_MAX_CONNECTIONS_PER_IP"),
                allow_none=True,
            ),
            connect_rate_per_ip=_number(
                "WS_CONNECT_RATE_PER_IP", get("WS_CONNECT_RATE_PER_IP"), allow_none=True
            ),
            connect_burst_per_ip=connect_burst,
            message_rate=_number(
                "WS_MESSAGE_RATE", get("WS_MESSAGE_RATE"), allow_none=True
            ),
            message_burst=message_burst,
            presence_interval=seconds("WS_PRESENCE_INTERVAL"),
            presence_meta_max=meta_max,
            relay_beat=beat,
            peer_suspect=suspect,
            peer_timeout=peer_timeout,
            query_timeout=seconds("WS_QUERY_TIMEOUT"),
            backplane=backplane,
            relay_transport=transport,
            redis_channel=channel,
            max_publish=max_publish,
            backplane_buffer=buffer,
            health=switches["WS_HEALTH"],
            gc_freeze=switches["WS_GC_FREEZE"],
            gc_thaw=_number("WS_GC_THAW", get("WS_GC_THAW"), allow_none=True),
            compression=switches["WS_COMPRESSION"],
            compression_min=compression_min,
            compression_level=level,
            stats=switches["WS_STATS"],
            stats_token=stats_token,
            publish_token=publish_token,
            publish_max=publish_max,
            auth_in_band=switches["WS_AUTH_IN_BAND"],
            auth_refresh_ahead=seconds("WS_AUTH_REFRESH_AHEAD"),
            auth_token_max=token_max,
            subprotocols=_subprotocols(get("WS_SUBPROTOCOLS")),
            validate_outgoing=validate_outgoing,
            asyncapi=switches["WS_ASYNCAPI"],
        )

    @property
    def redis_url(self) -> str | None:
        """The Redis URL when the backplane is Redis, else ``None``."""
        return None if self.backplane in ("auto", "local") else self.backplane
