"""Which agent a memory-API request acts as, resolved the way the Signet daemon does it.

The daemon does not read the agent from the same places on every route (contract §3): POST
recall takes the body ``agentId`` or an ``agent:<id>:`` session key and ignores the
``x-signet-agent-id`` header; GET search and get-by-id read the query and the header; the
dashboard search ``GET /memory/search`` is blind to agents. The sidecar routes by exactly
that reading, so a request reaches the daemon that holds the agent the daemon itself would
have used; where the TS and Rust daemons differ, the sources of both are taken (a source
only one flavor reads is harmless on the other because the owner's sidecar makes the agent
explicit for its own daemon, see `adapt.py`). Anything else reads as ``default``.

Pure functions over already-parsed request parts; no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

DEFAULT_AGENT = "default"
AGENT_HEADER = "x-signet-agent-id"
SESSION_HEADER = "x-signet-session-key"


class RouteKind(enum.Enum):
    """The memory-API routes the sidecar serves itself (everything else passes through)."""

    RECALL = "recall"  # POST /api/memory/recall
    SEARCH = "search"  # GET /api/memory/search
    LEGACY_SEARCH = "legacy_search"  # GET /memory/search (dashboard search)
    GET_BY_ID = "get_by_id"  # GET /api/memory/{id}
    REMEMBER = "remember"  # POST /api/memory/remember, /api/memory/save
    HOOK_REMEMBER = "hook_remember"  # POST /api/hook/remember
    MODIFY = "modify"  # POST /api/memory/modify
    FORGET = "forget"  # POST /api/memory/forget
    PATCH_BY_ID = "patch_by_id"  # PATCH /api/memory/{id}
    DELETE_BY_ID = "delete_by_id"  # DELETE /api/memory/{id}
    RECOVER = "recover"  # POST /api/memory/{id}/recover (undo a soft delete)
    HOOK = "hook"  # POST /api/hooks/{name} (session-start and the other session hooks)
    EXPAND = "expand"  # POST /api/knowledge/expand, /api/knowledge/expand/session

    @property
    def is_list_read(self) -> bool:
        """Reads answered with a result list (the ones federation fans out)."""
        return self in (RouteKind.RECALL, RouteKind.SEARCH, RouteKind.LEGACY_SEARCH)

    @property
    def checks_ownership(self) -> bool:
        """Mutations of existing memories by id: TS does not scope them by agent."""
        return self in (
            RouteKind.MODIFY,
            RouteKind.FORGET,
            RouteKind.PATCH_BY_ID,
            RouteKind.DELETE_BY_ID,
            RouteKind.RECOVER,
        )


# Where each route's agent comes from, in the daemon's order. ("body", k) is a body field,
# ("query", k) a query parameter, ("header", k) a header; "session" marks a session key whose
# `agent:<id>:` prefix names the agent.
Source = tuple[str, str, bool]  # (place, name, is_session_key)

_BODY_AGENT: Source = ("body", "agentId", False)
_BODY_SESSION: Source = ("body", "sessionKey", True)
_HEADER_AGENT: Source = ("header", AGENT_HEADER, False)
_HEADER_SESSION: Source = ("header", SESSION_HEADER, True)
_QUERY_IDS: tuple[Source, ...] = (("query", "agentId", False), ("query", "agent_id", False))

SOURCES: dict[RouteKind, tuple[Source, ...]] = {
    # TS recall: body agentId, then a session key from the body or the header.
    RouteKind.RECALL: (_BODY_AGENT, _BODY_SESSION, _HEADER_SESSION),
    RouteKind.SEARCH: (
        *_QUERY_IDS,
        _HEADER_AGENT,
        ("query", "sessionKey", True),
        ("query", "session_key", True),
        _HEADER_SESSION,
    ),
    # TS answers the dashboard search from every agent's rows; Rust reads it as default.
    RouteKind.LEGACY_SEARCH: (),
    RouteKind.GET_BY_ID: (*_QUERY_IDS, _HEADER_AGENT, _HEADER_SESSION),
    RouteKind.PATCH_BY_ID: (*_QUERY_IDS, _HEADER_AGENT, _HEADER_SESSION),
    RouteKind.DELETE_BY_ID: (*_QUERY_IDS, _HEADER_AGENT, _HEADER_SESSION),
    # TS reads no agent on recover (it is unscoped, like PATCH/DELETE by id); the sidecar
    # takes the by-id sources so a named agent is routed and its ownership checked.
    RouteKind.RECOVER: (*_QUERY_IDS, _HEADER_AGENT, _HEADER_SESSION),
    # Remember names its agent by body agentId or the session-key *header*; a body
    # sessionKey does not name it (TS ignores it; Rust only checks it against agentId).
    RouteKind.REMEMBER: (_BODY_AGENT, _HEADER_SESSION),
    # Rust's /api/hook/remember also reads the agent header.
    RouteKind.HOOK_REMEMBER: (_BODY_AGENT, _HEADER_AGENT, _HEADER_SESSION),
    # Only Rust scopes modify/forget; it reads agent_id/agentId, then the header.
    RouteKind.MODIFY: (("body", "agent_id", False), _BODY_AGENT, _HEADER_AGENT),
    RouteKind.FORGET: (("body", "agent_id", False), _BODY_AGENT, _HEADER_AGENT),
    RouteKind.HOOK: (_BODY_AGENT, _BODY_SESSION, _HEADER_SESSION),
    # Rust reads the body agentId (TS uses the token's agent, else default).
    RouteKind.EXPAND: (_BODY_AGENT,),
}


EXPAND_PATH = "/api/knowledge/expand"


def daemon_honours_agent(kind: RouteKind, path: str, flavor: str) -> bool:
    """Whether a daemon of ``flavor`` acts as the agent a request names on this route.

    TS (and legacy) ``POST /api/knowledge/expand`` never reads the body's agent: it expands
    as the token's agent, else ``default`` (contract §3; ``/expand/session`` does read it).
    Rust reads the body ``agentId``. Every other route here acts as the agent it names."""
    return not (kind is RouteKind.EXPAND and path == EXPAND_PATH and flavor != "rust")


@attrs.frozen
class Resolved:
    agent_id: str
    source: str  # e.g. "body.agentId", "header.x-signet-session-key", "default"


def session_agent(session_key: object) -> str | None:
    """The agent of an OpenClaw-style ``agent:<id>:<rest>`` session key (``agent-id.ts``)."""
    if not isinstance(session_key, str) or not session_key:
        return None
    parts = session_key.split(":", 2)
    if len(parts) < 2 or parts[0] != "agent":
        return None
    return parts[1].strip() or None


def _text(value: object) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def resolve_agent(
    kind: RouteKind,
    *,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: Mapping[str, Any] | None,
) -> Resolved:
    """The agent the daemon would act as for this request (``default`` when none is named)."""
    session_seen = False
    for place, name, is_session in SOURCES[kind]:
        if place == "body":
            raw: object = body.get(name) if body is not None else None
        elif place == "query":
            raw = query.get(name)
        else:
            raw = headers.get(name)
        if is_session:
            # The daemon takes *one* session key (body first, then header); a key that is
            # not agent-scoped hides the later ones instead of falling through to them.
            if session_seen or _text(raw) is None:
                continue
            session_seen = True
            value = session_agent(raw)
        else:
            value = _text(raw)
        if value is not None:
            return Resolved(value, f"{place}.{name}")
    return Resolved(DEFAULT_AGENT, "default")
