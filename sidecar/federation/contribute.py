"""A node's contribution to another node's federated read: `POST /api/cluster/contribute`.

Internal and signed like every sidecar-to-sidecar call (it is reached through PeerClient).
The asking node names the reader (agent, read policy, group) and the recall; this node asks
its own daemon (as a member of the reader's group where it has one, else as an agent that
may read every global memory here), growing the window until `limit` hits the reader may
see are kept or the daemon has no more, and keeps only what the reader may see, using the daemon's `memories.db` (read-only) for each
hit's `agent_id` and `visibility` (`signet_cluster.daemon.visibility`). When that database cannot
be read the node contributes nothing and answers 503 (fail closed), never unfiltered hits.

Request:  {"reader": {"agent_id", "read_policy": "shared"|"group", "policy_group"?,
           "node_id"?}, "recall": {"query", ...recall filters} | "expand": {"entity",
           "aspect"?, "maxTokens"?}, "limit": 1-50, "timeout_ms"}
Response: {"node_id", "read_as", "hits": [recall hits (or expand's {id, content}) +
           "cluster": {"node_id", "agent_id"}], "fetched", "kept", "reads", "took_ms",
           "note"? (when lower-ranked readable hits may be missing)}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import deque
from datetime import datetime, timedelta
from pathlib import Path
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
from signet_cluster.daemon.roster import MANIFEST_NAMES, load_manifest
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
    """How many hits to ask the daemon for first: filtering drops some (private, isolated)."""
    return min(MAX_LIMIT, max(limit * 2, limit + 5))


# workspace -> (agent.yaml's mtime and size, its window cap): parsing a real agent.yaml costs
# milliseconds of CPU, too much for every contribution.
_caps: dict[Path, tuple[tuple[int, int] | None, int]] = {}


def _manifest_stamp(workspace: Path) -> tuple[int, int] | None:
    for name in MANIFEST_NAMES:
        with contextlib.suppress(OSError):
            stat = (workspace / name).stat()
            return stat.st_mtime_ns, stat.st_size
    return None


def window_cap(workspace: Path) -> int:
    """The most hits one recall can return whatever its limit: TS daemons rank at most
    `search.top_k` keyword candidates (default 20; the daemon reads `top_k` only beside
    `search.alpha` in agent.yaml), and every daemon clamps `limit` to 50. Re-read when
    agent.yaml changes."""
    stamp = _manifest_stamp(workspace)
    cached = _caps.get(workspace)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    search = load_manifest(workspace).get("search")
    top_k = 20
    if isinstance(search, dict) and search.get("alpha") is not None:
        with contextlib.suppress(TypeError, ValueError):
            top_k = int(str(search.get("top_k", 20)))
    cap = max(1, min(MAX_LIMIT, top_k))
    _caps[workspace] = (stamp, cap)
    return cap


def just_after(stamp: str) -> str | None:
    """The next representable `created_at` after `stamp`, in the daemon's own format (TS:
    milliseconds and `Z`; Rust: microseconds and `+00:00`); None when it is neither."""
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", stamp):
        later = moment + timedelta(milliseconds=1)
        return later.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", stamp):
        return (moment + timedelta(microseconds=1)).isoformat(timespec="microseconds")
    return None


Span = tuple[str | None, str | None]  # (since, until), both inclusive, as the daemons filter


def split_span(span: Span, hits: list[dict[str, Any]]) -> list[Span] | None:
    """Two narrower spans that together cover `span`, cut inside the hits' creation times,
    so each holds fewer of them; None when they cannot be told apart by time."""
    stamps = sorted({h["created_at"] for h in hits if isinstance(h.get("created_at"), str)})
    if len(stamps) < 2:
        return None
    cut = stamps[len(stamps) // 2 - 1]
    after = just_after(cut)
    if after is None:
        return None
    return [(span[0], cut), (after, span[1])]


def read_as(snapshot: DaemonSnapshot, reader: Reader) -> str | None:
    """The agent this node's daemon reads as for `reader`, chosen for the narrowest window
    that still holds everything the reader may see here: for a group reader, a member of
    its group (its window is the group's global memories and its own); otherwise (or when
    the node has no member of that group) a `shared` agent, whose window is every global
    memory. None when the node has neither."""
    if reader.read_policy == "group" and reader.policy_group is not None:
        for agent in snapshot.agents:
            if agent.read_policy == "group" and agent.policy_group == reader.policy_group:
                return agent.id
    default = snapshot.agent(DEFAULT_AGENT)
    if default is not None and default.read_policy == "shared":
        return DEFAULT_AGENT
    for agent in snapshot.agents:
        if agent.read_policy == "shared":
            return agent.id
    return None


def _owners_and_policies(
    ownership: MemoryOwnership, ids: list[str]
) -> tuple[dict[str, MemoryOwner], dict[str, tuple[object, object]] | None]:
    """The hits' owners, and those agents' policies in the daemon's table as of now."""
    owners = ownership.lookup(ids)
    return owners, ownership.policies(owner.agent_id for owner in owners.values())


@attrs.define
class _Window:
    """One read of the daemon: what it returned and what of it the reader may see."""

    asked: int
    hits: list[dict[str, Any]]
    kept: list[dict[str, Any]]


