"""Membership of the cluster without processes: lives, silence, late ops."""

from __future__ import annotations

from sanic_ws_ext.cluster import Membership


def members(dead_after: float = 15.0) -> tuple[Membership, list[str]]:
    gone: list[str] = []
    membership = Membership(
        "w0",
        "a" * 32,
        suspect_after=3.0,
        dead_after=dead_after,
        hears=lambda peer: True,
        gone=gone.append,
    )
    return membership, gone


def test_silent_then_suspect_then_dropped() -> None:
    membership, gone = members()
    assert membership.meet("w1", "l1", 0.0)
    membership.check(2.0)
    assert membership.status() == {"peers": 1, "suspect": []}
    membership.check(4.0)
    assert membership.status() == {"peers": 1, "suspect": ["w1"]}
    membership.heard("w1", 5.0)  # heard again: no longer suspect
    assert membership.status()["suspect"] == []
    membership.check(21.0)
    assert gone == ["w1"] and membership.peers == {}


def test_a_frozen_peer_heard_again_is_met_again() -> None:
    membership, gone = members()
    membership.meet("w1", "l1", 0.0)
    membership.check(16.0)  # dropped for its silence
    assert gone == ["w1"]
    assert membership.meet("w1", "l1", 17.0)  # it was only frozen
    assert membership.knows("w1", "l1")


def test_a_late_op_of_a_silenced_life_does_not_replace_its_successor() -> None:
    """Review of issue 14: L1 dropped for silence, its name restarted as L2,
    then one of L1's last ops arrives: L2 must stay."""
    membership, gone = members()
    membership.meet("w1", "l1", 0.0)
    membership.check(16.0)
    assert membership.meet("w1", "l2", 17.0)  # the restarted worker
    assert not membership.meet("w1", "l1", 18.0)  # a late op of the old life
    assert membership.knows("w1", "l2")
    assert membership.is_dead("l1") and not membership.is_dead("l2")
    assert gone == ["w1"]  # only the silence drop


def test_a_restart_drops_the_old_life_for_good() -> None:
    membership, gone = members()
    membership.meet("w1", "l1", 0.0)
    assert membership.meet("w1", "l2", 1.0)
    assert gone == ["w1"] and membership.is_dead("l1")
    assert not membership.meet("w1", "l1", 2.0)


def test_routes_by_the_key_in_the_id() -> None:
    membership, _ = members()
    membership.meet("w1", "b" * 32, 0.0)
    assert membership.route("a" * 8 + "x" * 24) == "w0"
    assert membership.route("b" * 8 + "x" * 24) == "w1"
    assert membership.route("c" * 8 + "x" * 24) is None
