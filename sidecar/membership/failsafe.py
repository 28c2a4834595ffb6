"""Failsafe routing: while no coordinator answers, a member keeps routing from its last
registry copy and checks the peers in it directly, so an owner that dies meanwhile stops
being routed to. The table's age is reported in `status`, `/readyz` and the log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress

import structlog
from aiohttp import web

from sidecar import keys
from signet_cluster.errors import PeerUnreachable

log = structlog.get_logger("signet_cluster.failsafe")
# While in failsafe, repeat the warning this often so it is visible in any log window.
REMIND_EVERY_S = 30.0


async def probe(app: web.Application, node_id: str, url: str) -> bool:
    """A peer is alive when its sidecar answers /api/cluster/info with its own node id."""
    try:
        response = await app[keys.PEERS].call("GET", url, "/api/cluster/info")
    except PeerUnreachable:
        return False
    return (
        response.status == 200
        and isinstance(response.body, dict)
        and response.body.get("node_id") == node_id
    )


async def failsafe_round(app: web.Application) -> None:
    membership = app[keys.MEMBERSHIP]
    view = membership.newest_view()
    if app[keys.IDENTITY].coordinator or view is None or not membership.in_failsafe():
        membership.direct.clear()
        return
    own = app[keys.IDENTITY].node_id
    peers = [p for p in view.peers if p.node_id != own]
    results = await asyncio.gather(*(probe(app, p.node_id, p.url) for p in peers))
    membership.direct = {p.node_id: ok for p, ok in zip(peers, results, strict=True)}
    membership.direct[own] = True


async def failsafe_loop(app: web.Application) -> None:
    membership = app[keys.MEMBERSHIP]
    clock = app[keys.CLOCK]
    interval = app[keys.SETTINGS].heartbeat_interval
    since: float | None = None
    reminded = 0.0
    while True:
        try:
            await failsafe_round(app)
        except Exception:
            log.exception("failsafe_round_failed")
        now = clock.monotonic()
        view = membership.newest_view()
        if membership.direct and view is not None:
            age = round(now - view.received_at, 1)
            down = sorted(n for n, ok in membership.direct.items() if not ok)
            if since is None:
                since = reminded = now
                log.warning("routing_failsafe", table_age_s=age, peers_down=down)
            elif now - reminded >= REMIND_EVERY_S:
                reminded = now
                log.warning("routing_failsafe_continues", table_age_s=age, peers_down=down)
        elif since is not None:
            log.info("routing_failsafe_over", lasted_s=round(now - since, 1))
            since = None
        await asyncio.sleep(interval)


async def failsafe_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(failsafe_loop(app), name="failsafe")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
