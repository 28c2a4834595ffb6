"""Changing memories: modify (batch patches), forget (preview/execute), PATCH and DELETE by id,
and recover (undoing a soft delete within the retention window).

TS applies these to any id (no agent check); Rust only touches memories owned by the
resolved agent (``owner``), reporting others as ``not_found``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

import attrs

from .search import Filters, filter_sql, keyword_recall
from .store import Row, Store
from .util import as_float, content_hash, parse_tags, storage_content

Body = dict[str, Any]

CONFIRM_THRESHOLD = 25


@attrs.frozen(kw_only=True)
class Patch:
    """The fields one patch changes; ``error`` set when the patch is invalid."""

    changes: dict[str, Any]
    if_version: int | None = None
    error: str | None = None


def parse_patch_fields(fields: dict[str, Any], if_version: object) -> Patch:
    """Validate ``content/type/tags/importance/pinned`` (flat TS or Rust's inner ``patch``)."""
    changes: dict[str, Any] = {}
    if "content" in fields:
        content = fields["content"]
        if not isinstance(content, str) or not content.strip():
            return Patch(changes={}, error="content must be a non-empty string")
        changes["content"] = storage_content(content)
    if "type" in fields:
        if not isinstance(fields["type"], str) or not fields["type"].strip():
            return Patch(changes={}, error="type must be a non-empty string")
        changes["type"] = fields["type"].strip()
    if "tags" in fields:
        ok, tags = parse_tags(fields["tags"])
        if not ok:
            return Patch(changes={}, error="tags must be a string, string array, or null")
        changes["tags"] = tags
    if "importance" in fields:
        importance = as_float(fields["importance"])
        if isinstance(fields["importance"], str) or importance is None or not 0 <= importance <= 1:
            return Patch(changes={}, error="importance must be a finite number between 0 and 1")
        changes["importance"] = importance
    if "pinned" in fields:
        if not isinstance(fields["pinned"], bool):
            return Patch(changes={}, error="pinned must be a boolean")
        changes["pinned"] = int(fields["pinned"])
    version = None
    if if_version is not None:
        if isinstance(if_version, bool) or not isinstance(if_version, int) or if_version <= 0:
            return Patch(changes={}, error="if_version must be a positive integer")
        version = if_version
    if not changes:
        return Patch(
            changes={},
            error="at least one of content, type, tags, importance, pinned is required",
        )
    return Patch(changes=changes, if_version=version)


def _owned(store: Store, row: Row | None, owner: str | None) -> Row | None:
    if row is None or owner is None:
        return row
    return row if store.owner_of(row) == owner else None


def apply_patch(store: Store, mem_id: str, patch: Patch, *, actor: str, owner: str | None) -> Body:
    """Apply one validated patch; returns the per-patch result object."""
    row = _owned(store, store.get_memory(mem_id), owner)
    if row is None:
        return {"id": mem_id, "status": "not_found"}
    if row["is_deleted"]:
        return {"id": mem_id, "status": "deleted", "error": "Cannot modify deleted memory"}
    version = int(row["version"])
    if patch.if_version is not None and patch.if_version != version:
        status = "version_mismatch" if store.config.is_rust else "version_conflict"
        return {"id": mem_id, "status": status, "currentVersion": version}
    changes = {key: value for key, value in patch.changes.items() if row.get(key) != value}
    if not changes:
        return {"id": mem_id, "status": "no_changes", "currentVersion": version}
    content_changed = "content" in changes
    if content_changed:
        digest = content_hash(changes["content"])
        duplicate = _duplicate_of(store, row, digest)
        if duplicate is not None:
            return {
                "id": mem_id,
                "status": "duplicate_content_hash",
                "duplicateMemoryId": duplicate,
            }
        changes["content_hash"] = digest
    changes.update(version=version + 1, updated_at=store.clock.now(), updated_by=actor)
    store.update_memory(mem_id, changes)
    return {
        "id": mem_id,
        "status": "updated",
        "currentVersion": version,
        "newVersion": version + 1,
        "contentChanged": content_changed,
    }


def _duplicate_of(store: Store, row: Row, digest: str) -> str | None:
    sql = "SELECT id FROM memories WHERE is_deleted = 0 AND content_hash = ? AND id != ?"
    params: list[Any] = [digest, row["id"]]
    if store.config.has_agents:
        sql += (
            " AND COALESCE(NULLIF(agent_id, ''), 'default') = ?"
            " AND COALESCE(visibility, 'global') = ? AND scope IS ?"
        )
        params += [store.owner_of(row), row.get("visibility") or "global", row["scope"]]
    found = store.one(sql, params)
    return None if found is None else str(found["id"])


# -- forget ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ForgetSelection:
    ids: tuple[str, ...] | None
    query: str | None
    filters: Filters
    source_type: str | None
    limit: int


def confirm_token(ids: list[str]) -> str:
    return hashlib.md5("\n".join(sorted(ids)).encode(), usedforsecurity=False).hexdigest()


def forget_candidates(
    store: Store, selection: ForgetSelection, owner: str | None
) -> list[tuple[Row, float]]:
    """Live memories the forget request selects (owned by ``owner`` when set)."""
    if selection.ids is not None:
        rows = [store.get_memory(mem_id) for mem_id in dict.fromkeys(selection.ids)]
        live = [row for row in rows if row is not None and not row["is_deleted"]]
        picked: list[tuple[Row, float]] = [(row, 0.0) for row in live]
    elif selection.query is not None:
        picked = keyword_recall(
            store,
            selection.query,
            read_scope=None,
            filters=selection.filters,
            limit=selection.limit * 4,
        )
    else:
        where, params = _filter_where(selection)
        picked = [
            (row, 0.0)
            for row in store.all(
                f"SELECT m.* FROM memories m WHERE m.is_deleted = 0{where}"
                " ORDER BY m.created_at DESC LIMIT ?",
                [*params, selection.limit * 4],
            )
        ]
    if selection.source_type is not None:
        picked = [item for item in picked if item[0]["source_type"] == selection.source_type]
    if owner is not None:
        picked = [
            item
            for item in picked
            if store.owner_of(item[0]) == owner and item[0].get("visibility") != "archived"
        ]
    return picked[: selection.limit]


def _filter_where(selection: ForgetSelection) -> tuple[str, list[Any]]:
    where, params = filter_sql(selection.filters)
    return "".join(f" AND {cond}" for cond in where), params


def preview_body(candidates: list[tuple[Row, float]]) -> Body:
    ids = [row["id"] for row, _ in candidates]
    return {
        "mode": "preview",
        "count": len(ids),
        "requiresConfirm": len(ids) > CONFIRM_THRESHOLD,
        "confirmToken": confirm_token(ids),
        "candidates": [
            {
                "id": row["id"],
                "score": score,
                "pinned": bool(row["pinned"]),
                "version": row["version"],
            }
            for row, score in candidates
        ],
    }


def forget_one(store: Store, mem_id: str, *, force: bool, actor: str, owner: str | None) -> Body:
    """Soft-delete one memory; returns its per-item result."""
    row = _owned(store, store.get_memory(mem_id), owner)
    if row is None:
        return {"id": mem_id, "status": "not_found"}
    version = int(row["version"])
    if row["is_deleted"]:
        return {"id": mem_id, "status": "already_deleted", "currentVersion": version}
    if row["pinned"] and not force:
        status = "pinned" if store.config.is_rust else "pinned_requires_force"
        return {"id": mem_id, "status": status, "currentVersion": version}
    now = store.clock.now()
    store.update_memory(
        mem_id,
        {
            "is_deleted": 1,
            "deleted_at": now,
            "version": version + 1,
            "updated_at": now,
            "updated_by": actor,
        },
    )
    return {"id": mem_id, "status": "deleted", "currentVersion": version, "newVersion": version + 1}


#: How long a soft-deleted memory can be recovered (the daemon's SOFT_DELETE_RETENTION_DAYS).
RETENTION_DAYS = 30


def recover_one(
    store: Store, mem_id: str, *, if_version: int | None, actor: str, owner: str | None
) -> tuple[int, Body]:
    """``POST /api/memory/:id/recover``: (status, body) as the TS daemon answers them."""
    row = _owned(store, store.get_memory(mem_id), owner)
    if row is None:
        return 404, {"id": mem_id, "status": "not_found", "error": "Not found"}
    version = int(row["version"])
    if not row["is_deleted"]:
        body = {"id": mem_id, "status": "not_deleted", "currentVersion": version}
        return 409, body | {"error": "Memory is not deleted"}
    if if_version is not None and version != if_version:
        body = {"id": mem_id, "status": "version_conflict", "currentVersion": version}
        return 409, body | {"error": "Version conflict"}
    now = store.clock.now()
    deleted_at, recovered_at = _instant(row["deleted_at"]), _instant(now)
    if (
        deleted_at is None
        or recovered_at is None
        or recovered_at - deleted_at > timedelta(days=RETENTION_DAYS)
    ):
        body = {"id": mem_id, "status": "retention_expired", "currentVersion": version}
        return 409, body | {"error": f"Recover window expired ({RETENTION_DAYS} days)"}
    store.update_memory(
        mem_id,
        {
            "is_deleted": 0,
            "deleted_at": None,
            "version": version + 1,
            "updated_at": now,
            "updated_by": actor,
        },
    )
    return 200, {
        "id": mem_id,
        "status": "recovered",
        "currentVersion": version,
        "newVersion": version + 1,
        "retentionDays": RETENTION_DAYS,
    }


def _instant(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
