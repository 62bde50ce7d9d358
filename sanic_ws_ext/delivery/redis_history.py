"""History rooms across machines: Redis numbers, keeps and publishes them.

With ``WS_BACKPLANE=redis://...`` every machine would number a room on its
own, so Redis itself is the sequencer of history rooms. Each publication is
one Lua script (:data:`PUBLISH_LUA`, run with ``EVALSHA``) that, atomically:

- increments the room's offset in the hash ``{<channel>:room:<room>}:h``
  (fields ``e`` epoch, ``o`` offset, ``r`` Redis's ``run_id``);
- stamps ``room``/``offset``/``epoch`` into the envelope and ``XADD``\\ s it
  to the stream ``{<channel>:room:<room>}:s`` with the id ``<offset>-0``
  (``MAXLEN ~ size``), with the time it was kept (for ``ttl``);
- sets the ttl (``PEXPIRE`` on both keys: an idle room's history goes);
- publishes the framed ``ROOM_SEND`` op on the room channel (``SPUBLISH`` on
  a Redis Cluster) as the pseudo-sender ``~history`` whose life is the epoch
  and whose sequence number is the offset. Receivers' per-sender duplicate
  and gap tracking (:mod:`~sanic_ws_ext.delivery.backplane`) applies as is,
  and every member everywhere gets a room's publications in offset order.

Both keys are hash-tagged to the room channel's slot, so on a Redis Cluster
the script, its keys and the channel are on one shard (a room name with its
own ``{...}`` keeps it: see :func:`history_keys`).

Epochs: an epoch is Redis's ``TIME`` in microseconds when the room's history
began (a decimal string; newer epochs compare larger). The hash records the
``run_id`` of the Redis that numbered it: a Redis restarted (from an older
snapshot, or none) has another ``run_id``, so the first script to touch the
room there starts a new epoch instead of reusing offsets it may have handed
out already. A failover to a replica does the same.

Reads (a client's join, ``ws.history``) are one script too
(:data:`READ_LUA`): the entries after ``since`` and the position, at one
instant. The seam with live publications is kept by the sequencer
(:mod:`~sanic_ws_ext.sequencer`).

Order and faults: a process has one publishing pipeline in flight at a time
(its publications keep their order); reads go in their own pipeline. While
the backplane is not connected, or on any Redis error, callers get
:class:`~sanic_ws_ext.errors.SequencerUnavailable` at once, never a hang
(commands are bounded by the link's I/O timeout). Scripts are loaded with
``SCRIPT LOAD`` on first use and after every reconnect, and again on a
``NOSCRIPT`` reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import ujson

from ..errors import PublishTooLarge, SequencerUnavailable
from ..history import History, Position
from . import LinkState, OpKind
from .redislink import IO_TIMEOUT, ClusterLink, client

if TYPE_CHECKING:
    from .backplane import RedisBackplane

__all__ = [
    "HISTORY_ORIGIN",
    "PUBLISH_LUA",
    "READ_LUA",
    "RedisHistory",
    "history_keys",
    "position_of",
]

log = logging.getLogger("sanic.root.sanic_ws_ext.backplane")

#: The sender name of publications made by the Redis sequencer.
HISTORY_ORIGIN = "~history"
_BATCH = 256  # scripts per pipeline round trip

# Shared by both scripts: big-endian integers (exact below 2^53), and a new
# epoch from Redis's clock.
_LUA_COMMON = r"""
local function u16(n)
  return string.char(math.floor(n / 256) % 256, n % 256)
end
local function u32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
    math.floor(n / 256) % 256, n % 256)
