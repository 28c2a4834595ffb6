"""A node's contribution to another node's federated read: `POST /api/cluster/contribute`.

Internal and signed like every sidecar-to-sidecar call (it is reached through PeerClient).
The asking node names the reader (agent, read policy, group) and the recall; this node asks
its own daemon (as an agent that may read every global memory here, over-fetching), then
keeps only what the reader may see, using the daemon's `memories.db` (read-only) for each
hit's `agent_id` and `visibility` (`signet_cluster.daemon.visibility`). When that database cannot
be read the node contributes nothing and answers 503 (fail closed), never unfiltered hits.

Request:  {"reader": {"agent_id", "read_policy": "shared"|"group", "policy_group"?,
           "node_id"?}, "recall": {"query", ...recall filters} | "expand": {"entity",
           "aspect"?, "maxTokens"?}, "limit": 1-50, "timeout_ms"}
Response: {"node_id", "read_as", "hits": [recall hits (or expand's {id, content}) +
           "cluster": {"node_id", "agent_id"}], "fetched", "kept", "took_ms"}
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import attrs
from aiohttp import web
from multidict import CIMultiDict

from sidecar import keys
from sidecar.bodies import read_json
from sidecar.keys import PROXY
from sidecar.memory.forward import DaemonError
from signet_cluster.converter import structure
from signet_cluster.daemon.adapt import plan_request
from signet_cluster.daemon.agent_resolution import DEFAULT_AGENT, RouteKind
from signet_cluster.daemon.ownership import MemoryOwner, MemoryOwnership, OwnershipUnavailable
from signet_cluster.daemon.probe import DaemonSnapshot
from signet_cluster.daemon.visibility import live_policies, may_contribute

routes = web.RouteTableDef()
CONTRIBUTE_PATH = "/api/cluster/contribute"
MAX_LIMIT = 50  # the daemons clamp recall limits to 1..50
# Filters a contributing daemon applies exactly as the owner does.
RECALL_FIELDS = (
    "query",
    "keywordQuery",
    "type",
    "tags",
    "who",
    "pinned",
    "importance_min",
    "importanceMin",
    "since",
    "until",
    "project",
    "scope",
    "time",
)


def _policy(_inst: object, _attr: object, value: str) -> None:
    if value not in ("shared", "group"):
        raise ValueError("read_policy must be shared or group (isolated readers never fan out)")


@attrs.frozen(kw_only=True)
class Reader:
    agent_id: str = attrs.field(validator=attrs.validators.min_len(1))
    read_policy: str = attrs.field(validator=_policy)
    policy_group: str | None = None
    node_id: str | None = None


def _recall(_inst: object, _attr: object, value: dict[str, Any] | None) -> None:
    query = value.get("query") if value is not None else ""
    if value is not None and (not isinstance(query, str) or not query.strip()):
        raise ValueError("recall.query must be a non-empty string")


def _expand(inst: ContributeRequest, _attr: object, value: dict[str, Any] | None) -> None:
    if (value is None) == (inst.recall is None):
        raise ValueError("give exactly one of recall and expand")
    entity = value.get("entity") if value is not None else ""
    if value is not None and (not isinstance(entity, str) or not entity.strip()):
        raise ValueError("expand.entity must be a non-empty string")


@attrs.frozen(kw_only=True)
class ContributeRequest:
    reader: Reader
    recall: dict[str, Any] | None = attrs.field(default=None, validator=_recall)
    # Knowledge expand: {"entity", "aspect"?, "maxTokens"?}; the hits are its `memories`.
    expand: dict[str, Any] | None = attrs.field(default=None, validator=_expand)
    limit: int = attrs.field(
        default=10, validator=[attrs.validators.ge(1), attrs.validators.le(MAX_LIMIT)]
    )
    timeout_ms: float = attrs.field(
        default=30.0, validator=[attrs.validators.gt(0), attrs.validators.le(60_000)]
    )


class ContributionFailed(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def overfetch(limit: int) -> int:
    """How many hits to ask the daemon for: filtering drops some (private, isolated)."""
    return min(MAX_LIMIT, max(limit * 2, limit + 5))


def read_as(snapshot: DaemonSnapshot, reader: Reader) -> str | None:
    """An agent whose daemon read returns every global memory here (`shared`), else, for a
    group reader, a member of the group; None when this node has neither."""
    default = snapshot.agent(DEFAULT_AGENT)
    if default is not None and default.read_policy == "shared":
        return DEFAULT_AGENT
    for agent in snapshot.agents:
        if agent.read_policy == "shared":
            return agent.id
    if reader.read_policy == "group":
        for agent in snapshot.agents:
            if agent.read_policy == "group" and agent.policy_group == reader.policy_group:
                return agent.id
    return None


def _owners_and_policies(
    ownership: MemoryOwnership, ids: list[str]
) -> tuple[dict[str, MemoryOwner], dict[str, tuple[object, object]] | None]:
    """The hits' owners, and those agents' policies in the daemon's table as of now."""
    owners = ownership.lookup(ids)
    return owners, ownership.policies(owner.agent_id for owner in owners.values())


