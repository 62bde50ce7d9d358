"""WS_* keys: defaults in one place, bad values named at startup."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sanic import Sanic
from sanic_ext import Extend

from sanic_ws_ext import DEFAULTS, ConfigError, WSConfig, WSExtension
from sanic_ws_ext.testing import serve

AppFactory = Callable[..., Sanic[Any, Any]]


def test_defaults() -> None:
    config = WSConfig.from_mapping({})
    assert config.path == "/ws"
    assert config.ping_interval == 20.0
    assert config.ping_timeout == 20.0
    assert config.max_message_size == 1 << 20
    assert config.max_backpressure == 1 << 20
    assert config.accept == {"text", "binary"}
    assert config.allowed_origins == ()
    assert config.close_timeout == 10.0
    assert config.drain_timeout == 1.0
    assert config.volatile_backlog == 64 << 10
    assert config.gc_freeze is True
    assert config.compression is False
    assert (config.compression_min, config.compression_level) == (256, 6)
    assert set(DEFAULTS) == {
        "WS_PATH",
        "WS_PING_INTERVAL",
        "WS_PING_TIMEOUT",
        "WS_MAX_MESSAGE_SIZE",
        "WS_MAX_BACKPRESSURE",
        "WS_ACCEPT",
        "WS_ALLOWED_ORIGINS",
        "WS_KEEP_HEADERS",
        "WS_VOLATILE_BACKLOG",
        "WS_COMPRESSION",
        "WS_COMPRESSION_MIN",
        "WS_COMPRESSION_LEVEL",
        "WS_CLOSE_TIMEOUT",
        "WS_DRAIN_TIMEOUT",
        "WS_MAX_QUEUE",
        "WS_MAX_QUEUE_BYTES",
        "WS_HANDLER_TIMEOUT",
        "WS_PRESENCE_INTERVAL",
        "WS_PRESENCE_META_MAX",
        "WS_RELAY_BEAT",
        "WS_PEER_SUSPECT",
        "WS_PEER_TIMEOUT",
        "WS_QUERY_TIMEOUT",
        "WS_BACKPLANE",
        "WS_RELAY_TRANSPORT",
        "WS_REDIS_CHANNEL",
        "WS_MAX_PUBLISH",
        "WS_BACKPLANE_BUFFER",
        "WS_MAX_CONNECTIONS",
        "WS_MAX_CONNECTIONS_PER_IP",
        "WS_CONNECT_RATE_PER_IP",
        "WS_CONNECT_BURST_PER_IP",
        "WS_VALIDATE_OUTGOING",
        "WS_ASYNCAPI",
        "WS_MESSAGE_RATE",
        "WS_MESSAGE_BURST",
        "WS_HEALTH",
        "WS_STATS",
        "WS_STATS_TOKEN",
        "WS_PUBLISH_TOKEN",
        "WS_PUBLISH_MAX",
        "WS_GC_FREEZE",
        "WS_GC_THAW",
        "WS_AUTH_IN_BAND",
        "WS_AUTH_REFRESH_AHEAD",
        "WS_AUTH_TOKEN_MAX",
        "WS_SUBPROTOCOLS",
    }
    assert config.redis_url is None
    assert config.relay_transport == "auto"
    # The abuse limits are off until the deployment sets them.
    assert config.max_connections is None
    assert config.max_connections_per_ip is None
    assert config.connect_rate_per_ip is None
    assert config.message_rate is None
    assert (config.connect_burst_per_ip, config.message_burst) == (10, 20)


def test_none_means_no_limit() -> None:
    config = WSConfig.from_mapping(
        {
            "WS_PING_INTERVAL": None,
            "WS_MAX_BACKPRESSURE": None,
            "WS_MAX_MESSAGE_SIZE": None,
        }
    )
    assert config.ping_interval is None
    assert config.max_backpressure is None
    assert config.max_message_size is None


def test_accept_from_environment_string() -> None:
    assert WSConfig.from_mapping({"WS_ACCEPT": "binary"}).accept == {"binary"}
    assert WSConfig.from_mapping({"WS_ACCEPT": ""}).accept == frozenset()


def test_origins_from_environment_string() -> None:
    config = WSConfig.from_mapping(
        {"WS_ALLOWED_ORIGINS": "https://A.example.com/, https://b.example.com"}
    )
    assert config.allowed_origins == ("https://a.example.com", "https://b.example.com")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("WS_PATH", "ws"),
        ("WS_PATH", 5),
        ("WS_PING_INTERVAL", -1),
        ("WS_PING_INTERVAL", "often"),
        ("WS_PING_TIMEOUT", None),
        ("WS_PING_TIMEOUT", 0),
        ("WS_MAX_MESSAGE_SIZE", 1.5),
        ("WS_MAX_BACKPRESSURE", True),
        ("WS_ACCEPT", ["text", "json"]),
        ("WS_ACCEPT", None),
        ("WS_ALLOWED_ORIGINS", [1, 2]),
        ("WS_KEEP_HEADERS", 7),
        ("WS_CLOSE_TIMEOUT", None),
        ("WS_MAX_QUEUE", 0),
        ("WS_MAX_QUEUE_BYTES", None),
        ("WS_HANDLER_TIMEOUT", 0),
        ("WS_PRESENCE_INTERVAL", 0),
        ("WS_PRESENCE_META_MAX", None),
        ("WS_PEER_SUSPECT", -1),
        ("WS_PEER_TIMEOUT", 2.0),  # not longer than WS_PEER_SUSPECT (3.0)
        ("WS_QUERY_TIMEOUT", None),
        ("WS_RELAY_BEAT", 0),
        ("WS_BACKPLANE", "carrier-pigeon://"),
        ("WS_BACKPLANE", None),
        ("WS_RELAY_TRANSPORT", "dgram"),
        ("WS_RELAY_TRANSPORT", None),
        ("WS_REDIS_CHANNEL", ""),
        ("WS_REDIS_CHANNEL", "a:b"),
        ("WS_MAX_PUBLISH", 0),
        ("WS_MAX_PUBLISH", 4096),  # presence transfers need room
        ("WS_PRESENCE_META_MAX", 1 << 20),  # more than an eighth of WS_MAX_PUBLISH
        ("WS_BACKPLANE_BUFFER", None),
        ("WS_BACKPLANE_BUFFER", 1 << 20),  # smaller than one WS_MAX_PUBLISH
        ("WS_MAX_CONNECTIONS", 0),
        ("WS_MAX_CONNECTIONS_PER_IP", 2.5),
        ("WS_CONNECT_RATE_PER_IP", -1),
        ("WS_CONNECT_BURST_PER_IP", None),
        ("WS_MESSAGE_RATE", "fast"),
        ("WS_MESSAGE_BURST", 0),
        ("WS_AUTH_IN_BAND", "maybe"),
        ("WS_AUTH_REFRESH_AHEAD", 0),
        ("WS_AUTH_REFRESH_AHEAD", None),
        ("WS_AUTH_TOKEN_MAX", 0),
        ("WS_SUBPROTOCOLS", ["chat v2"]),  # not an RFC 7230 token
        ("WS_SUBPROTOCOLS", ["bearer.x"]),  # reserved for tokens
        ("WS_SUBPROTOCOLS", [""]),
        ("WS_COMPRESSION", "maybe"),
        ("WS_COMPRESSION_MIN", 0),
        ("WS_COMPRESSION_LEVEL", 10),
        ("WS_COMPRESSION_LEVEL", True),
    ],
)
def test_bad_value_names_the_key(key: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        WSConfig.from_mapping({key: value})
    assert info.value.key == key
    assert key in str(info.value)


def test_auth_and_subprotocol_keys() -> None:
    config = WSConfig.from_mapping({})
    assert config.auth_in_band is False
    assert config.auth_refresh_ahead == 30.0
    assert config.auth_token_max == 8192
    assert config.subprotocols == ()
    config = WSConfig.from_mapping(
        {"WS_AUTH_IN_BAND": "yes", "WS_SUBPROTOCOLS": "chat.v2, chat"}
    )
    assert config.auth_in_band is True
    assert config.subprotocols == ("chat.v2", "chat")


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://h:6380", "unix:///run/redis.sock"]
)
def test_a_redis_url_selects_the_backplane(url: str) -> None:
    assert WSConfig.from_mapping({"WS_BACKPLANE": url}).redis_url == url


@pytest.mark.parametrize("transport", ["auto", "seqpacket", "stream"])
def test_relay_transport_values(transport: str) -> None:
    config = WSConfig.from_mapping({"WS_RELAY_TRANSPORT": transport})
    assert config.relay_transport == transport


def test_bad_value_fails_registration(make_app: AppFactory) -> None:
    app = make_app(WS_PING_INTERVAL=-5)
    with pytest.raises(ConfigError, match="WS_PING_INTERVAL"):
        Extend(app).register(WSExtension)


def test_registration_fills_defaults_without_overriding(make_app: AppFactory) -> None:
    app = make_app(WS_PATH="/live")
    Extend(app).register(WSExtension)
    assert app.config.WS_PATH == "/live"
    assert app.config.WS_MAX_BACKPRESSURE == DEFAULTS["WS_MAX_BACKPRESSURE"]


async def test_backplane_changed_after_registration_fails_start(
    make_app: AppFactory,
) -> None:
    # The main process prepares the relay and node id from the registered
    # value; a later change would split one machine's workers.
    app = make_app()
    Extend(app).register(WSExtension)
    app.config.WS_BACKPLANE = "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError, match="WS_BACKPLANE"):
        async with serve(app):
            pass


# -- mistakes named at start-up (issue 23) ------------------------------------


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("WS_MAX_CONNECTION", "WS_MAX_CONNECTIONS"),
        ("WS_PING_INTERVALL", "WS_PING_INTERVAL"),
        ("WS_HANDLER_TIMOUT", "WS_HANDLER_TIMEOUT"),
        ("WS_ALLOWED_ORIGIN", "WS_ALLOWED_ORIGINS"),
    ],
)
def test_a_misspelled_key_is_refused_naming_the_close_match(
    key: str, meant: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        WSConfig.from_mapping({key: 5})
    assert refused.value.key == key
    assert f"did you mean {meant}?" in str(refused.value)


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        # Nearest by spelling is WS_REDIS_CHANNEL, which is not the URL.
        ("WS_REDIS_URL", "did you mean WS_BACKPLANE? It takes the Redis URL"),
        ("WS_REDIS", "did you mean WS_BACKPLANE?"),
        ("WS_HISTORY", "history=History(...), see docs/howto/history.md"),
    ],
)
def test_a_key_guessed_from_elsewhere_names_what_does_it(key: str, meant: str) -> None:
    with pytest.raises(ConfigError) as refused:
        WSConfig.from_mapping({key: "redis://127.0.0.1:6379/0"})
    assert meant in str(refused.value)
    assert "WS_REDIS_CHANNEL" not in str(refused.value)


def test_an_unknown_ws_key_without_a_close_match_points_to_the_reference() -> None:
    with pytest.raises(ConfigError, match=r"docs/reference/config\.md"):
        WSConfig.from_mapping({"WS_FROBNICATE": 1})
    # Sanic copies SANIC_WS_TEST_TIME_UNIT into app.config: not a setting.
    WSConfig.from_mapping({"WS_TEST_TIME_UNIT": 2.0, "OTHER_KEY": 1})


def test_a_misspelled_key_stops_registration(make_app: AppFactory) -> None:
    app = make_app(WS_MAX_MESAGE_SIZE=1024)
    with pytest.raises(ConfigError, match="did you mean WS_MAX_MESSAGE_SIZE"):
        Extend(app).register(WSExtension)


async def test_a_misspelled_key_set_after_registering_stops_the_start(
    make_app: AppFactory,
) -> None:
    app = make_app()
    Extend(app).register(WSExtension)
    app.config.WS_PRESENCE_INTERVALL = 0.5
    with pytest.raises(ConfigError, match="did you mean WS_PRESENCE_INTERVAL"):
        async with serve(app):
            pass


@pytest.mark.parametrize("off", [None, False, "none", "off", "None", " OFF "])
def test_optional_keys_take_none_and_off(off: Any) -> None:
    config = WSConfig.from_mapping(
        {
            "WS_MAX_CONNECTIONS": off,
            "WS_PING_INTERVAL": off,
            "WS_MAX_MESSAGE_SIZE": off,
            "WS_HANDLER_TIMEOUT": off,
            "WS_MESSAGE_RATE": off,
            "WS_STATS_TOKEN": off,
        }
    )
    assert config.max_connections is None
    assert config.ping_interval is None
    assert config.max_message_size is None
    assert config.handler_timeout is None
    assert config.message_rate is None
    assert config.stats_token is None


@pytest.mark.parametrize("key", ["WS_PING_TIMEOUT", "WS_MAX_QUEUE", "WS_PATH"])
def test_keys_without_none_still_refuse_off(key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        WSConfig.from_mapping({key: "off"})


@pytest.mark.parametrize(
    ("value", "want"),
    [("true", True), ("False", False), ("yes", True), ("off", False), (1, True)],
)
def test_switches_take_words(value: Any, want: bool) -> None:
    assert WSConfig.from_mapping({"WS_STATS": value}).stats is want


async def test_none_and_off_from_the_environment(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `SANIC_WS_*=none` would be set for a deployment: Sanic reads the
    environment when the app is made ("off" arrives as False)."""
    monkeypatch.setenv("SANIC_WS_MAX_CONNECTIONS", "none")
    monkeypatch.setenv("SANIC_WS_PING_INTERVAL", "off")
    monkeypatch.setenv("SANIC_WS_MAX_MESSAGE_SIZE", "None")
    monkeypatch.setenv("SANIC_WS_STATS", "true")
    app = make_app()
    assert app.config.WS_PING_INTERVAL is False  # Sanic's reading of "off"
    Extend(app).register(WSExtension)
    async with serve(app):
        config = app.ctx.ws._config
        assert config.max_connections is None
        assert config.ping_interval is None
        assert config.max_message_size is None
        assert config.stats is True
