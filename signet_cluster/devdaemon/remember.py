"""Writing memories: dedupe, idempotency, auto-chunking and the per-flavor response shapes.

Checks run in the daemon's order — ``sourceType``+``sourceId``, then ``idempotencyKey``,
then the content hash — each inside the scope tuple (agent, visibility, scope), plus the
project for hash dedupe. 0.58.1 has no agents: it dedupes on ``sourceId`` and then on a
global content hash.
"""

from __future__ import annotations

import uuid
from typing import Any

import attrs

from .knowledge import link_structured
from .store import Row, Store
from .util import chunk_content, content_hash

Body = dict[str, Any]


@attrs.frozen(kw_only=True)
class RememberInput:
    """A parsed remember request (already validated by the route)."""

    content: str  # as stored: CRLF folded, trimmed, prefixes (TS) taken off
    sent: str  # as sent, trimmed: what the daemon measures and splits when chunking
    agent_id: str
    visibility: str
    scope: str | None
    who: str
    project: str | None
    importance: float
    pinned: bool
    tags: str | None
    mem_type: str
    source_type: str
    source_id: str | None
    source_path: str | None
    runtime_path: str | None
    idempotency_key: str | None
    created_at: str | None
    structured: dict[str, Any] | None
    hints_written: int


def _tuple_sql(inp: RememberInput) -> tuple[str, list[Any]]:
    return (
        "COALESCE(NULLIF(agent_id, ''), 'default') = ? AND COALESCE(visibility, 'global') = ?"
        " AND scope IS ?",
        [inp.agent_id, inp.visibility, inp.scope],
    )


def _find_existing(store: Store, inp: RememberInput, digest: str) -> tuple[Row | None, str]:
    """The row this write duplicates, and which check matched (``source|idem|hash``)."""
    live = "is_deleted = 0"
    if store.config.is_legacy:
        if inp.source_id is not None:
            row = store.one(
                f"SELECT * FROM memories WHERE {live} AND source_id = ?", [inp.source_id]
            )
            if row is not None:
                return row, "source"
        return store.one(f"SELECT * FROM memories WHERE {live} AND content_hash = ?", [digest]), (
            "hash"
        )
    scoped, params = _tuple_sql(inp)
    if inp.source_id is not None:
        row = store.one(
            f"SELECT * FROM memories WHERE {live} AND {scoped} AND source_type = ?"
            " AND source_id = ?",
            [*params, inp.source_type, inp.source_id],
        )
        if row is not None:
            return row, "source"
    if inp.idempotency_key is not None:
        row = store.one(
            f"SELECT * FROM memories WHERE {live} AND {scoped} AND idempotency_key = ?",
            [*params, inp.idempotency_key],
        )
        if row is not None:
            return row, "idem"
    row = store.one(
        f"SELECT * FROM memories WHERE {live} AND {scoped} AND content_hash = ? AND project IS ?",
        [*params, digest, inp.project],
    )
    return row, "hash"


def _row_fields(store: Store, inp: RememberInput, content: str, now: str) -> dict[str, Any]:
    return {
        "content": content,
        "type": inp.mem_type,
        "tags": inp.tags,
        "pinned": int(inp.pinned),
        "importance": inp.importance,
        "who": inp.who,
        "project": inp.project,
        "scope": inp.scope,
        "source_type": inp.source_type,
        "source_id": inp.source_id,
        "source_path": inp.source_path,
        "runtime_path": inp.runtime_path,
        "agent_id": inp.agent_id,
        "visibility": inp.visibility,
        "idempotency_key": inp.idempotency_key,
        "content_hash": content_hash(content),
        "created_at": inp.created_at or now,
        "updated_at": inp.created_at or now,
        "updated_by": inp.who,
    }


