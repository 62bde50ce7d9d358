"""Presence bookkeeping and room declarations, without processes (pure)."""

from __future__ import annotations

import pytest
import ujson

from sanic_ws_ext.presence import Counts, Diffs, Entry, PresenceTable, checked_presence
from sanic_ws_ext.rooms import UNDECLARED, RoomPolicies, RoomSpec


def entry(
    ref: str, key: str = "ann", room: str = "r", process: str = "w0", **meta: str
) -> Entry:
    return Entry(room, key, ref, {"ref": ref, **meta}, process, f"conn-{ref}")


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
    assert removed is not None and removed.ref == "1"
    assert table.remove("1") is None
    gone = table.drop_process("w1")
    assert [e.ref for e in gone] == ["3"]
    table.remove("2")
    assert table.rooms == {} and table.by_process == {} and len(table) == 0


def test_a_sync_removes_what_it_did_not_list() -> None:
    table = PresenceTable()
    for ref in "abc":
        table.add(entry(ref, process="w1"))
    table.begin_sync("w1")
    table.add(entry("a", process="w1"))  # listed again
    table.add(entry("d", process="w1"))  # new
    assert sorted(table.stale("w1")) == ["b", "c"]
    table.add(entry("b", process="w1"))  # a later part lists it too
    assert table.stale("w1") == ["c"]


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
