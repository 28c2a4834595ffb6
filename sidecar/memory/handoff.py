"""Hinted handoff: a remember whose owner cannot take it now is kept in this sidecar's
spool (signet_cluster.spool) and answered 202 with its idempotency key and the owner; a
loop replays each agent's writes in order once its owner is back.

Replays travel as hop requests to the owner's sidecar (this node's own, when the owner is
here and its daemon was restarting), marked as replays so the receiving sidecar answers
503 instead of spooling them a second time. Only remembers are ever spooled: modify,
forget and delete need the current state of the memory and get a 503 instead.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import suppress
from typing import Any

import structlog
from aiohttp import web

from sidecar import keys
from sidecar.keys import SPOOL_SUMMARY
from sidecar.membership.peers import ForwardFailed, RawResponse
from signet_cluster.protocol import SpoolSummary
from signet_cluster.spool import Spool, SpoolEntry, SpoolFull, ensure_idempotency_key

log = structlog.get_logger("signet_cluster.handoff")

SPOOL = web.AppKey("spool", Spool)
REPLAY_HEADER = "x-signet-cluster-replay"
# How a sidecar names its own authentication in a 401 (sidecar/security/auth.py `refuse`).
CLUSTER_AUTH_SCHEME = "Signet-HMAC-SHA256"
# The request headers worth keeping with a spooled write (what the daemon reads).
KEPT_HEADERS = (
    "content-type",
    "authorization",
    "x-signet-session-key",
    "x-signet-agent-id",
    "x-signet-runtime-path",
    "x-signet-actor",
    "x-signet-actor-type",
    "x-signet-session-id",
    "x-signet-request-id",
    "x-signet-no-hooks",
)


def is_replay(headers: Mapping[str, str]) -> bool:
    return headers.get(REPLAY_HEADER) == "1"


# How many damaged spool files have been reported in the log so far.
DAMAGE_LOGGED = web.AppKey("spool_damage_logged", list[int])


def note_damage(app: web.Application) -> None:
    """Log, once per damaged file, what was moved aside and which writes it held."""
    spool = app[SPOOL]
    logged = app[DAMAGE_LOGGED]
    if spool.damage is None or spool.damage_count == logged[0]:
        return
    logged[0] = spool.damage_count
    log.error("spool_damaged", **spool.damage)


def spool_problem(app: web.Application) -> str | None:
    """Why this node cannot spool writes now (disk full), or None."""
    spool = app.get(SPOOL)
    return spool.problem() if spool is not None else None


async def refresh_summary(app: web.Application) -> SpoolSummary:
    stats = await asyncio.to_thread(app[SPOOL].stats)
    oldest_at = (
        app[keys.CLOCK].time() - stats.oldest_age_s if stats.oldest_age_s is not None else None
    )
    summary = SpoolSummary(
        depth=stats.depth,
        bytes=stats.bytes,
        # Whole seconds: the value must not wobble between heartbeats.
        oldest_at=float(int(oldest_at)) if oldest_at is not None else None,
        dead_letters=stats.dead_letters,
        owners=tuple(sorted(stats.by_owner)),
    )
    app[SPOOL_SUMMARY][:] = [summary]
    return summary


async def spool_write(
    app: web.Application,
    *,
    agent_id: str,
    owner: Mapping[str, str],
    method: str,
    path_qs: str,
    headers: Mapping[str, str],
    body: dict[str, Any],
    why: str,
) -> web.Response:
    """Keep one remember durably; 202 with its key, or 503 when the spool is at a bound."""
    content = body.get("content")
    if not isinstance(content, str) or not content.strip():
        # The owner's daemon would refuse it (400, the same words): say so now rather than
        # accept a write that can only end up in the dead letters.
        return web.json_response(
            {"error": "content is required", "code": "content_required"}, status=400
        )
    key = ensure_idempotency_key(body, app[keys.IDENTITY].node_id)
    data = json.dumps(body).encode()
    kept = {k: v for k, v in headers.items() if k.lower() in KEPT_HEADERS}
    spool = app[SPOOL]
    try:
        seq = await asyncio.to_thread(
            spool.add,
            owner=owner["node_id"],
            agent_id=agent_id,
            method=method,
            path=path_qs,
            headers=kept,
            body=data,
            idempotency_key=key,
        )
    except SpoolFull as exc:
        log.warning(exc.code, agent_id=agent_id, owner=owner["node_id"], reason=exc.reason)
        return _not_spooled(agent_id, owner, why, exc.reason, exc.code, exc.retry_after)
    except (sqlite3.Error, OSError) as exc:
        # Disk full, I/O error, a broken file: the write is not stored, and the client
        # must know it can retry (a 500 would not say so).
        log.error("spool_unavailable", agent_id=agent_id, owner=owner["node_id"], error=str(exc))
        return _not_spooled(
            agent_id,
            owner,
            why,
            f"the write spool cannot store it ({exc})",
            "spool_unavailable",
            30,
        )
    finally:
        note_damage(app)
    summary = await refresh_summary(app)
    app[REPLAY_WAKE].set()
    log.info("write_spooled", agent_id=agent_id, owner=owner["node_id"], seq=seq, why=why)
    return web.json_response(
        {
            "spooled": True,
            "idempotencyKey": key,
            "agent": agent_id,
            "owner": dict(owner),
            "reason": why,
            "spool": {"depth": summary.depth},
            "message": "accepted and stored durably; it will be written to the owner, in "
            "order, as soon as the owner is reachable (retry-safe with this idempotencyKey)",
        },
        status=202,
        headers={"x-signet-cluster-spooled": "1"},
    )


def _not_spooled(
    agent_id: str, owner: Mapping[str, str], why: str, reason: str, code: str, retry_after: int
) -> web.Response:
    response = web.json_response(
        {
            "error": f"agent {agent_id!r}'s owner {owner['node_id']} cannot take writes now "
            f"({why}) and {reason}; the write was not accepted",
            "code": code,
            "agent": agent_id,
            "owner": dict(owner),
        },
        status=503,
    )
    response.headers["Retry-After"] = str(retry_after)
    return response


# Outcomes of one delivery attempt.
DELIVERED, RETRY, REFUSED = "delivered", "retry", "refused"


async def deliver(app: web.Application, entry: SpoolEntry) -> tuple[str, int, str]:
    """Send one spooled write to the agent's current owner."""
    from sidecar.memory.routing import (
        decide,  # routing imports this module's siblings; keep import local
    )

    target = decide(app, entry.agent_id)
    if target.kind == "unreachable":
        return RETRY, 0, f"owner {target.node_id} is {target.owner_state}"
    if target.kind == "local" and not app[keys.WATCHER].snapshot.healthy:
        return RETRY, 0, "local daemon is not healthy"
    headers = {**entry.headers, REPLAY_HEADER: "1", "x-signet-cluster-agent": entry.agent_id}
    try:
        raw = await app[keys.PEERS].forward(
            entry.method,
            target.url,
            entry.path,
            headers=headers,
            body=entry.body,
            timeout=app[keys.SETTINGS].forward_timeout,
        )
    except ForwardFailed as exc:
        return RETRY, 0, exc.message
    if 200 <= raw.status < 300:
        return DELIVERED, raw.status, ""
    text = raw.body[:300].decode("utf-8", "replace")
    # 421: the sender's table was stale (ownership moving); 408/429/5xx: try again later.
    if raw.status in (408, 421, 425, 429) or raw.status >= 500 or _cluster_auth_refusal(raw):
        return RETRY, raw.status, text
    return REFUSED, raw.status, text


