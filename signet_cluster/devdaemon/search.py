"""Read queries: keyword recall over FTS5, the legacy raw search, listings and by-id reads."""

from __future__ import annotations

from typing import Any

import attrs

from .policy import ReadScope, scope_clause
from .store import Row, Store
from .util import fts_query, sqlite_now


@attrs.frozen(kw_only=True)
class Filters:
    """Recall filters shared by every flavor (names differ only in the request body)."""

    type: str | None = None
    tags: tuple[str, ...] = ()
    who: str | None = None
    pinned: bool | None = None
    importance_min: float | None = None
    since: str | None = None
    until: str | None = None
    project: str | None = None
    # `scope` is benchmark namespacing, not agent scope: recall reads only `scope IS NULL`
    # rows unless a scope is asked for. None = not asked.
    scope: str | None = None
    apply_scope: bool = True


def filter_sql(filters: Filters) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if filters.type is not None:
        where.append("m.type = ?")
        params.append(filters.type)
    if filters.tags:
        where.append(
            "("
            + " OR ".join("(',' || COALESCE(m.tags, '') || ',') LIKE ?" for _ in filters.tags)
            + ")"
        )
        params.extend(f"%,{tag},%" for tag in filters.tags)
    if filters.who is not None:
        where.append("m.who = ?")
        params.append(filters.who)
    if filters.pinned:
        where.append("m.pinned = 1")
    if filters.importance_min is not None:
        where.append("m.importance >= ?")
        params.append(filters.importance_min)
    if filters.since is not None:
        where.append("m.created_at >= ?")
        params.append(filters.since)
    if filters.until is not None:
        where.append("m.created_at <= ?")
        params.append(filters.until)
    if filters.project is not None:
        where.append("m.project = ?")
        params.append(filters.project)
    if filters.apply_scope:
        if filters.scope is None:
            where.append("m.scope IS NULL")
        else:
            where.append("m.scope = ?")
            params.append(filters.scope)
    return where, params


def keyword_recall(
    store: Store,
    query: str,
    *,
    read_scope: ReadScope | None,
    filters: Filters,
    limit: int,
    include_deleted: bool = False,
) -> list[tuple[Row, float]]:
    """FTS5 keyword recall: rows with a score in 0..1 (best hit = 1).

    Ordered by relevance, then ``created_at``, then ``id``, so equal texts come back in
    write order. ``include_deleted`` reproduces 0.58.1, whose recall still returned
    forgotten memories as keyword hits.
    """
    match = fts_query(query)
    if match is None:
        return []
    where, params = filter_sql(filters)
    if not include_deleted:
        where.append("m.is_deleted = 0")
    if read_scope is not None:
        clause, scope_params = scope_clause(read_scope)
        where.append(clause)
        params.extend(scope_params)
    conditions = "".join(f" AND {cond}" for cond in where)
    sql = (
        "SELECT m.*, bm25(memories_fts) AS _rank FROM memories_fts"
        " JOIN memories m ON m.rowid = memories_fts.rowid"
        f" WHERE memories_fts MATCH ?{conditions}"
        " ORDER BY _rank, m.created_at, m.id LIMIT ?"
    )
    rows = store.all(sql, [match, *params, limit])
    if not rows:
        return []
    # bm25 is negative (lower is better) and its scale depends on corpus size; the
    # real daemon's scores are boosted and drift anyway, so report relevance relative to
    # the best hit.
    best = min(float(row["_rank"]) for row in rows) or -1.0
    scored = []
    for row in rows:
        rank = float(row.pop("_rank"))
        scored.append((row, round(rank / best, 2) if best else 1.0))
    return scored


def bump_access(store: Store, ids: list[str]) -> None:
    """Recall's access tracking (``access_count``, ``last_accessed``)."""
    if not ids:
        return
    marks = ", ".join("?" * len(ids))
    store.db.execute(
        "UPDATE memories SET access_count = access_count + 1, last_accessed = ?"
        f" WHERE id IN ({marks})",
        [sqlite_now(), *ids],
    )


def legacy_search(store: Store, q: str | None, filters: Filters, limit: int) -> list[Row]:
    """TS ``GET /memory/search``: raw rows with the bm25 score, no agent or visibility filter."""
    where, params = filter_sql(attrs.evolve(filters, apply_scope=False))
    where.append("m.is_deleted = 0")
    fields = "m.id, m.content, m.created_at, m.who, m.importance, m.tags, m.type, m.pinned"
    match = fts_query(q) if q else None
    conditions = "".join(f" AND {cond}" for cond in where)
    if q:
        if match is None:
            return []
        return store.all(
            f"SELECT {fields}, bm25(memories_fts) AS score FROM memories_fts"
            " JOIN memories m ON m.rowid = memories_fts.rowid"
            f" WHERE memories_fts MATCH ?{conditions} ORDER BY score, m.rowid LIMIT ?",
            [match, *params, limit],
        )
    return store.all(
        f"SELECT {fields} FROM memories m WHERE 1 = 1{conditions}"
        " ORDER BY m.created_at DESC LIMIT ?",
        [*params, limit],
    )


def distinct_who(store: Store) -> list[str]:
    rows = store.all(
        "SELECT DISTINCT who FROM memories WHERE is_deleted = 0 AND who IS NOT NULL ORDER BY who"
    )
    return [str(row["who"]) for row in rows]


def list_memories(store: Store, limit: int, offset: int) -> tuple[list[Row], dict[str, int]]:
    """``GET /api/memories``: newest first, every agent (the route is not agent-scoped)."""
    rows = store.all(
        "SELECT id, content, created_at, who, importance, tags, source_type, pinned, type"
        " FROM memories WHERE is_deleted = 0 ORDER BY created_at DESC, rowid LIMIT ? OFFSET ?",
        [limit, offset],
    )
    counts = store.one(
        "SELECT COUNT(*) AS total, COALESCE(SUM(importance >= 0.9), 0) AS critical"
        " FROM memories WHERE is_deleted = 0"
    )
    assert counts is not None
    stats = {
        "total": int(counts["total"]),
        "withEmbeddings": 0,
        "critical": int(counts["critical"]),
    }
    return rows, stats


def visible_memory(store: Store, mem_id: str, read_scope: ReadScope | None) -> Row | None:
    """``GET /api/memory/:id``: a live row the reader may see (any row without a scope)."""
    sql = "SELECT m.* FROM memories m WHERE m.id = ? AND m.is_deleted = 0"
    params: list[Any] = [mem_id]
    if read_scope is not None:
        clause, scope_params = scope_clause(read_scope)
        sql += f" AND {clause}"
        params.extend(scope_params)
    return store.one(sql, params)


def session_start_memories(store: Store, read_scope: ReadScope | None, limit: int) -> list[Row]:
    """Memories injected at session start: importance first, then the most recent."""
    sql = "SELECT m.* FROM memories m WHERE m.is_deleted = 0"
    params: list[Any] = []
    if read_scope is not None:
        clause, scope_params = scope_clause(read_scope)
        sql += f" AND m.scope IS NULL AND {clause}"
        params.extend(scope_params)
    sql += " ORDER BY m.importance DESC, m.created_at DESC, m.rowid LIMIT ?"
    return store.all(sql, [*params, limit])
