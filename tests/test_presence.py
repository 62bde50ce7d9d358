"""Presence bookkeeping and room declarations, without processes (pure)."""

from __future__ import annotations

import gc

import pytest
import ujson

from sanic_ws_ext.presence import (
    META,
    REF,
    Counts,
    Diffs,
    Entry,
    PresenceTable,
    checked_presence,
    new_entry,
    peer_entry,
    wire_entry,
)
from sanic_ws_ext.rooms import UNDECLARED, RoomPolicies, RoomSpec


def entry(
    ref: str, key: str = "ann", room: str = "r", process: str = "w0", **meta: str
) -> Entry:
    return new_entry(room, key, ref, {"ref": ref, **meta}, process, f"conn-{ref}")


def test_table_by_room_key_and_process() -> None:
    table = PresenceTable()
    assert table.add(entry("1"))
    assert table.add(entry("2"))  # a second tab: same key
    assert table.add(entry("3", key="bob", process="w1"))
    assert not table.add(entry("3", key="bob", process="w1"))  # known ref
    assert ujson.loads(table.state("r")) == {
        "room": "r",
        "users": {"ann": [{"ref": "1"}, {"ref": "2"}], "bob": [{"ref": "3"}]},
    }
    assert table.count("r") == (3, 2)
    removed = table.remove("1")
    assert removed is not None and removed[REF] == "1"
    assert table.remove("1") is None
    gone = table.drop_process("w1")
    assert [e[REF] for e in gone] == ["3"]
    table.remove("2")
    assert table.rooms == {} and table.keys == {} and table.by_process == {}
    assert len(table) == 0


def test_diffs_net_out_and_group_by_key() -> None:
    diffs = Diffs()
    a, b = entry("a", name="Ann"), entry("b", key="bob")
    c = entry("c", room="s", name="Ann")
    diffs.join(a)
    diffs.join(b)
    diffs.leave(b)  # came and went: never mentioned
    diffs.leave(c)
    taken = {room: ujson.loads(data) for room, data in diffs.take().items()}
    assert taken == {
        "r": {
            "room": "r",
            "joins": {"ann": [{"ref": "a", "name": "Ann"}]},
            "leaves": {},
        },
        # A leave is its ref alone: members hold the metadata already.
        "s": {"room": "s", "joins": {}, "leaves": {"ann": [{"ref": "c"}]}},
    }
    assert not diffs and diffs.take() == {}


def test_counts_sum_over_processes() -> None:
    counts = Counts()
    assert counts.set("r", "w0", 2)
    assert not counts.set("r", "w0", 2)
    assert counts.set("r", "w1", 3)
    assert counts.total("r") == 5
    assert counts.of("w1") == {"r": 3}
    assert counts.drop_process("w1") == ["r"]
    assert counts.total("r") == 2
    assert counts.set("r", "w0", 0) and counts.rooms == {}


def test_presence_metadata_is_checked() -> None:
    assert checked_presence({"name": "Ann"}, 64) == {"name": "Ann"}
    with pytest.raises(ValueError, match="WS_PRESENCE_META_MAX"):
        checked_presence({"bio": "x" * 100}, 64)
    with pytest.raises(ValueError, match="ref"):
        checked_presence({"ref": "mine"}, 64)
    with pytest.raises(TypeError):
        checked_presence(["not", "a", "dict"], 64)


def test_room_patterns() -> None:
    policies = RoomPolicies(
        [
            RoomSpec.declare("doc:{doc_id}", presence="full"),
            RoomSpec.declare("doc:index", presence="counts"),
            RoomSpec.declare("org:{org}:team:{team}"),
        ]
    )
    spec, params = policies.lookup("doc:42")
    assert (spec.presence, params) == ("full", {"doc_id": "42"})
    # An exact declaration wins over a pattern.
    assert policies.lookup("doc:index")[0].presence == "counts"
    assert policies.lookup("org:a:team:b")[1] == {"org": "a", "team": "b"}
    # A parameter never spans a ':'.
    assert policies.lookup("doc:a:b")[0] is UNDECLARED
    assert policies.lookup("other")[0] is UNDECLARED
    with pytest.raises(ValueError, match="twice"):
        policies.add(RoomSpec.declare("doc:{x}"))


def test_diff_and_state_escape_keys_and_metadata() -> None:
    """Built as bytes, they are still JSON whatever the key or metadata holds."""
    table = PresenceTable()
    diffs = Diffs()
    odd = 'quote " back \\ slash / line\n é 😀'
    for ref in ("1", "2"):
        e = entry(ref, key=odd, room=odd, name=odd)
        table.add(e)
        diffs.join(e)
    expected = [{"ref": "1", "name": odd}, {"ref": "2", "name": odd}]
    assert ujson.loads(table.state(odd)) == {"room": odd, "users": {odd: expected}}
    assert ujson.loads(diffs.take()[odd]) == {
        "room": odd,
        "joins": {odd: expected},
        "leaves": {},
    }


def test_entries_cost_a_full_collection_nothing() -> None:
    """Entries are plain tuples of strings and bytes, in containers of such:
    after one collection CPython tracks none of them (a survivor's stall in
    bench/scale.py was mostly a full collection walking entries)."""
    table = PresenceTable()
    diffs = Diffs()
    for n in range(1000):
        e = entry(str(n), key=f"user{n % 300}", room=f"r{n % 3}", name="Ann")
        table.add(e)
        diffs.join(e)
    table.add(entry("7", key="user7", room="r1"))  # known: not added again
    gc.collect()
    assert not any(gc.is_tracked(e) for e in table.refs.values())
    assert not gc.is_tracked(table.refs)
    assert not any(gc.is_tracked(refs) for refs in table.rooms.values())
    assert not any(gc.is_tracked(keys) for keys in table.keys.values())
    assert table.count("r0") == (334, 100)


def test_an_entry_crosses_processes_as_json() -> None:
    mine = new_entry("r", "ann", "1", {"ref": "1", "name": 'é "x"'}, "w0", "c1")
    theirs = peer_entry(ujson.loads(wire_entry(mine)), "w0")
    assert theirs == mine
    # A peer of an earlier release sends the metadata as an object.
    old = peer_entry(["r", "ann", "1", {"ref": "1", "name": 'é "x"'}, "c1"], "w0")
    assert ujson.loads(old[META]) == ujson.loads(mine[META])