async def _read_window(
    app: web.Application,
    request: ContributeRequest,
    agent: str,
    asked: int,
    timeout: float,
    span: Span = (None, None),
) -> _Window:
    state = app[PROXY]
    snapshot = app[keys.WATCHER].snapshot
    node_id = app[keys.IDENTITY].node_id
    if request.expand is not None:
        path, key, kind = "/api/knowledge/expand", "memories", RouteKind.EXPAND
        body = {k: v for k, v in request.expand.items() if k in ("entity", "aspect", "maxTokens")}
    else:
        assert request.recall is not None
        path, key, kind = "/api/memory/recall", "results", RouteKind.RECALL
        body = {k: v for k, v in request.recall.items() if k in RECALL_FIELDS}
        body["limit"] = asked
        for name, value in zip(("since", "until"), span, strict=True):
            if value is not None:
                body[name] = value
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
            "POST", path, headers, json.dumps(plan.body).encode(), timeout=timeout
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
    hits = [h for h in hits if isinstance(h, dict) and isinstance(h.get("id"), str)]
    try:
        owners, rows = await asyncio.to_thread(
            _owners_and_policies, state.ownership, [h["id"] for h in hits]
        )
    except OwnershipUnavailable as exc:
        raise ContributionFailed(
            503,
            f"memory ownership unreadable, contributing nothing: {exc}",
            "ownership_unavailable",
        ) from None
    roster = {a.id: a for a in snapshot.agents}
    live = live_policies(rows)
    reader = request.reader
    kept: list[dict[str, Any]] = []
    for hit in hits:
        owner = owners.get(hit["id"])
        if not may_contribute(owner, roster, reader.read_policy, reader.policy_group, live):
            continue
        assert owner is not None
        kept.append(hit | {"cluster": {"node_id": node_id, "agent_id": owner.agent_id}})
    return _Window(asked=asked, hits=hits, kept=kept)


MAX_READS = 12  # daemon reads one contribution may take (each within the deadline)


async def compute(app: web.Application, request: ContributeRequest) -> dict[str, Any]:
    """This node's contribution; raises ContributionFailed (nothing is contributed then).

    The daemon ranks what its read-as agent may see, and some of that the reader may not
    (isolated agents' global memories, the read-as agent's private ones, other groups'), so
    one window could hold none of the reader's hits. A recall's window is at most the
    daemon's cap (`window_cap`: 20 on a default TS daemon, whatever the limit), so asking
    for more is not enough: while a full window holds fewer than `limit` readable hits, the
    time span is split in two at the window's own creation times and each half is read
    (the daemons filter on `since`/`until`), until `limit` readable hits are kept, the
    daemon has no more, or the deadline or `MAX_READS` is reached (then the answer's
    `note` says lower-ranked hits may be missing)."""
    started = time.perf_counter()
    node_id = app[keys.IDENTITY].node_id
    agent = read_as(app[keys.WATCHER].snapshot, request.reader)
    if agent is None:
        raise ContributionFailed(
            409, f"node {node_id} has no shared agent to read its global memories as", "no_reader"
        )
    deadline = started + request.timeout_ms / 1000
    if request.expand is not None:
        window = await _read_window(app, request, agent, MAX_LIMIT, request.timeout_ms / 1000)
        return _answer(node_id, agent, window.kept, len(window.hits), 1, started, None)
    assert request.recall is not None
    cap = window_cap(app[keys.SETTINGS].workspace_path)
    asked = min(overfetch(request.limit), MAX_LIMIT)
    first: Span = (request.recall.get("since"), request.recall.get("until"))
    spans: deque[Span] = deque([first])
    seen: set[str] = set()
    kept: list[dict[str, Any]] = []
    fetched = reads = 0
    note = None
    while spans:
        left = deadline - time.perf_counter()
        if reads and (left <= 0 or reads >= MAX_READS):
            note = f"stopped after {reads} reads: lower-ranked hits may be missing"
            break
        span = spans.popleft()
        try:
            window = await _read_window(app, request, agent, asked, max(left, 0.001), span)
        except ContributionFailed as exc:
            if not reads or exc.status != 504:
                raise
            note = f"stopped after {reads} reads at the deadline: lower-ranked hits may be missing"
            break
        reads += 1
        fetched += len(window.hits)
        for hit in sorted(window.kept, key=lambda h: -_score(h)) if reads > 1 else window.kept:
            if hit["id"] not in seen:
                seen.add(hit["id"])
                kept.append(hit)
        if len(kept) >= request.limit:
            break
        if len(window.hits) < min(asked, cap):
            continue  # this span holds no more
        if asked < min(cap, MAX_LIMIT):
            asked = min(cap, MAX_LIMIT)  # a larger window first
            spans.appendleft(span)
            continue
        halves = split_span(span, window.hits)
        if halves is None:
            note = (
                f"the daemon's window ({len(window.hits)}) held {len(window.kept)} memories this "
                "reader may see and cannot be narrowed by time; lower-ranked ones may be missing"
            )
            continue
        spans.extend(halves)
    return _answer(node_id, agent, kept[: request.limit], fetched, reads, started, note)


def _score(hit: dict[str, Any]) -> float:
    value = hit.get("score")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _answer(
    node_id: str,
    agent: str,
    kept: list[dict[str, Any]],
    fetched: int,
    reads: int,
    started: float,
    note: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "node_id": node_id,
        "read_as": agent,
        "hits": kept,
        "fetched": fetched,
        "kept": len(kept),
        "reads": reads,
        "took_ms": round((time.perf_counter() - started) * 1000, 3),
    }
    if note is not None:
        body["note"] = note
    return body


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