def _dedupe_response(store: Store, row: Row, how: str, inp: RememberInput, digest: str) -> Body:
    if store.config.is_rust and how == "hash":
        return {
            "id": row["id"],
            "status": "duplicate",
            "hash": digest,
            "duplicateOf": row["id"],
            "tags": inp.tags,
            "type": inp.mem_type,
            "pinned": inp.pinned,
            "importance": inp.importance,
            "content": inp.content,
            "embedded": False,
            "entities_linked": 0,
            "hints_written": 0,
            "structured": inp.structured is not None,
            "deduped": True,
        }
    tags = row["tags"]
    if store.config.has_agents and not store.config.is_rust:
        # `tags: row.tags || ""` on every dedupe path (recorded for the idempotency key).
        # 0.58.1 keeps the row's value: neither its source nor its recordings say otherwise.
        tags = tags or ""
    return {
        "id": row["id"],
        "type": row["type"],
        "tags": tags,
        "pinned": bool(row["pinned"]),
        "importance": row["importance"],
        "content": row["content"],
        "embedded": not store.config.is_rust,
        "deduped": True,
    }


def _created_response(store: Store, inp: RememberInput, mem_id: str, linked: int) -> Body:
    base: Body = {
        "id": mem_id,
        "type": inp.mem_type,
        "tags": inp.tags,
        "pinned": inp.pinned,
        "importance": inp.importance,
        "content": inp.content,
        "embedded": False,
    }
    if store.config.is_legacy:
        return base
    extra: Body = {
        "entities_linked": linked,
        "hints_written": inp.hints_written,
        "structured": inp.structured is not None,
    }
    if store.config.is_rust:
        head = {"id": mem_id, "status": "created", "hash": content_hash(inp.content)}
        return {**head, "duplicateOf": None, **base, **extra}
    return {**base, **extra}


def _remember_chunked(store: Store, inp: RememberInput, target: int) -> tuple[int, Body]:
    chunks = chunk_content(inp.sent, target)
    if not chunks:
        return 400, {"error": "content produced no valid chunks"}
    key = inp.idempotency_key
    if key is not None and not store.config.is_legacy:
        scoped, params = _tuple_sql(inp)
        existing = store.all(
            f"SELECT id, source_id FROM memories WHERE is_deleted = 0 AND {scoped}"
            " AND idempotency_key LIKE ? ORDER BY rowid",
            [*params, f"{key}:chunk:%"],
        )
        if existing:
            return 200, {
                "chunked": True,
                "chunk_count": len(existing),
                "ids": [row["id"] for row in existing],
                "group_id": existing[0]["source_id"],
                "deduped": True,
            }
    group_id = str(uuid.uuid4())
    now = store.clock.now()  # every chunk shares one timestamp, as in the daemon
    ids = []
    with store.db.atomic():
        for index, chunk in enumerate(chunks):
            fields = _row_fields(store, inp, chunk, now)
            fields.update(source_type="chunk", source_id=group_id)
            fields["idempotency_key"] = f"{key}:chunk:{index}" if key else None
            ids.append(store.insert_memory(fields))
    body: Body = {"chunked": True, "chunk_count": len(ids)}
    if store.config.is_rust:
        body["embedded_count"] = 0
    body.update(ids=ids, group_id=group_id)
    return 200, body


def remember(store: Store, inp: RememberInput, *, max_chars: int, target: int) -> tuple[int, Body]:
    """Store one memory (or its chunks); returns the HTTP status and the response body."""
    if inp.structured is None and len(inp.sent) > max_chars:
        return _remember_chunked(store, inp, target)
    digest = content_hash(inp.content)
    existing, how = _find_existing(store, inp, digest)
    if existing is not None:
        return 200, _dedupe_response(store, existing, how, inp, digest)
    with store.db.atomic():
        mem_id = store.insert_memory(_row_fields(store, inp, inp.content, store.clock.now()))
        linked = 0
        if inp.structured is not None and not store.config.is_legacy:
            linked = link_structured(store, inp.structured, mem_id, inp.agent_id)
    return 200, _created_response(store, inp, mem_id, linked)
