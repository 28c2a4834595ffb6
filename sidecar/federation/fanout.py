"""Federated reads: recall and both search routes across the cluster, by the reader's policy.

- `isolated` reader (or a read with nothing to fan out): only the owner answers; this is
  plain routing, and the owner's response is relayed unchanged.
- `shared` / `group` reader: the owner answers as the reader while every other node
  contributes (in parallel, one connection pool) the global memories the reader may see
  (`sidecar/federation/contribute.py`); the lists are merged (`signet_cluster.merge`).

Deadlines fit the daemons (`sidecar/federation/legs.py`): each contributor is waited for
its learned budget (recent p99 x `fanout_headroom` + `fanout_grace`, at most
`fanout_ceiling`) and at least as long as the owner's own leg took plus `fanout_grace`.
Nodes down in the registry or with an unhealthy daemon are skipped at once, a refused
connection fails at once, and a node that keeps failing (errors, no answer within the
ceiling; never mere slowness) is skipped for a while by its circuit breaker, then probed.
The owner is waited for like any routed request (its answer *is* the answer). Degradation is explicit: the response
gets a top-level `cluster` block and an `x-signet-cluster-missing: <missing>/<total>` header;
a reader that sends `x-signet-cluster-partial: deny` (or `?partial=deny`) gets a 503 instead
of an incomplete answer.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import attrs
from aiohttp import web

from sidecar import keys
from sidecar.federation.contribute import RECALL_FIELDS, Reader
from sidecar.federation.legs import (
    LegResult,
    await_contributions,
    cluster_block,
    contributors,
    count_fanout,
    start_contributions,
    tag_hits,
)
from sidecar.membership.peers import ForwardFailed, RawResponse
from sidecar.memory.forward import SERVED_BY_HEADER, DaemonError, to_response
from sidecar.memory.owner_checks import daemon_error
from sidecar.memory.proxy import forward_to_owner, serve_local
from sidecar.memory.routing import Target, current_view, retry_after
from sidecar.security.auth import token_unverified
from signet_cluster.daemon.adapt import search_as_recall_body
from signet_cluster.daemon.agent_resolution import RouteKind
from signet_cluster.daemon.visibility import contributing_agents
from signet_cluster.errors import ValidationFailed
from signet_cluster.merge import Leg, merge

PARTIAL_HEADER = "x-signet-cluster-partial"
MISSING_HEADER = "x-signet-cluster-missing"


def _limit(value: object, default: int) -> int:
    """The daemons' reading of a recall limit: a number clamped to 1..50 (so "inf" is 50),
    the default when it is not one."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    except OverflowError:  # an integer of hundreds of digits: not a limit anyone means
        raise ValidationFailed([f"limit: {str(value)[:20]}… is not a usable number"]) from None
    if math.isnan(number):
        return default
    return int(max(1.0, min(50.0, number)))


EXPAND_PATH = "/api/knowledge/expand"
# Knowledge expand lists every memory that mentions the entity; merged lists are not cut.
_NO_LIMIT = 10_000


@attrs.frozen
class Fanout:
    """What other nodes are asked for one read, and where the hits go in the response."""

    ask: dict[str, Any]  # {"recall": {...}} or {"expand": {...}} (ContributeRequest fields)
    limit: int
    key: str  # "results" (recall, search) or "memories" (knowledge expand)


def federates(kind: RouteKind, path: str) -> bool:
    """Reads answered with a list of memories: recall, both searches, knowledge expand."""
    return kind.is_list_read or (kind is RouteKind.EXPAND and path == EXPAND_PATH)


def list_key(kind: RouteKind) -> str:
    return "memories" if kind is RouteKind.EXPAND else "results"


def contribution_query(
    kind: RouteKind, request: web.Request, parsed: dict[str, Any] | None
) -> Fanout | None:
    """What other nodes run for this read; None when there is nothing to fan out (no query:
    the daemon answers with its own error or a listing)."""
    if kind is RouteKind.EXPAND:
        entity = parsed.get("entity") if parsed is not None else None
        if parsed is None or not isinstance(entity, str) or not entity.strip():
            return None
        ask = {k: parsed[k] for k in ("entity", "aspect", "maxTokens") if k in parsed}
        return Fanout({"expand": ask}, _NO_LIMIT, "memories")
    if kind is RouteKind.RECALL:
        query = parsed.get("query") if parsed is not None else None
        if parsed is None or not isinstance(query, str) or not query.strip():
            return None
        recall = {k: parsed[k] for k in RECALL_FIELDS if k in parsed}
        return Fanout({"recall": recall}, _limit(parsed.get("limit"), 10), "results")
    params = request.query
    q = params.get("q", "").strip()
    if not q or (kind is RouteKind.LEGACY_SEARCH and "distinct" in params):
        return None
    recall = search_as_recall_body(params) | {"query": q}
    limit = _limit(params.get("limit"), 20 if kind is RouteKind.LEGACY_SEARCH else 10)
    return Fanout({"recall": recall}, limit, "results")


