"""Health, status, features, version, the agent roster, session start and knowledge expand."""

from __future__ import annotations

import re
import sqlite3
import uuid
from typing import Any

from aiohttp import web

from signet_cluster.daemon.roster import load_manifest

from . import status as payloads
from .http import (
    AGENT_SHAPE,
    EXPAND_SHAPE,
    SESSION_START_SHAPE,
    BodyRejected,
    error,
    json_response,
    read_object,
    text_response,
)
from .knowledge import expand
from .resolve import SESSION_HEADER, read_scope
from .search import session_start_memories
from .state import DaemonState, state_of
from .util import session_agent, text_or_none

SESSION_START_LIMIT = 10
_RUST_AGENT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


async def health(request: web.Request) -> web.Response:
    state = state_of(request)
    return json_response(payloads.health(state, payloads.listening_port(request, state)))


async def api_status(request: web.Request) -> web.Response:
    state = state_of(request)
    return json_response(payloads.status(state, payloads.listening_port(request, state)))


async def api_features(request: web.Request) -> web.Response:
    return json_response(payloads.features(state_of(request)))


async def api_version(request: web.Request) -> web.Response:
    return json_response(payloads.version(state_of(request)))


# -- agents ------------------------------------------------------------------------------


async def list_agents(request: web.Request) -> web.Response:
    return json_response({"agents": state_of(request).store.list_agents()})


async def get_agent(request: web.Request) -> web.Response:
    row = state_of(request).store.agent_by_name(request.match_info["name"])
    return json_response(row) if row is not None else error("Agent not found", 404)


async def create_agent(request: web.Request) -> web.Response:
    state = state_of(request)
    rust = state.config.is_rust
    try:
        body = await read_object(request, rust=rust, shape=AGENT_SHAPE)
    except BodyRejected as rejected:
        return rejected.response
    name = text_or_none(body.get("name"))
    if name is None:
        return error("name is required", 400)
    if rust and name == "default":
        return error("Cannot use reserved name 'default'", 400)
    if rust and not _RUST_AGENT_NAME.match(name):
        return error("Name must be lowercase alphanumeric + hyphens only", 400)
    policy = body.get("read_policy", "isolated")
    if not isinstance(policy, str):
        return error("memory must be one of: isolated, shared, group", 400)
    group = text_or_none(body.get("policy_group"))
    try:
        row = state.store.create_agent(name, policy, group)
    except sqlite3.IntegrityError as exc:
        if rust:
            return error(str(exc), 500)
        # TS registers no onError handler: Hono answers its default plain-text 500.
        return text_response("Internal Server Error", 500)
    return json_response(row, 201)


async def delete_agent(request: web.Request) -> web.Response:
    state = state_of(request)
    name = request.match_info["name"]
    if name == "default":
        return error("Cannot remove the default agent", 400)
    row = state.store.agent_by_name(name)
    if row is None:
        return error("Agent not found", 404)
    purge = request.query.get("purge") == "true"
    state.store.delete_agent(str(row["id"]), purge=purge)
    return json_response({"success": True, "purged": purge})


# -- hooks -------------------------------------------------------------------------------


def _identity(state: DaemonState) -> dict[str, Any]:
    agent = load_manifest(state.config.path).get("agent")
    identity: dict[str, Any] = {"name": "Agent"}
    if isinstance(agent, dict):
        if isinstance(agent.get("name"), str) and agent["name"]:
            identity["name"] = agent["name"]
        if isinstance(agent.get("description"), str):
            identity["description"] = agent["description"]
    return identity


def _inject(memories: list[dict[str, Any]]) -> str:
    lines = [f"- {memory['content']}" for memory in memories]
    header = f"## Relevant Memories (auto-loaded | {len(memories)} results)"
    return "[signet active]\nYou have persistent memory managed by Signet.\n\n" + "\n".join(
        [header, *lines]
    )


async def session_start(request: web.Request) -> web.Response:
    """``POST /api/hooks/session-start``: claims the session per runtime path and injects
    the memories the agent may read. On Rust an active claim is what later non-default
    writes require."""
    state = state_of(request)
    rust = state.config.is_rust
    try:
        body = await read_object(request, rust=rust, shape=SESSION_START_SHAPE)
    except BodyRejected as rejected:
        if rust:
            return rejected.response
        return error("Hook execution failed", 500)
    if text_or_none(body.get("harness")) is None:
        return error("harness is required", 400)
    if request.headers.get("x-signet-no-hooks") == "1":
        return json_response({"inject": "", "memories": []})
    key = text_or_none(body.get("sessionKey"))
    if key is None and not rust:
        key = text_or_none(request.headers.get(SESSION_HEADER))
    explicit, bound = text_or_none(body.get("agentId")), session_agent(key)
    if rust and explicit and bound and explicit != bound:
        return error("agent_id does not match session scope", 400)
    agent = explicit or bound or "default"
    if key is None and rust:
        key = str(uuid.uuid4())
    header_path, body_path = request.headers.get("x-signet-runtime-path"), body.get("runtimePath")
    # Rust prefers the header, TS the body field.
    path = (header_path or body_path) if rust else (body_path or header_path)
    if key is not None and path in ("plugin", "legacy"):
        claimed = state.sessions.claims.get(key)
        if claimed is not None and claimed != path:
            return error(f"session claimed by {claimed} path", 409)
        state.sessions.claims[key] = str(path)
    if state.config.has_agents and not rust:
        state.store.ensure_agent_registered(agent)
    if key is not None and key in state.sessions.started:
        stub: dict[str, Any] = {"inject": "", "memories": []}
        return json_response(stub | {"deduped": True} if rust else stub)
    if key is not None:
        state.sessions.started.add(key)
    rows = session_start_memories(state.store, read_scope(state, agent), SESSION_START_LIMIT)
    memories = [
        {name: row[name] for name in ("id", "content", "type", "importance", "created_at")}
        for row in rows
    ]
    return json_response(
        {"identity": _identity(state), "memories": memories, "inject": _inject(memories)}
    )


async def knowledge_expand(request: web.Request) -> web.Response:
    state = state_of(request)
    rust = state.config.is_rust
    try:
        body = await read_object(request, rust=rust, shape=EXPAND_SHAPE)
    except BodyRejected as rejected:
        if rust:
            return rejected.response
        body = {}  # TS reads a malformed body as {}
    name = text_or_none(body.get("entity"))
    if name is None:
        return error("entity name is required", 400)
    # TS ignores any agent in the body (the token's agent, else default); Rust reads it.
    agent = (text_or_none(body.get("agentId")) or "default") if rust else "default"
    store = None if state.config.is_legacy else state.store
    status_code, payload = expand(store, name, agent)
    return json_response(payload, status_code)