def _cluster_auth_refusal(raw: RawResponse) -> bool:
    """The owner's *sidecar* refused our signature (a key not installed there yet during a
    rotation, clock skew, no key): a cluster problem that an operator fixes, not a verdict
    on the write, which must then stay in the spool. The daemon's own 401 (an expired
    bearer token) carries `WWW-Authenticate: Bearer` instead."""
    return raw.status == 401 and raw.headers.get("WWW-Authenticate", "").startswith(
        CLUSTER_AUTH_SCHEME
    )


async def replay_agent(app: web.Application, agent_id: str) -> int:
    """Replay one agent's writes in order until one cannot be delivered; returns how many went."""
    spool = app[SPOOL]
    sent = 0
    while True:
        entry = await asyncio.to_thread(spool.head, agent_id)
        if entry is None:
            return sent
        try:
            outcome, status, error = await deliver(app, entry)
        except Exception as exc:  # one entry that cannot be sent must not stop the others
            log.exception("spool_replay_crashed", agent_id=agent_id, seq=entry.seq)
            outcome, status, error = RETRY, 0, f"replay failed: {type(exc).__name__}: {exc}"
        if outcome == DELIVERED:
            await asyncio.to_thread(spool.done, entry.seq)
            sent += 1
            continue
        if outcome == REFUSED:
            await asyncio.to_thread(spool.dead_letter, entry, status, error)
            log.error(
                "spooled_write_refused",
                agent_id=agent_id,
                seq=entry.seq,
                status=status,
                error=error,
            )
            continue
        await asyncio.to_thread(spool.failed, entry.seq, error)
        return sent


async def replay_round(app: web.Application) -> int:
    agents = await asyncio.to_thread(app[SPOOL].agents)
    # Every agent's replay ends within this round (even when one fails): a replay left
    # running into the next round would send that agent's writes twice, out of order.
    counts = await asyncio.gather(*(replay_agent(app, a) for a in agents), return_exceptions=True)
    total = 0
    for agent, count in zip(agents, counts, strict=True):
        if isinstance(count, BaseException):
            log.error("spool_replay_failed", agent_id=agent, error=repr(count))
        else:
            total += count
    if agents:
        await refresh_summary(app)
    if total:
        remaining = (await asyncio.to_thread(app[SPOOL].stats)).depth
        log.info("spool_replayed", delivered=total, remaining=remaining)
    return total


REPLAY_WAKE = web.AppKey("replay_wake", asyncio.Event)


async def replay_loop(app: web.Application) -> None:
    interval = app[keys.SETTINGS].heartbeat_interval
    wake = app[REPLAY_WAKE]
    while True:
        with suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=interval)
        wake.clear()
        try:
            await asyncio.to_thread(app[SPOOL].maintain)
            await replay_round(app)
        except Exception as exc:
            log.error("spool_replay_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            note_damage(app)


async def handoff_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    spool = await asyncio.to_thread(
        Spool,
        settings.state_path / "spool.db",
        max_bytes=settings.spool_max_bytes,
        max_age=settings.spool_max_age,
    )
    app[SPOOL] = spool
    app[DAMAGE_LOGGED] = [0]
    note_damage(app)
    if spool.disk_full is not None:
        log.error("spool_disk_full", reason=spool.disk_full, path=str(spool.path))
    app[SPOOL_SUMMARY] = []
    await refresh_summary(app)

    async def probe() -> tuple[int, float | None]:
        stats = await asyncio.to_thread(spool.stats)
        return stats.depth, stats.oldest_age_s

    app[keys.METRICS].spool_probe = probe
    app[REPLAY_WAKE] = asyncio.Event()
    task = asyncio.create_task(replay_loop(app), name="spool-replay")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    await asyncio.to_thread(spool.close)