def denies_partial(request: web.Request) -> bool:
    value = request.headers.get(PARTIAL_HEADER) or request.query.get("partial") or ""
    return value.strip().lower() == "deny"


def _json_response(body: dict[str, Any], status: int, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode(),
        content_type="application/json",
        headers=headers,
    )


async def federated_read(
    request: web.Request,
    kind: RouteKind,
    target: Target,
    body: bytes,
    parsed: dict[str, Any] | None,
) -> web.StreamResponse:
    app = request.app
    started = time.perf_counter()
    # Cheapest checks first: most reads on a one-node cluster or by isolated readers end here.
    view = current_view(app) if target.read_policy in ("shared", "group") else None
    others = contributors(app, view, target.node_id) if view is not None else []
    spec = contribution_query(kind, request, parsed) if others else None
    if spec is None:
        return await _routed_read(request, kind, target, body, parsed, started)
    reader = Reader(
        agent_id=target.agent_id,
        read_policy=target.read_policy,
        policy_group=target.policy_group,
        node_id=app[keys.IDENTITY].node_id,
    )
    owner_task = asyncio.create_task(_owner_leg(request, kind, target, body, parsed))
    legs, pending = start_contributions(app, others, reader, spec.ask, min(spec.limit, 50))
    await await_contributions(pending, owner_task, app[keys.SETTINGS].fanout_grace, started)
    owner_leg, raw, answer = await owner_task
    if raw is not None and answer is None:
        return to_response(raw, target.node_id)  # not a result list: the owner's own answer
    if token_unverified(request) and (answer is None or owner_leg.status != "ok"):
        # Only the owner's daemon can judge a bearer token; without its 200 the other
        # nodes' memories must not be handed to this caller.
        return _unverified(app, target, owner_leg)
    response = _merged(request, target, owner_leg, answer, legs, spec, started, parsed)
    count_fanout(app, [owner_leg, *legs], response.status, started)
    return response


async def _owner_leg(
    request: web.Request,
    kind: RouteKind,
    target: Target,
    body: bytes,
    parsed: dict[str, Any] | None,
) -> tuple[LegResult, RawResponse | None, dict[str, Any] | None]:
    """The owner's answer as the reader: (leg, raw answer, parsed answer with tagged hits).
    The parsed answer is None when the owner did not answer with a result list (an error
    of the request itself, relayed unchanged), the raw one when it did not answer at all."""
    app = request.app
    view = current_view(app)
    peer = view.peer(target.node_id) if view is not None else None
    roster = {
        a.id: a for a in (peer.agents if peer is not None else app[keys.WATCHER].snapshot.agents)
    }
    readable = contributing_agents(roster, target.read_policy, target.policy_group)
    leg = LegResult(
        node_id=target.node_id, role="owner", agents=sorted({target.agent_id, *readable})
    )
    if target.kind == "unreachable":
        leg.status, leg.error = "down", f"owner is {target.owner_state} in the registry"
        return leg, None, None
    started = time.perf_counter()
    try:
        if target.kind == "local":
            raw = await serve_local(request, kind, target.agent_id, body, parsed, explicit=False)
        else:
            raw = await forward_to_owner(request, target, body, tag=True)
    except (DaemonError, ForwardFailed) as exc:
        leg.status = "timeout" if exc.timed_out else "error"
        leg.error = exc.message
        return leg, None, None
    finally:
        leg.took_ms = round((time.perf_counter() - started) * 1000, 3)
    try:
        answer = json.loads(raw.body) if raw.status == 200 else None
    except ValueError:
        answer = None
    key = list_key(kind)
    if not isinstance(answer, dict) or not isinstance(answer.get(key), list):
        return leg, raw, None
    if target.kind == "local":
        await tag_hits(app, answer, key)
    leg.hits = [h for h in answer[key] if isinstance(h, dict)]
    return leg, raw, answer