end
local function u64(n)
  local out = {}
  for i = 8, 1, -1 do
    out[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(out)
end
local function num(n) return string.format('%.0f', n) end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local h, s = KEYS[1], KEYS[2]
-- The room's position; a new epoch when there is none or another Redis
-- (run_id) made it.
local function position(run_id, ttl)
  local state = redis.call('HMGET', h, 'e', 'o', 'r')
  local epoch, offset = state[1], tonumber(state[2]) or 0
  if not epoch or state[3] ~= run_id then
    epoch = now[1] .. string.format('%06d', tonumber(now[2]))
    offset = 0
    redis.call('DEL', s)
    redis.call('HSET', h, 'e', epoch, 'o', 0, 'r', run_id)
    if ttl > 0 then redis.call('PEXPIRE', h, ttl) end
  end
  return epoch, offset
end
"""

#: KEYS: hash, stream. ARGV: size, ttl ms (0: none), run_id, channel,
#: room as JSON, envelope, op head before the reason length, op head after
#: it, target, origin + excluded ids, PUBLISH or SPUBLISH.
#: Returns {offset, epoch}.
PUBLISH_LUA = (
    _LUA_COMMON
    + r"""
local size, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local epoch, offset = position(ARGV[3], ttl)
offset = offset + 1
redis.call('HSET', h, 'o', offset)
local o = num(offset)
local stamped = '{"room":' .. ARGV[5] .. ',"offset":' .. o .. ',"epoch":"' .. epoch
  .. '",' .. string.sub(ARGV[6], 2)
redis.call('XADD', s, 'MAXLEN', '~', size, o .. '-0', 'd', stamped, 't', num(now_ms))
if ttl > 0 then
  redis.call('PEXPIRE', h, ttl)
  redis.call('PEXPIRE', s, ttl)
end
local reason = o .. ' ' .. epoch
local op = ARGV[7] .. u16(#reason) .. ARGV[8] .. ARGV[9] .. reason .. ARGV[10]
  .. stamped
redis.call(ARGV[11], ARGV[4], '\1' .. u64(tonumber(epoch)) .. u64(offset)
  .. u16(#'~history') .. '~history' .. u32(#op) .. op)
return {offset, epoch}
"""
)

#: KEYS: hash, stream. ARGV: run_id, size, ttl ms (0: none), since offset
#: (-1: none), since epoch, most entries after since, most bytes of them (0:
#: any; more is not recovered), latest entries wanted without since or when
#: it cannot be continued. Returns {offset, epoch, ok (1/0), entries}.
READ_LUA = (
    _LUA_COMMON
    + r"""
local size, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local since, since_epoch = tonumber(ARGV[4]), ARGV[5]
local count, budget, latest = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local epoch, offset = position(ARGV[1], ttl)
-- Kept at most: the last `size` offsets (MAXLEN ~ may keep more), none
-- older than ttl.
local floor = offset - size
local cutoff = -1
if ttl > 0 then cutoff = now_ms - ttl end
local ok = 1
local out = {}
if since >= 0 then
  if since_epoch ~= epoch or since > offset or since < floor then
    ok = 0
  elseif since < offset then
    local want = math.min(count, offset - since)
    local rows = redis.call('XRANGE', s, num(since + 1) .. '-0', '+', 'COUNT', want)
    if #rows == 0 or rows[1][1] ~= num(since + 1) .. '-0'
        or tonumber(rows[1][2][4]) < cutoff then
      ok = 0
    else
      local total = 0
      for i, row in ipairs(rows) do
        local d = row[2][2]
        total = total + #d
        if budget > 0 and total > budget then
          ok = 0
          out = {}
          break
        end
        out[i] = d
      end
    end
  end
end
if (since < 0 or ok == 0) and latest > 0 then
  out = {}
  local rows = redis.call('XREVRANGE', s, '+', '-', 'COUNT', latest)
  for i = #rows, 1, -1 do
    local row = rows[i]
    local n = tonumber(string.sub(row[1], 1, -3))
    if n > floor and tonumber(row[2][4]) >= cutoff then
      out[#out + 1] = row[2][2]
    end
  end
end
return {offset, epoch, ok, out}
"""
)

_SHA = {
    script: hashlib.sha1(script.encode()).hexdigest()
    for script in (PUBLISH_LUA, READ_LUA)
}


def _hash_tag(key: str) -> str | None:
    """What Redis Cluster hashes ``key`` by, if not the whole key."""
    start = key.find("{")
    if start < 0:
        return None
    end = key.find("}", start + 1)
    if end <= start + 1:
        return None
    return key[start + 1 : end]


@lru_cache(maxsize=4096)
def history_keys(channel: str) -> tuple[str, str]:
    """The hash and stream keys of a room channel, in the channel's slot.

    ``{<channel>}:h`` and ``{<channel>}:s``; a channel with a hash tag of its
    own (a room named ``chat:{eu}``) hashes by that tag, so the keys carry
    it first: ``{eu}<channel>:h``.
    """
    tag = _hash_tag(channel)
    if tag is not None:
        base = "{" + tag + "}" + channel
    elif "}" not in channel:
        base = "{" + channel + "}"
    else:  # no tag, but a "}" that would end ours: any tag of the same slot
        base = "{" + _tag_of_slot(_slot(channel)) + "}" + channel
    return base + ":h", base + ":s"


def _slot(key: str) -> int:
    from redis.crc import key_slot

    return int(key_slot(key.encode()))


@lru_cache(maxsize=256)
def _tag_of_slot(slot: int) -> str:
    n = 0
    while _slot(str(n)) != slot:
        n += 1
    return str(n)


def position_of(op: Any) -> Position | None:
    """The position a publication of the Redis sequencer carries (its reason)."""
    reason: str = op.reason
    offset, sep, epoch = reason.partition(" ")
    if not sep or not offset.isdigit():
        return None
    return Position(int(offset), epoch)


def newer(epoch: str, than: str) -> bool:
    """Whether ``epoch`` began after ``than`` (both made by the scripts)."""
    return (len(epoch), epoch) > (len(than), than)


@dataclass(slots=True)
class _Call:
    script: str
    channel: str
    args: list[Any]
    future: asyncio.Future[Any]
    node: Any = None


@dataclass(slots=True)
class _Node:
    """One Redis (a master of a cluster): its client and what we know of it."""

    redis: Any
    run_id: str | None = None
    loaded: set[str] = field(default_factory=set)


@dataclass(slots=True)
class _Lane:
    """Calls sent one pipeline at a time, on connections of their own."""

    queue: deque[_Call] = field(default_factory=deque)
    #: The node (None: the one Redis; (host, port) on a cluster) -> its client.
    nodes: dict[Any, _Node] = field(default_factory=dict)
    #: The backplane link generation the connections and run_ids are from.
    generation: int = -1


class RedisHistory:
    """The history store and sequencer of a process on the Redis backplane."""

    def __init__(self, backplane: RedisBackplane, *, max_backpressure: int | None):
        self._backplane = backplane
        self._max_backpressure = max_backpressure
        self._lanes = {"publish": _Lane(), "read": _Lane()}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    # -- what the sequencer calls -------------------------------------------------

    async def publish(
        self, room: str, spec: History, body: bytes, exclude: Iterable[str]
    ) -> Position:
        backplane = self._backplane
        if len(body) > backplane.max_publish:
            raise PublishTooLarge(len(body), backplane.max_publish)
        channel = backplane.room_channel(room)
        target = room.encode()
        origin = backplane.process.encode()
        ids = [i.encode() for i in exclude]
        sharded = isinstance(backplane.link, ClusterLink)
        args = [
            spec.size,
            _ms(spec.ttl),
            None,  # run_id, filled in when sent
            channel,
            ujson.dumps(room, ensure_ascii=False, escape_forward_slashes=False),
            body,
            struct.pack("!BBHH", OpKind.ROOM_SEND, 0, 0, len(target)),
            struct.pack("!HH", len(origin), len(ids)),
            target,
            origin + b"".join(struct.pack("!H", len(i)) + i for i in ids),
            "SPUBLISH" if sharded else "PUBLISH",
        ]
        offset, epoch = await self._call("publish", PUBLISH_LUA, channel, args)
        return Position(int(offset), _text(epoch))

    async def read(
        self,
        room: str,
        spec: History,
        since: Position | None,
        *,
        count: int,
        budget: int,
        latest: int,
    ) -> tuple[dict[str, Any], list[bytes]]:
        """The header (offset, epoch, ok) and entries, at one instant."""
        channel = self._backplane.room_channel(room)
        args = [
            None,  # run_id
            spec.size,
            _ms(spec.ttl),
            -1 if since is None else since.offset,
            "" if since is None else since.epoch,
            count,
            budget,
            latest,
        ]
        offset, epoch, ok, entries = await self._call("read", READ_LUA, channel, args)
        header = {"offset": int(offset), "epoch": _text(epoch), "ok": bool(ok)}
        return header, list(entries)

    async def stop(self) -> None:
        self._closed = True
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks.values(), timeout=IO_TIMEOUT)
        self._tasks.clear()
        for lane in self._lanes.values():
            _fail(lane.queue, "the server is stopping")
            for node in lane.nodes.values():
                with contextlib.suppress(Exception):
                    await node.redis.aclose(close_connection_pool=True)
            lane.nodes.clear()

    # -- lanes: one pipeline in flight each -------------------------------------

    async def _call(self, lane: str, script: str, channel: str, args: list[Any]) -> Any:
        if self._closed:
            raise SequencerUnavailable("the server is stopping")
        if self._backplane.state is not LinkState.CONNECTED:
            raise SequencerUnavailable("Redis is unreachable: history rooms wait")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._lanes[lane].queue.append(_Call(script, channel, args, future))
        task = self._tasks.get(lane)
        if task is None or task.done():
            self._tasks[lane] = loop.create_task(self._run(lane))
        try:
            return await asyncio.wait_for(asyncio.shield(future), 2 * IO_TIMEOUT)
        except TimeoutError:
            raise SequencerUnavailable("Redis did not answer in time") from None

    async def _run(self, name: str) -> None:
        lane = self._lanes[name]
        queue = lane.queue
        while queue:
            batch = [queue.popleft() for _ in range(min(_BATCH, len(queue)))]
            try:
                await self._send(lane, batch)
            except asyncio.CancelledError:
                _fail(batch, "the server is stopping")
                raise
            except Exception as exc:
                log.warning("redis history: %s", _describe(exc))
                lane.generation = -1  # reconnect and reload before the next
                _fail(batch, f"Redis failed: {_describe(exc)}")

    async def _send(self, lane: _Lane, batch: list[_Call]) -> None:
        backplane = self._backplane
        if backplane.generation != lane.generation:
            # A new link (Redis restarted, or a failover): new connections,
            # and run_ids and scripts to learn again. Each lane has its own
            # connections: this never breaks the other lane's pipeline.
            for node in lane.nodes.values():
                with contextlib.suppress(Exception):
                    await node.redis.connection_pool.disconnect()
                node.run_id = None
                node.loaded.clear()
            lane.generation = backplane.generation
        link = backplane.link
        groups: dict[Any, list[_Call]] = {}
        for call in batch:
            if isinstance(link, ClusterLink):
                if link.topology is None:
                    raise ConnectionError("no cluster slot map yet")
                key: Any = link.topology.owner(call.channel)
            else:
                key = None
            groups.setdefault(key, []).append(call)
        results = await asyncio.gather(
            *(self._send_to(lane, key, calls) for key, calls in groups.items()),
            return_exceptions=True,
        )
        for (_, calls), result in zip(groups.items(), results, strict=True):
            if isinstance(result, BaseException):
                lane.generation = -1
                _fail(calls, f"Redis failed: {_describe(result)}")

    def _node(self, lane: _Lane, key: Any) -> _Node:
        node = lane.nodes.get(key)
        if node is None:
            url = self._backplane.url
            options: dict[str, Any] = {"socket_timeout": IO_TIMEOUT}
            if key is not None:
                options.update(host=key[0], port=key[1])
            node = lane.nodes[key] = _Node(client(url, max_connections=1, **options))
        return node

    async def _send_to(self, lane: _Lane, key: Any, calls: list[_Call]) -> None:
        from redis.exceptions import NoScriptError

        node = self._node(lane, key)
        redis = node.redis
        if node.run_id is None:
            info = await redis.info("server")
            node.run_id = str(info["run_id"])
        for call in calls:
            call.args[0 if call.script is READ_LUA else 2] = node.run_id
        todo = calls
        for _ in range(2):  # a second time after a NOSCRIPT
            for script in {call.script for call in todo} - node.loaded:
                await redis.script_load(script)
                node.loaded.add(script)
            pipe = redis.pipeline(transaction=False)
            for call in todo:
                keys = history_keys(call.channel)
                pipe.evalsha(_SHA[call.script], 2, *keys, *call.args)
            results = await pipe.execute(raise_on_error=False)
            again = []
            for call, result in zip(todo, results, strict=True):
                if isinstance(result, NoScriptError):
                    node.loaded.discard(call.script)  # SCRIPT FLUSH: in order
                    again.append(call)
                elif call.future.done():
                    pass
                elif isinstance(result, Exception):
                    call.future.set_exception(
                        SequencerUnavailable(f"Redis refused: {_describe(result)}")
                    )
                else:
                    call.future.set_result(result)
            if not again:
                return
            todo = again
        _fail(todo, "Redis keeps forgetting the history scripts")


def _ms(ttl: float | None) -> int:
    return 0 if ttl is None else max(1, round(ttl * 1000))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fail(calls: Iterable[_Call], why: str) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_exception(SequencerUnavailable(why))
    if isinstance(calls, deque):
        calls.clear()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
