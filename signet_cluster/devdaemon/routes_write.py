"""Write routes: remember (and its aliases), modify, forget, PATCH and DELETE by id."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from aiohttp import web

from .config import CHUNK_TARGET_CHARS, MAX_CONTENT_CHARS
from .http import (
    FORGET_SHAPE,
    MODIFY_SHAPE,
    REMEMBER_SHAPE,
    BodyRejected,
    error,
    json_response,
    read_object,
)
from .knowledge import valid_structured
from .mutate import (
    CONFIRM_THRESHOLD,
    ForgetSelection,
    Patch,
    apply_patch,
    confirm_token,
    forget_candidates,
    forget_one,
    parse_patch_fields,
    preview_body,
    recover_one,
)
from .remember import RememberInput, remember
from .resolve import AGENT_HEADER, SESSION_HEADER, actor, mutation_owner
from .search import Filters
from .state import DaemonState, state_of
from .util import (
    as_float,
    infer_type,
    parse_prefixes,
    parse_tags,
    session_agent,
    storage_content,
    text_or_none,
)

Body = dict[str, Any]
_NO_FILTER = (
    "query, ids, or at least one filter (type/tags/who/source_type/since/until) is required"
)


def _first_text(body: Body, *names: str) -> str | None:
    metadata = body.get("metadata")
    sources = [body, metadata] if isinstance(metadata, dict) else [body]
    for source in sources:
        for name in names:
            value = text_or_none(source.get(name))
            if value is not None:
                return value
    return None


def _valid_iso(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _hints_count(body: Body) -> int:
    hints: list[object] = []
    structured = body.get("structured")
    for source in (body, structured if isinstance(structured, dict) else {}):
        found = source.get("hints")
        if isinstance(found, list):
            hints.extend(found)
    return sum(1 for hint in hints if isinstance(hint, str) and 5 <= len(hint.strip()) <= 300)


def _rust_agent(body: Body, request: web.Request) -> tuple[str, str | None]:
    """Rust ``resolve_remember_agent``: (agent, error for a 403).

    ``/api/hook/remember`` also reads the agent header; ``/api/memory/remember`` does not.
    """
    bound = session_agent(text_or_none(body.get("sessionKey")))
    explicit = text_or_none(body.get("agentId"))
    header = None
    if request.path.startswith("/api/hook/"):
        header = text_or_none(request.headers.get(AGENT_HEADER))
    if bound is not None and explicit is not None and explicit != bound:
        return "", "agent_id does not match session scope"
    if bound is not None and header is not None and header != bound:
        return "", "x-signet-agent-id does not match session scope"
    return explicit or header or bound or "default", None


def _rust_session_problem(
    state: DaemonState, body: Body, agent: str, visibility: str
) -> str | None:
    """Rust ``require_session_scope_for_write``: scoped writes need an active session."""
    scoped = agent != "default" or visibility != "global" or text_or_none(body.get("scope"))
    if not scoped:
        return None
    key = text_or_none(body.get("sessionKey"))
    if key is None:
        if agent != "default":
            return "non-default agent_id requires session_key with agent scope"
        return "non-default visibility/scope requires session_key with agent scope"
    bound = session_agent(key)
    if bound is None:
        return "session_key must be agent scoped"
    if key not in state.sessions.claims:
        return "session_key is not active"
    if agent != "default" and agent != bound:
        return "agent_id does not match session scope"
    return None


def _parse_remember(
    state: DaemonState, body: Body, request: web.Request
) -> RememberInput | web.Response:
    config = state.config
    raw = body.get("content")
    sent = storage_content(raw) if isinstance(raw, str) else ""
    if not sent:
        return error("content is required", 400)
    ok, tags = parse_tags(body.get("tags"))
    if not ok:
        return error("tags must be a string, string array, or null", 400)
    created_at = text_or_none(body.get("createdAt"))
    if created_at is not None and not config.is_legacy and not _valid_iso(created_at):
        return error("createdAt must be a valid ISO timestamp", 400)
    structured = body.get("structured")
    if config.is_legacy or structured is None:
        structured = None
    elif not valid_structured(structured):
        return error("structured must be a valid structured payload", 400)
    importance = as_float(body.get("importance"))
    pinned = body.get("pinned") is True
    content, agent, visibility = sent, "default", "global"
    if config.is_rust:
        # Rust applies no prefixes: the body says everything.
        agent, problem = _rust_agent(body, request)
        if problem is not None:
            return error(problem, 403)
        visibility = str(body.get("visibility") or "global").strip().lower()
        if visibility not in ("global", "private", "archived"):
            return error("visibility must be one of: global, private, archived", 400)
        problem = _rust_session_problem(state, body, agent, visibility)
        if problem is not None:
            return error(problem, 403)
        mem_type = text_or_none(body.get("type")) or "fact"
        importance = 0.5 if importance is None else importance
    else:
        if config.has_agents:
            # The session key comes from the header only: TS passes
            # `c.req.header("x-signet-session-key")` to resolveAgentId (the body
            # `sessionKey` of a remember is Rust's).
            header_key = request.headers.get(SESSION_HEADER)
            agent = text_or_none(body.get("agentId")) or session_agent(header_key) or "default"
            visibility = "private" if body.get("visibility") == "private" else "global"
        prefixed = parse_prefixes(sent)
        content = storage_content(prefixed.content)
        if not content:
            return error("content is required", 400)
        # `body.importance ?? parsed.importance`, `body.pinned ?? parsed.pinned`, and the
        # body's tags whenever it has the key.
        importance = prefixed.importance if importance is None else importance
        pinned = prefixed.pinned if body.get("pinned") is None else bool(body["pinned"])
        tags = tags if "tags" in body else prefixed.tags
        mem_type = infer_type(content)
    return RememberInput(
        content=content,
        sent=sent,
        agent_id=agent,
        visibility=visibility,
        scope=text_or_none(body.get("scope")) if config.has_agents else None,
        who=text_or_none(body.get("who")) or "daemon",
        project=text_or_none(body.get("project")),
        importance=importance,
        pinned=pinned,
        tags=tags,
        mem_type=mem_type,
        source_type=text_or_none(body.get("sourceType")) or "manual",
        source_id=text_or_none(body.get("sourceId")),
        source_path=_first_text(body, "sourcePath", "source_path", "source"),
        runtime_path=_first_text(body, "runtimePath", "runtime_path"),
        idempotency_key=None
        if config.is_legacy
        else _first_text(body, "idempotencyKey", "idempotency_key"),
        created_at=created_at if not config.is_legacy else None,
        structured=structured,
        hints_written=_hints_count(body) if not config.is_legacy else 0,
    )


async def remember_route(request: web.Request) -> web.Response:
    """``/api/memory/remember``, ``/api/memory/save`` and ``/api/hook/remember``."""
    state = state_of(request)
    try:
        body = await read_object(request, rust=state.config.is_rust, shape=REMEMBER_SHAPE)
    except BodyRejected as rejected:
        return rejected.response
    parsed = _parse_remember(state, body, request)
    if isinstance(parsed, web.Response):
        return parsed
    if state.config.has_agents and not state.config.is_rust:
        state.store.ensure_agent_registered(parsed.agent_id)
    flavor = state.config.flavor
    status, payload = remember(
        state.store,
        parsed,
        max_chars=MAX_CONTENT_CHARS[flavor],
        target=CHUNK_TARGET_CHARS[flavor],
    )
    return json_response(payload, status)


async def modify_route(request: web.Request) -> web.Response:
    state = state_of(request)
    rust = state.config.is_rust
    try:
        body = await read_object(request, rust=rust, shape=MODIFY_SHAPE)
    except BodyRejected as rejected:
        return rejected.response
    patches = body.get("patches")
    if not isinstance(patches, list) or not patches:
        return error("patches[] is required", 400)
    cap = 100 if rust else 200
    if len(patches) > cap:
        return error(f"too many patches (max {cap})", 400)
    owner = mutation_owner(state, request, body.get("agent_id"), body.get("agentId"))
    who = actor(body, request)
    results = []
    for item in patches:
        mem_id = text_or_none(item.get("id")) if isinstance(item, dict) else None
        if mem_id is None:
            results.append({"id": None, "status": "invalid_request", "error": "id is required"})
            continue
        reason = text_or_none(item.get("reason")) or text_or_none(body.get("reason"))
        if reason is None and not rust:
            results.append(
                {"id": mem_id, "status": "invalid_request", "error": "reason is required"}
            )
            continue
        patch = parse_patch_fields(item["patch"] if rust else item, item.get("if_version"))
        if patch.error is not None:
            results.append({"id": mem_id, "status": "invalid_request", "error": patch.error})
            continue
        results.append(apply_patch(state.store, mem_id, patch, actor=who, owner=owner))
    updated = sum(1 for result in results if result["status"] == "updated")
    return json_response({"total": len(results), "updated": updated, "results": results})


def _forget_selection(body: Body) -> ForgetSelection | str:
    ids = body.get("ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
        return "ids must be an array of strings"
    tags = text_or_none(body.get("tags"))
    scope = text_or_none(body.get("scope"))
    filters = Filters(
        type=text_or_none(body.get("type")),
        tags=tuple(tag.strip() for tag in tags.split(",") if tag.strip()) if tags else (),
        who=text_or_none(body.get("who")),
        since=text_or_none(body.get("since")),
        until=text_or_none(body.get("until")),
        scope=scope,
        apply_scope=scope is not None,
    )
    source_type = text_or_none(body.get("source_type"))
    query = text_or_none(body.get("query"))
    has_filter = any(
        (filters.type, filters.tags, filters.who, filters.since, filters.until, source_type, scope)
    )
    if not ids and query is None and not has_filter:
        return _NO_FILTER
    limit = int(as_float(body.get("limit")) or 20)
    return ForgetSelection(
        ids=tuple(ids) if ids else None,
        query=query,
        filters=filters,
        source_type=source_type,
        limit=max(1, min(limit, 200)),
    )


async def forget_route(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body = await read_object(request, rust=state.config.is_rust, shape=FORGET_SHAPE)
    except BodyRejected as rejected:
        return rejected.response
    mode = body.get("mode") or "preview"
    if mode not in ("preview", "execute"):
        return error("mode must be preview or execute", 400)
    if "if_version" in body:
        return error("if_version is not supported for batch forget", 400)
    selection = _forget_selection(body)
    if isinstance(selection, str):
        return error(selection, 400)
    reason = text_or_none(body.get("reason"))
    if mode == "execute" and reason is None:
        return error("reason is required for execute mode", 400)
    owner = mutation_owner(state, request, body.get("agent_id"), body.get("agentId"))
    candidates = forget_candidates(state.store, selection, owner)
    if mode == "preview":
        return json_response(preview_body(candidates))
    ids = [row["id"] for row, _ in candidates]
    if len(ids) > CONFIRM_THRESHOLD and body.get("confirm_token") != confirm_token(ids):
        return error(
            f"confirm_token is required when more than {CONFIRM_THRESHOLD} memories match",
            400,
            requiresConfirm=True,
            count=len(ids),
        )
    targets = list(dict.fromkeys(selection.ids)) if selection.ids is not None else ids
    force, who = body.get("force") is True, actor(body, request)
    with state.store.db.atomic():
        results = [
            forget_one(state.store, mem_id, force=force, actor=who, owner=owner)
            for mem_id in targets
        ]
    deleted = sum(1 for result in results if result["status"] == "deleted")
    return json_response(
        {"mode": "execute", "requested": len(targets), "deleted": deleted, "results": results}
    )


_PATCH_STATUS = {
    "updated": 200,
    "no_changes": 200,
    "not_found": 404,
    "deleted": 409,
    "version_conflict": 409,
    "version_mismatch": 409,
    "duplicate_content_hash": 409,
    "already_deleted": 409,
    "pinned": 409,
    "pinned_requires_force": 409,
}


# By id, Rust answers with the TS names; only its batch routes use their own.
_BY_ID_STATUS = {"version_mismatch": "version_conflict", "pinned": "pinned_requires_force"}


async def patch_memory(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body = await read_object(request, rust=state.config.is_rust)
    except BodyRejected as rejected:
        return rejected.response
    if text_or_none(body.get("reason")) is None:
        return error("reason is required", 400)
    patch: Patch = parse_patch_fields(body, body.get("if_version"))
    if patch.error is not None:
        return error(patch.error, 400)
    owner = mutation_owner(state, request)  # Rust: the agent header only
    result = apply_patch(
        state.store, request.match_info["id"], patch, actor=actor(body, request), owner=owner
    )
    result["status"] = _BY_ID_STATUS.get(result["status"], result["status"])
    return json_response(result, _PATCH_STATUS[result["status"]])


async def delete_memory(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        parsed = json.loads(await request.text() or "{}")
    except ValueError:
        parsed = {}
    body: Body = parsed if isinstance(parsed, dict) else {}
    reason = text_or_none(body.get("reason")) or text_or_none(request.query.get("reason"))
    if reason is None:
        return error("reason is required", 400)
    force = body.get("force") is True or request.query.get("force") in ("true", "1")
    named = (body.get("agent_id"), body.get("agentId"))
    owner = mutation_owner(state, request, *named, *map(request.query.get, ("agent_id", "agentId")))
    result = forget_one(
        state.store, request.match_info["id"], force=force, actor=actor(body, request), owner=owner
    )
    result["status"] = _BY_ID_STATUS.get(result["status"], result["status"])
    status = 200 if result["status"] == "deleted" else _PATCH_STATUS[result["status"]]
    return json_response(result, status)


def _positive_int(value: object) -> int | bool | None:
    """A positive integer, None when absent, False when present but not one."""
    if value is None:
        return None
    if isinstance(value, str):
        value = int(value) if value.strip().isdigit() else value
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return False
    return value


async def recover_memory(request: web.Request) -> web.Response:
    """``POST /api/memory/{id}/recover``: TS recovers any id (no agent check); the Rust
    flavor scopes it to the acting agent like DELETE by id."""
    state = state_of(request)
    try:
        parsed = json.loads(await request.text() or "{}")
    except ValueError:
        return error("Invalid JSON body", 400)
    if not isinstance(parsed, dict):
        return error("Invalid JSON body", 400)
    reason = text_or_none(parsed.get("reason")) or text_or_none(request.query.get("reason"))
    if reason is None:
        return error("reason is required", 400)
    from_body = _positive_int(parsed.get("if_version"))
    from_query = _positive_int(request.query.get("if_version"))
    if from_body is False or from_query is False:
        return error("if_version must be a positive integer", 400)
    if_version = from_body if from_body is not None else from_query
    assert if_version is None or isinstance(if_version, int)
    owner = mutation_owner(state, request, *map(request.query.get, ("agent_id", "agentId")))
    status, body = recover_one(
        state.store,
        request.match_info["id"],
        if_version=if_version,
        actor=actor(parsed, request),
        owner=owner,
    )
    return json_response(body, status)
