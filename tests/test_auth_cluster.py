"""``disconnect_user`` reaches every worker and every machine (issue 19).

Real ``sanic --workers 4`` processes (the relay), and two nodes of two workers
over the real Redis.
"""

from __future__ import annotations

import asyncio

from .conftest import units
from .test_backplane_cluster import node_of, two_nodes
from .test_cluster import Client, Cluster, cluster, worker_names


async def users_on(node: Cluster, user: str, workers: int) -> list[Client]:
    """Connect ``user`` until its connections span ``workers`` workers."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + units(30)
    mine: list[Client] = []
    while len({c.worker for c in mine}) < workers:
        assert loop.time() < deadline, f"workers not covered: {node.workers}"
        mine.append(await node.connect(user=user))
    return mine


async def logged_out(node: Cluster, clients: list[Client]) -> None:
    for client in clients:
        assert await client.ws.wait_closed(units(10)) == (4401, "logged out")
        node.clients.remove(client)


async def test_disconnect_user_across_workers() -> None:
    async with cluster() as c:
        alice = await users_on(c, "alice", len(worker_names()))
        bob = await c.connect(user="bob")
        outsider = await c.connect()
        await c.until(outsider, "users", lambda u: u.get("alice") == len(alice))
        await outsider.do("disconnect_user", user="alice")
        await logged_out(c, alice)
        # Bob and the outsider stay, on whatever worker.
        users = await c.until(outsider, "users", lambda u: "alice" not in u)
        assert users == {"bob": 1}
        await bob.do("broadcast", data="still here")
        assert (await outsider.ws.expect("b")).data == "still here"


async def test_disconnect_user_across_machines() -> None:
    async with two_nodes() as (one, two):
        alice = await users_on(one, "alice", 2) + await users_on(two, "alice", 2)
        assert len({node_of(a) for a in alice}) == 2
        bob = await two.connect(user="bob")
        asker = await one.connect()
        await one.until(asker, "users", lambda u: u.get("alice") == len(alice))
        await asker.do("disconnect_user", user="alice")
        await logged_out(one, [a for a in alice if a in one.clients])
        await logged_out(two, [a for a in alice if a in two.clients])
        users = await one.until(asker, "users", lambda u: "alice" not in u)
        assert users == {"bob": 1}
        assert bob in two.clients
