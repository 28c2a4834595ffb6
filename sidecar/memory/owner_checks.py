"""Writes that touch existing memories by id (modify, forget, PATCH/DELETE by id, recover)
only touch the named agent's own memories.

TS daemons do not scope these routes by agent at all (contract §3): any id can be modified
or forgotten. Before such a request naming a non-default agent reaches the daemon, the
sidecar reads the owners of the ids from the daemon's `memories.db` (read-only) and refuses
the whole request when any id belongs to another agent, so nothing is half-applied. Ids the
database does not know are left to the daemon (it answers `not_found`). When ownership
cannot be read the request is refused (fail closed), and so is a modify or forget body the
sidecar cannot read: a real 0.145.7 daemon decodes any bytes as UTF-8 (an invalid byte
becomes U+FFFD, whatever `charset` the request names) and applies the request, so a body
the check passed over would reach it unchecked.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from signet_cluster.daemon.agent_resolution import RouteKind
from signet_cluster.daemon.ownership import MemoryOwnership, OwnershipUnavailable


def daemon_error(status: int, message: str, **extra: Any) -> web.Response:
    """The daemon's own error shape (`{"error": ...}`), with the sidecar's extra fields."""
    return web.json_response({"error": message, **extra}, status=status)


def _ids(kind: RouteKind, body: dict[str, Any] | None, match_id: str | None) -> list[str] | None:
    """The memory ids a request touches; None when it selects by query/filters instead."""
    if kind in (RouteKind.PATCH_BY_ID, RouteKind.DELETE_BY_ID, RouteKind.RECOVER):
        return [match_id] if match_id else []
    if body is None:
        return []
    if kind is RouteKind.MODIFY:
        patches = body.get("patches")
        if not isinstance(patches, list):
            return []
        return [p["id"] for p in patches if isinstance(p, dict) and isinstance(p.get("id"), str)]
    ids = body.get("ids")
    if isinstance(ids, list) and ids:
        return [i for i in ids if isinstance(i, str)]
    return None


# Routes whose body names the memories they touch: the body must be read to check them.
_BODY_NAMES_IDS = (RouteKind.MODIFY, RouteKind.FORGET)


def read_checked_body(raw: bytes) -> dict[str, Any] | None:
    """The body of a modify or forget as the daemon will read it: strict UTF-8 JSON (never
    the UTF-16/32 guess `json.loads(bytes)` makes), a JSON object; None when it is not."""
    try:
        parsed = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return parsed if isinstance(parsed, dict) else None


def refuse_unreadable(kind: RouteKind, raw: bytes) -> web.Response | None:
    """400 for a modify or forget whose body is not strict UTF-8 JSON: neither the agent it
    names nor the ids it touches can be checked, and the daemon would still act on it. Runs
    before routing trusts the agent read from that body (it would be `default`)."""
    if kind not in _BODY_NAMES_IDS or not raw.strip() or read_checked_body(raw) is not None:
        return None
    return daemon_error(
        400,
        f"the {kind.value} body is not a JSON object in UTF-8, so the sidecar cannot check "
        "which agent and memories it names; nothing was changed",
        code="body_unreadable",
    )


async def refuse_foreign(
    ownership: MemoryOwnership,
    kind: RouteKind,
    agent: str,
    flavor: str,
    raw: bytes,
    match_id: str | None,
    node_id: str,
) -> web.Response | None:
    """A refusal when the request would touch memories `agent` does not own (or its body
    cannot be read to tell: refuse_unreadable), else None."""
    unreadable = refuse_unreadable(kind, raw)
    if unreadable is not None:
        return unreadable
    body = read_checked_body(raw) if kind in _BODY_NAMES_IDS and raw.strip() else None
    ids = _ids(kind, body, match_id)
    if ids is None:
        if flavor == "rust":
            return None  # Rust scopes forget-by-query to the body's agent itself
        return daemon_error(
            400,
            f"forget for agent {agent!r} must list `ids`: this node's daemon ({flavor}) does "
            "not scope forget-by-query to an agent, so the sidecar only forgets ids it can "
            "check",
            code="agent_scope_requires_ids",
        )
    if not ids:
        return None
    try:
        owners = await asyncio.to_thread(ownership.lookup, ids)
    except OwnershipUnavailable as exc:
        return daemon_error(
            503,
            f"cannot check which agent owns these memories, so nothing was changed: {exc}",
            code="ownership_unavailable",
        )
    foreign = sorted({i for i, owner in owners.items() if owner.agent_id != agent})
    if not foreign:
        return None
    return daemon_error(
        403,
        f"memories {', '.join(foreign)} do not belong to agent {agent!r}; nothing was changed",
        code="not_agent_owner",
        agent=agent,
        ids=foreign,
        node=node_id,
    )
