"""Read routes: recall, the search aliases, get-by-id and the memory listing."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from .config import RECALL_TRUNCATE_CHARS
from .cost import real_stages, spend
from .http import RECALL_SHAPE, BodyRejected, error, json_response, read_object, text_response
from .resolve import SESSION_HEADER, query_agent, read_scope, recall_agent
from .search import (
    Filters,
    bump_access,
    distinct_who,
    keyword_recall,
    legacy_search,
    list_memories,
    visible_memory,
)
from .state import DaemonState, state_of
from .store import Row
from .util import as_float, text_or_none

_BY_ID_TS = [
    "id",
    "content",
    "type",
    "importance",
    "tags",
    "pinned",
    "who",
    "source_id",
    "source_type",
    "source_path",
    "runtime_path",
    "idempotency_key",
    "project",
    "session_id",
    "confidence",
    "access_count",
    "last_accessed",
    "is_deleted",
    "deleted_at",
    "extraction_status",
    "embedding_model",
    "version",
    "created_at",
    "updated_at",
    "updated_by",
]
_PATH_FIELDS = {"source_path", "runtime_path", "idempotency_key"}
_BY_ID_LEGACY = [name for name in _BY_ID_TS if name not in _PATH_FIELDS]


def _limit(value: object, default: int = 10) -> int:
    """``normalizeRecallLimit``: numbers (or numeric strings) clamped to 1..50."""
    number = as_float(value)
    if number is None:
        return default
    return max(1, min(50, int(number)))


def _filters(source: Any, *, rust: bool, legacy: bool = False) -> Filters:
    tags = text_or_none(source.get("tags"))
    importance = source.get("importanceMin" if rust else "importance_min")
    pinned = source.get("pinned")
    return Filters(
        type=text_or_none(source.get("type")),
        tags=tuple(tag.strip() for tag in tags.split(",") if tag.strip()) if tags else (),
        who=text_or_none(source.get("who")),
        pinned=pinned in (True, "1", "true"),
        importance_min=as_float(importance),
        since=text_or_none(source.get("since")),
        until=text_or_none(source.get("until")),
        project=text_or_none(source.get("project")),
        scope=text_or_none(source.get("scope")),
        # 0.58.1 predates benchmark scopes in recall: it filters nothing on `scope`.
        apply_scope=not legacy,
    )


def _result(state: DaemonState, row: Row, score: float) -> dict[str, Any]:
    cut = RECALL_TRUNCATE_CHARS[state.config.flavor]
    content = str(row["content"])
    truncated = len(content) > cut
    item: dict[str, Any] = {
        "id": row["id"],
        "content": content[:cut] + " [truncated]" if truncated else content,
        "content_length": len(content),
        "truncated": truncated,
        "score": score,
        "source": "keyword",
        "type": row["type"],
        "tags": row["tags"],
        "pinned": bool(row["pinned"]),
        "importance": row["importance"],
        "who": row["who"],
        "project": row["project"],
        "created_at": row["created_at"],
    }
    if state.config.has_agents:
        item["visibility"] = row.get("visibility") or "global"
        item["scope"] = row["scope"]
        optional = (
            ("source_id",) if state.config.is_rust else ("source_id", "session_id", "source_path")
        )
        item.update({name: row[name] for name in optional if row.get(name) is not None})
    return item


def recall_response(
    state: DaemonState,
    query: str,
    agent_id: str,
    filters: Filters,
    limit: int,
    session_key: str | None = None,
    include_recalled: bool = False,
) -> dict[str, Any]:
    """Run keyword recall and shape the flavor's ``RecallResponse``."""
    started = time.perf_counter()
    seen = state.sessions.recalled.setdefault(session_key, set()) if session_key else set()
    hits = keyword_recall(
        state.store,
        query,
        read_scope=read_scope(state, agent_id),
        filters=filters,
        limit=limit + len(seen),
        include_deleted=state.config.is_legacy,
    )
    results = []
    for row, score in hits:
        already = row["id"] in seen
        if already and not include_recalled:
            continue
        item = _result(state, row, score)
        if already:
            item["already_recalled"] = True
        results.append(item)
        if len(results) == limit:
            break
    ids = [item["id"] for item in results]
    bump_access(state.store, ids)
    seen.update(ids)
    body: dict[str, Any] = {
        "results": results,
        "query": query,
        "method": "keyword" if results else "hybrid",
    }
    if not state.config.is_legacy:
        took = round((time.perf_counter() - started) * 1000, 2)
        body["meta"] = {
            "totalReturned": len(results),
            "hasSupplementary": False,
            "noHits": not results,
            "timings": {"totalMs": took, "stages": [{"name": "memory_fts", "durationMs": took}]},
        }
    return body


