"""Exactly once for long content: a remember the daemon splits into chunks, sent with no
idempotency key, whose owner answers only after the forward timeout, is stored once — on
the dev daemon and on the real 0.145.7 daemon — and never ends in the dead letters."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sidecar.memory.handoff import SPOOL

from .cluster_helpers import Cluster, TestServer, wait_for
from .real_signet import RealDaemon, needs_real_signet, start_layout
from .routing_helpers import ALICE, BOB, client, db_rows, set_faults, wait_routes

# Distinct sentences, about 2,400 characters: chunked by every flavor's daemon (TS above 800).
LONG = " ".join(
    f"Sentence {i} records that the deploy of service {i} went out on a calm morning."
    for i in range(30)
)


async def spool_depth(cluster: Cluster, url: str) -> int:
    code, body, _ = await client(cluster, "GET", url + "/api/cluster/status?local=1")
    assert code == 200, body
    return int(body["local"]["spool"]["depth"])


async def test_a_chunked_remember_that_timed_out_is_stored_once(cluster: Cluster) -> None:
    """The owner's daemon takes longer than the forward timeout; the write is spooled (202)
    and replayed later: bob's memory exists once (one set of chunks), nothing dead-lettered."""
    a = await cluster.add("a", [ALICE], coordinator=True, forward_timeout=0.5)
    b = await cluster.add("b", [BOB], coordinators=(a.url,))
    await wait_routes(cluster, a, {"bob": ("remote", "b")})
    await set_faults(cluster, b, latency_ms=1500)
    code, body, _ = await client(
        cluster, "POST", a.url + "/api/memory/remember", {"content": LONG, "agentId": "bob"}
    )
    assert code == 202, body

    async def first_try_stored() -> bool:
        return db_rows(b, "SELECT COUNT(*) FROM memories WHERE agent_id = 'bob'")[0][0] > 0

    await wait_for(first_try_stored, what="the timed-out first try to land")
    await set_faults(cluster, b, latency_ms=0)

    async def drained() -> bool:
        return await spool_depth(cluster, a.url) == 0

    await wait_for(drained, timeout=20, what="the replay")
    rows = db_rows(b, "SELECT content, idempotency_key FROM memories WHERE agent_id = 'bob'")
    contents = [r[0] for r in rows]
    assert len(contents) == len(set(contents)), f"stored twice: {len(contents)} rows"
    bases = {str(r[1]).split(":chunk:")[0] for r in rows}
    assert len(bases) == 1 and None not in {r[1] for r in rows}, rows
    assert a.app[SPOOL].dead_letters() == []


# -- the same on the real daemon ------------------------------------------------------------


@pytest.fixture
async def slow_relay(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A relay in front of a real daemon that can hold remembers back (the real daemon has
    no latency switch): every request is passed on unchanged, answers relayed back."""
    state: dict[str, Any] = {"delay": 0.0, "target": ""}
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def relay(req: web.Request) -> web.Response:
        body = await req.read()
        if req.path == "/api/memory/remember":
            await asyncio.sleep(state["delay"])
        headers = {k: v for k, v in req.headers.items() if k.lower() not in ("host",)}
        async with session.request(
            req.method, state["target"] + req.raw_path, data=body, headers=headers
        ) as resp:
            data = await resp.read()
            kept = {"Content-Type": resp.headers.get("Content-Type", "application/json")}
            return web.Response(status=resp.status, body=data, headers=kept)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state["url"] = str(server.make_url("")).rstrip("/")
    yield state
    await server.close()
    await session.close()


@needs_real_signet
async def test_on_the_real_daemon_a_chunked_remember_that_timed_out_is_stored_once(
    cluster: Cluster, tmp_path: Path, slow_relay: Any
) -> None:
    """On 0.145.7 the replay of a chunked write without the first try's key is refused 409
    ("chunk content already exists") and dead-lettered; with the key carried from the first
    try it is answered as the stored memory, and the chunks exist once."""
    layout = {
        "owner": ("0.145.7", [("bob", {"read_policy": "shared"})]),
        "other": ("0.145.7", [("erin", {"read_policy": "isolated"})]),
    }
    daemons: dict[str, RealDaemon] = await asyncio.to_thread(start_layout, tmp_path, layout)
    try:
        slow_relay["target"] = daemons["owner"].url
        a = await cluster.add(
            "other",
            coordinator=True,
            start_daemon=False,
            daemon_url=daemons["other"].url,
            workspace=str(daemons["other"].workspace),
            forward_timeout=0.5,
        )
        b = await cluster.add(
            "owner",
            coordinators=(a.url,),
            start_daemon=False,
            daemon_url=slow_relay["url"],
            workspace=str(daemons["owner"].workspace),
        )
        await wait_routes(cluster, a, {"bob": ("remote", "owner")})
        slow_relay["delay"] = 2.0
        code, body, _ = await client(
            cluster, "POST", a.url + "/api/memory/remember", {"content": LONG, "agentId": "bob"}
        )
        assert code == 202, body
        db = daemons["owner"].workspace / "memory" / "memories.db"

        def bob_rows() -> list[tuple[Any, ...]]:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                return conn.execute(
                    "SELECT content, idempotency_key FROM memories "
                    "WHERE agent_id = 'bob' AND is_deleted = 0"
                ).fetchall()

        async def first_try_stored() -> bool:
            return bool(await asyncio.to_thread(bob_rows))

        await wait_for(first_try_stored, timeout=15, what="the timed-out first try to land")
        slow_relay["delay"] = 0.0

        async def drained() -> bool:
            return await spool_depth(cluster, a.url) == 0

        await wait_for(drained, timeout=20, what="the replay")
        rows = await asyncio.to_thread(bob_rows)
        assert len(rows) > 1, "expected the daemon to chunk the content"
        assert len(rows) == len({r[0] for r in rows}), f"stored twice: {rows}"
        assert a.app[SPOOL].dead_letters() == [], "the replay was refused"
        assert len({str(r[1]).split(":chunk:")[0] for r in rows}) == 1
        await cluster.stop_sidecar(b)
        await cluster.stop_sidecar(a)
    finally:
        for daemon in daemons.values():
            await asyncio.to_thread(daemon.stop)
