"""The cluster replica's bookkeeping, without processes."""

from __future__ import annotations

from sanic_ws_ext.presence import ClusterState


def test_up_join_leave_down() -> None:
    state = ClusterState()
    state.up("a", "alice", "w0")
    state.up("b", "alice", "w1")
    state.up("c", None, "w1")
    assert state.join("a", "lobby") is not None
    assert state.join("a", "lobby") is None  # already in
    assert state.join("nobody", "lobby") is None
    state.join("c", "lobby")
    assert sorted(m.id for m in state.room_members("lobby")) == ["a", "c"]
    assert state.users == {"alice": {"a", "b"}}
    assert state.leave("c", "lobby") is not None
    assert state.leave("c", "lobby") is None
    gone = state.down("a")
    assert gone is not None and gone.rooms == {"lobby"}
    assert state.rooms == {}  # empty rooms disappear
    assert state.users == {"alice": {"b"}}
    assert state.down("a") is None


def test_drop_worker_leaves_no_ghosts() -> None:
    state = ClusterState()
    state.up("a", "alice", "w0")
    state.up("b", "bob", "w1")
    state.join("a", "r")
    state.join("b", "r")
    gone = state.drop_worker("w0")
    assert [m.id for m in gone] == ["a"]
    assert set(state.members) == {"b"}
    assert state.rooms == {"r": {"b"}}
    assert "alice" not in state.users and "w0" not in state.workers


def test_snapshot_and_load_replace_a_workers_entries() -> None:
    source = ClusterState()
    source.up("a", "alice", "w0")
    source.join("a", "r1")
    source.join("a", "r2")
    replica = ClusterState()
    replica.up("stale", None, "w0")  # from w0's previous life
    replica.up("b", None, "w1")
    replica.load("w0", source.snapshot("w0"))
    assert set(replica.members) == {"a", "b"}
    assert replica.members["a"].rooms == {"r1", "r2"}
    assert replica.members["a"].user == "alice"
