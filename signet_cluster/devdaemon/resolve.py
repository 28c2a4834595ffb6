"""Which agent a request acts as, resolved the way each daemon does it (contract §2, §3)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .policy import ReadScope, load_scope
from .state import DaemonState
from .util import session_agent, text_or_none

SESSION_HEADER = "x-signet-session-key"
AGENT_HEADER = "x-signet-agent-id"


def read_scope(state: DaemonState, agent_id: str) -> ReadScope | None:
    """The reader's policy; ``None`` on 0.58.1, which has no agents and filters nothing."""
    if not state.config.has_agents:
        return None
    return load_scope(state.store.db, agent_id)


def recall_agent(state: DaemonState, body: dict[str, Any], request: web.Request) -> str:
    """POST recall: body ``agentId`` only (the header is ignored); TS also takes an
    ``agent:<id>:`` session key from the body or header. Falls back to ``default``."""
    explicit = text_or_none(body.get("agentId"))
    if explicit is not None:
        return explicit
    if not state.config.is_rust:
        key = text_or_none(body.get("sessionKey")) or request.headers.get(SESSION_HEADER)
        bound = session_agent(key)
        if bound is not None:
            return bound
    return "default"


def query_agent(request: web.Request) -> str:
    """GET by id: query ``agentId``/``agent_id``, header, session-key header, ``default``."""
    for candidate in (
        request.query.get("agentId"),
        request.query.get("agent_id"),
        request.headers.get(AGENT_HEADER),
    ):
        agent = text_or_none(candidate)
        if agent is not None:
            return agent
    return session_agent(request.headers.get(SESSION_HEADER)) or "default"


def mutation_owner(state: DaemonState, request: web.Request, *named: object) -> str | None:
    """Rust scopes modify, forget and PATCH/DELETE by id to the agent they act as: the first
    agent the request ``named`` (the route's own fields, in order), else the
    ``x-signet-agent-id`` header, else ``default``. TS scopes nothing (None)."""
    if not state.config.is_rust:
        return None
    for candidate in (*named, request.headers.get(AGENT_HEADER)):
        agent = text_or_none(candidate)
        if agent is not None:
            return agent
    return "default"


def actor(body: dict[str, Any], request: web.Request) -> str:
    """Who a mutation is attributed to (``changed_by``, then ``x-signet-actor``)."""
    return (
        text_or_none(body.get("changed_by"))
        or text_or_none(request.headers.get("x-signet-actor"))
        or "api"
    )