def _unverified(app: web.Application, target: Target, owner: LegResult) -> web.Response:
    response = daemon_error(
        503,
        f"this request is authorised only by a bearer token, which the owner of agent "
        f"{target.agent_id!r} (node {target.node_id}) must check, and that node did not answer "
        f"({owner.error or owner.status}); other nodes' memories are not served unchecked",
        code="token_unverified",
        agent=target.agent_id,
        owner={"node_id": target.node_id, "url": target.url, "state": target.owner_state},
    )
    response.headers["Retry-After"] = retry_after(app)
    return response


def _merged(
    request: web.Request,
    target: Target,
    owner: LegResult,
    answer: dict[str, Any] | None,
    contributions: list[LegResult],
    spec: Fanout,
    started: float,
    parsed: dict[str, Any] | None,
) -> web.StreamResponse:
    app = request.app
    legs = [owner, *contributions]
    hits = merge(
        [Leg(leg.node_id, leg.role, leg.hits) for leg in legs if leg.status == "ok"], spec.limit
    )
    block = cluster_block(target, legs, started)
    missing = sum(1 for leg in legs if leg.status != "ok")
    headers = {MISSING_HEADER: f"{missing}/{len(legs)}"}
    if missing and denies_partial(request):
        return _denied(app, block, headers)
    if answer is not None and owner.status == "ok":
        body = answer
        headers[SERVED_BY_HEADER] = target.node_id
    else:
        # The owner is missing: what the others hold, in the response's own shape.
        body = _empty_answer(spec.key, request, parsed)
        headers[SERVED_BY_HEADER] = app[keys.IDENTITY].node_id
    body[spec.key] = hits
    if spec.key == "memories":
        body["memoryCount"] = len(hits)
    meta = body.get("meta")
    if isinstance(meta, dict) and "totalReturned" in meta:
        meta["totalReturned"] = len(hits)
        meta["noHits"] = not hits
    body["cluster"] = block
    return _json_response(body, 200, headers)


def _empty_answer(key: str, request: web.Request, parsed: dict[str, Any] | None) -> dict[str, Any]:
    """The body a read gets when its owner is missing (filled with the others' hits)."""
    if key == "memories":
        return {"entity": None, "memoryCount": 0, "memories": []}
    query = parsed.get("query") if parsed is not None else request.query.get("q")
    return {"results": [], "query": query}


def _denied(app: web.Application, block: dict[str, Any], headers: dict[str, str]) -> web.Response:
    headers = {**headers, "Retry-After": retry_after(app)}
    return _json_response(
        {
            "error": "incomplete answer refused (partial=deny): "
            + ", ".join(
                f"{n['node_id']} {n['status']}" for n in block["nodes"] if n["status"] != "ok"
            ),
            "code": "partial_denied",
            "cluster": block,
        },
        503,
        headers,
    )


async def _routed_read(
    request: web.Request,
    kind: RouteKind,
    target: Target,
    body: bytes,
    parsed: dict[str, Any] | None,
    started: float,
) -> web.StreamResponse:
    """No fan-out: the owner alone answers, relayed unchanged; when it cannot, an empty
    partial answer naming it."""
    app = request.app
    if target.kind == "local":
        raw = await serve_local(request, kind, target.agent_id, body, parsed, explicit=False)
        return to_response(raw, target.node_id, ((MISSING_HEADER, "0/1"),))
    leg = LegResult(node_id=target.node_id, role="owner", agents=[target.agent_id])
    if target.kind == "remote":
        try:
            raw = await forward_to_owner(request, target, body)
        except ForwardFailed as exc:
            leg.status = "timeout" if exc.timed_out else "error"
            leg.error = exc.message
        else:
            return to_response(raw, target.node_id, ((MISSING_HEADER, "0/1"),))
    else:
        leg.status, leg.error = "down", f"owner is {target.owner_state} in the registry"
    block = cluster_block(target, [leg], started)
    headers = {MISSING_HEADER: "1/1"}
    if denies_partial(request):
        return _denied(app, block, headers)
    headers[SERVED_BY_HEADER] = app[keys.IDENTITY].node_id
    empty = _empty_answer(list_key(kind), request, parsed) | {"cluster": block}
    return _json_response(empty, 200, headers)