async def recall(request: web.Request) -> web.Response:
    cpu_started = time.thread_time()
    state = state_of(request)
    rust = state.config.is_rust
    try:
        body = await read_object(request, rust=rust, shape=RECALL_SHAPE)
    except BodyRejected as rejected:
        return rejected.response
    query = text_or_none(body.get("query"))
    if query is None:
        return error("query is required", 400)
    session_key = None
    if not rust:
        session_key = text_or_none(body.get("sessionKey")) or request.headers.get(SESSION_HEADER)
    answer = recall_response(
        state,
        text_or_none(body.get("keywordQuery")) or query,
        recall_agent(state, body, request),
        _filters(body, rust=rust, legacy=state.config.is_legacy),
        _limit(body.get("limit")),
        session_key if state.config.has_agents else None,
        body.get("includeRecalled") is True,
    ) | {"query": query}
    cost = state.faults.recall_cost
    if cost is not None:
        timings = answer.get("meta", {}).get("timings")
        if cost.real_stages and isinstance(timings, dict):
            timings["stages"] = real_stages(timings.get("totalMs", 0.0))
        spend(cost, len(answer["results"]), cpu_started)
        if cost.latency_ms:
            await asyncio.sleep(cost.latency_ms / 1000)
    return json_response(answer)


async def rust_search(request: web.Request) -> web.Response:
    """Rust ``GET /api/memory/search`` and ``GET /memory/search``: recall aliases.

    No agent parameter: the agent is the token's, else ``default``.
    """
    state = state_of(request)
    q = text_or_none(request.query.get("q"))
    if "q" not in request.query:
        return text_response("Failed to deserialize query string: missing field `q`", 400)
    if q is None:
        return error("query is required", 400)
    filters = _filters(request.query, rust=False)
    return json_response(
        recall_response(state, q, "default", filters, _limit(request.query.get("limit")))
    )


async def ts_memory_search(request: web.Request) -> web.Response:
    """TS ``GET /memory/search``: raw FTS rows for the dashboard, blind to agents."""
    state = state_of(request)
    if request.query.get("distinct") == "who":
        return json_response({"values": distinct_who(state.store)})
    q = text_or_none(request.query.get("q"))
    limit = max(1, int(as_float(request.query.get("limit")) or (20 if q else 50)))
    rows = legacy_search(state.store, q, _filters(request.query, rust=False), limit)
    return json_response({"results": rows})


async def get_memory(request: web.Request) -> web.Response:
    state = state_of(request)
    mem_id = request.match_info["id"]
    scope = read_scope(state, query_agent(request))
    row = visible_memory(state.store, mem_id, scope)
    if row is None:
        return error("not found", 404)
    if state.config.is_rust:
        body = {name: row.get(name) for name in _BY_ID_LEGACY}
        body.update(pinned=bool(row["pinned"]), is_deleted=bool(row["is_deleted"]), sessionId=None)
        return json_response(body)
    if state.config.is_legacy:
        return json_response({name: row.get(name) for name in _BY_ID_LEGACY})
    body = {name: row.get(name) for name in _BY_ID_TS}
    body.update(
        sourcePath=row.get("source_path"),
        runtimePath=row.get("runtime_path"),
        idempotencyKey=row.get("idempotency_key"),
    )
    return json_response(body)


async def memories_list(request: web.Request) -> web.Response:
    state = state_of(request)
    limit = int(as_float(request.query.get("limit")) or 100)
    offset = int(as_float(request.query.get("offset")) or 0)
    rows, stats = list_memories(state.store, max(1, min(limit, 1000)), max(0, offset))
    return json_response({"memories": rows, "stats": stats})