async def compute(app: web.Application, request: ContributeRequest) -> dict[str, Any]:
    """This node's contribution; raises ContributionFailed (nothing is contributed then)."""
    started = time.perf_counter()
    state = app[PROXY]
    snapshot = app[keys.WATCHER].snapshot
    node_id = app[keys.IDENTITY].node_id
    agent = read_as(snapshot, request.reader)
    if agent is None:
        raise ContributionFailed(
            409, f"node {node_id} has no shared agent to read its global memories as", "no_reader"
        )
    if request.expand is not None:
        path, key, kind = "/api/knowledge/expand", "memories", RouteKind.EXPAND
        body = {k: v for k, v in request.expand.items() if k in ("entity", "aspect", "maxTokens")}
    else:
        assert request.recall is not None
        path, key, kind = "/api/memory/recall", "results", RouteKind.RECALL
        body = {k: v for k, v in request.recall.items() if k in RECALL_FIELDS}
        body["limit"] = overfetch(request.limit)
    plan = plan_request(
        kind,
        snapshot.flavor,
        agent,
        method="POST",
        path=path,
        query=[],
        headers={},
        body=body | {"agentId": agent},
        explicit=True,
    )
    headers: CIMultiDict[str] = CIMultiDict({"Content-Type": "application/json"})
    try:
        raw = await state.daemon.send(
            "POST", path, headers, json.dumps(plan.body).encode(), timeout=request.timeout_ms / 1000
        )
    except DaemonError as exc:
        raise ContributionFailed(
            504 if exc.timed_out else 503, exc.message, "daemon_unavailable"
        ) from None
    try:
        answer = json.loads(raw.body) if raw.status == 200 else None
    except ValueError:
        answer = None
    hits = answer.get(key) if isinstance(answer, dict) else None
    if raw.status == 404 and request.expand is not None:
        hits = []  # this node does not know the entity: nothing to contribute
    if not isinstance(hits, list):
        text = raw.body[:200].decode("utf-8", "replace")
        raise ContributionFailed(
            502, f"daemon {path} answered {raw.status}: {text}", "daemon_error"
        )
    ids = [h["id"] for h in hits if isinstance(h, dict) and isinstance(h.get("id"), str)]
    try:
        owners, rows = await asyncio.to_thread(_owners_and_policies, state.ownership, ids)
    except OwnershipUnavailable as exc:
        raise ContributionFailed(
            503,
            f"memory ownership unreadable, contributing nothing: {exc}",
            "ownership_unavailable",
        ) from None
    roster = {a.id: a for a in snapshot.agents}
    live = live_policies(rows)
    kept: list[dict[str, Any]] = []
    reader = request.reader
    for hit in hits:
        if not isinstance(hit, dict) or not isinstance(hit.get("id"), str):
            continue
        owner = owners.get(hit["id"])
        if not may_contribute(owner, roster, reader.read_policy, reader.policy_group, live):
            continue
        assert owner is not None
        kept.append(hit | {"cluster": {"node_id": node_id, "agent_id": owner.agent_id}})
        if len(kept) >= request.limit:
            break
    return {
        "node_id": node_id,
        "read_as": agent,
        "hits": kept,
        "fetched": len(hits),
        "kept": len(kept),
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
    }


@routes.post(CONTRIBUTE_PATH)
async def contribute(request: web.Request) -> web.Response:
    message = structure(await read_json(request), ContributeRequest)
    try:
        body = await compute(request.app, message)
    except ContributionFailed as exc:
        return web.json_response(
            {"error": exc.message, "code": exc.code, "node_id": request.app[keys.IDENTITY].node_id},
            status=exc.status,
        )
    return web.json_response(body)
