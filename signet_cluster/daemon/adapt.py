"""One client body for every daemon flavor: the serving sidecar rewrites a request where the
TS and Rust daemons disagree (contract §5, "Differences a sidecar has to handle").

- recall: ``importance_min`` (TS) ⇄ ``importanceMin`` (Rust); Rust ignores session keys, so
  an agent named by one becomes an explicit ``agentId``.
- modify: flat patches (TS) ⇄ nested ``patch: {...}`` (Rust); Rust scopes modify and forget
  to the body's agent, so the resolved agent is written there.
- remember and hooks: Rust reads the session key from the body only, and refuses
  non-default-agent (or private/scoped) writes without an *active* ``agent:<id>:`` session
  key: `Plan.session_for` tells the caller to supply one (see `sidecar/memory/rust_sessions.py`).
- GET /api/memory/search has no agent parameter on Rust: for a named agent it becomes the
  equivalent POST recall.
- Requests that arrived from another node (``explicit``) always name their agent in the
  field the daemon reads on that route, so the owner's daemon acts as exactly that agent.

Pure: works on parsed bodies and query pairs; the caller serialises only when ``changed``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from signet_cluster.daemon.agent_resolution import (
    AGENT_HEADER,
    DEFAULT_AGENT,
    SESSION_HEADER,
    RouteKind,
)

_PATCH_FIELDS = ("content", "type", "tags", "importance", "pinned")
# GET /api/memory/search parameters that have a recall body equivalent.
_SEARCH_TO_RECALL = {
    "limit": "limit",
    "type": "type",
    "tags": "tags",
    "who": "who",
    "importance_min": "importanceMin",
    "since": "since",
    "until": "until",
    "project": "project",
    "scope": "scope",
}


@attrs.define
class Plan:
    """What to send to the daemon instead of the client's request."""

    method: str
    path: str
    body: dict[str, Any] | None
    query: list[tuple[str, str]]
    set_headers: dict[str, str] = attrs.Factory(dict)
    changed: bool = False  # body or query differ from what the client sent
    # Rust: the write needs an active `agent:<id>:` session key for this agent in the body.
    session_for: str | None = None


def _number(value: str) -> int | float | None:
    try:
        return int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            return None
    # "inf" or "nan" would go out as the JSON tokens Infinity/NaN, which no daemon parses.
    return number if math.isfinite(number) else None


def plan_request(
    kind: RouteKind,
    flavor: str,
    agent: str,
    *,
    method: str,
    path: str,
    query: list[tuple[str, str]],
    headers: Mapping[str, str],
    body: dict[str, Any] | None,
    explicit: bool,
) -> Plan:
    """Adapt one request for a daemon of ``flavor`` acting as ``agent``.

    ``body`` is the parsed JSON object (``None`` when there is none or it is not an object:
    then the bytes go to the daemon unchanged and it answers with its own error).
    ``explicit`` is set for requests routed here from another node.
    """
    plan = Plan(
        method=method, path=path, body=dict(body) if body is not None else None, query=query
    )
    rust = flavor == "rust"
    named = agent != DEFAULT_AGENT
    if rust and plan.body is not None:
        # axum answers 415 without it; TS does not care.
        plan.set_headers["Content-Type"] = "application/json"
    if kind is RouteKind.RECALL and plan.body is not None:
        _recall(plan, rust=rust, agent=agent, force_agent=named and (explicit or rust))
    elif kind is RouteKind.SEARCH:
        if rust and named:
            _search_as_recall(plan, agent)
        elif explicit and named:
            _query_agent(plan, agent)
    elif kind is RouteKind.GET_BY_ID:
        if explicit and named:
            _query_agent(plan, agent)
    elif kind in (RouteKind.PATCH_BY_ID, RouteKind.DELETE_BY_ID, RouteKind.RECOVER):
        # Rust scopes these by the agent header only: an agent named in the query (which
        # TS reads) must reach a Rust daemon as the header, local or routed.
        if named and (explicit or rust) and not headers.get(AGENT_HEADER):
            plan.set_headers[AGENT_HEADER] = agent
    elif kind in (RouteKind.REMEMBER, RouteKind.HOOK_REMEMBER, RouteKind.HOOK):
        if plan.body is not None:
            _remember(plan, kind, rust=rust, agent=agent, headers=headers, explicit=explicit)
    elif kind is RouteKind.MODIFY and plan.body is not None:
        _modify(plan, rust=rust, agent=agent)
    elif kind is RouteKind.FORGET and plan.body is not None:
        if rust and named:
            _body_agent(plan, agent, also=("agent_id",))
    elif kind is RouteKind.EXPAND and plan.body is not None and explicit and named:
        _body_agent(plan, agent)
    return plan


def _body_agent(plan: Plan, agent: str, also: tuple[str, ...] = ()) -> None:
    assert plan.body is not None
    if any(isinstance(plan.body.get(k), str) and plan.body[k].strip() for k in ("agentId", *also)):
        return
    plan.body["agentId"] = agent
    plan.changed = True


def _query_agent(plan: Plan, agent: str) -> None:
    if any(k in ("agentId", "agent_id") and v.strip() for k, v in plan.query):
        return
    plan.query = [*plan.query, ("agentId", agent)]
    plan.changed = True


def _recall(plan: Plan, *, rust: bool, agent: str, force_agent: bool) -> None:
    body = plan.body
    assert body is not None
    ours, theirs = (
        ("importanceMin", "importance_min") if rust else ("importance_min", "importanceMin")
    )
    if ours not in body and theirs in body:
        body[ours] = body[theirs]
        plan.changed = True
    if force_agent:
        _body_agent(plan, agent)


def search_as_recall_body(params: Mapping[str, str]) -> dict[str, Any]:
    """A GET search's query parameters as the equivalent recall body (no agent). A number
    that does not parse is left out, as TS reads it (NaN: no filter)."""
    body: dict[str, Any] = {}
    if "q" in params:
        body["query"] = params["q"]
    for name, field in _SEARCH_TO_RECALL.items():
        if name not in params:
            continue
        if name in ("limit", "importance_min"):
            number = _number(params[name])
            if number is not None:
                body[field] = number
        else:
            body[field] = params[name]
    if params.get("pinned") in ("1", "true"):
        body["pinned"] = True
    return body


def _search_as_recall(plan: Plan, agent: str) -> None:
    body = {"agentId": agent, **search_as_recall_body(dict(plan.query))}
    plan.method, plan.path, plan.query, plan.body = "POST", "/api/memory/recall", [], body
    plan.set_headers["Content-Type"] = "application/json"
    plan.changed = True


def _remember(
    plan: Plan,
    kind: RouteKind,
    *,
    rust: bool,
    agent: str,
    headers: Mapping[str, str],
    explicit: bool,
) -> None:
    body = plan.body
    assert body is not None
    named = agent != DEFAULT_AGENT
    if rust and not body.get("sessionKey") and headers.get(SESSION_HEADER):
        # Rust reads the session key from the body only.
        body["sessionKey"] = headers[SESSION_HEADER]
        plan.changed = True
    if named and (explicit or rust):
        _body_agent(plan, agent)
    if rust and kind is not RouteKind.HOOK:
        visibility = str(body.get("visibility") or "global").strip().lower()
        scoped = named or visibility != "global" or bool(body.get("scope"))
        if scoped:
            plan.session_for = agent


def _modify(plan: Plan, *, rust: bool, agent: str) -> None:
    body = plan.body
    assert body is not None
    patches = body.get("patches")
    if isinstance(patches, list):
        converted = [_nest(p) if rust else _flatten(p) for p in patches]
        if converted != patches:
            body["patches"] = converted
            plan.changed = True
        if rust and not body.get("reason"):
            # Rust has one top-level reason; TS accepts one per patch.
            reasons = [p.get("reason") for p in patches if isinstance(p, dict)]
            first = next((r for r in reasons if isinstance(r, str) and r.strip()), None)
            if first is not None:
                body["reason"] = first
                plan.changed = True
    if rust and agent != DEFAULT_AGENT:
        _body_agent(plan, agent, also=("agent_id",))


def _nest(patch: object) -> object:
    if not isinstance(patch, dict) or "patch" in patch:
        return patch
    nested = {k: patch[k] for k in _PATCH_FIELDS if k in patch}
    out: dict[str, Any] = {"id": patch.get("id"), "patch": nested}
    if "if_version" in patch:
        out["if_version"] = patch["if_version"]
    return out


def _flatten(patch: object) -> object:
    if not isinstance(patch, dict) or not isinstance(patch.get("patch"), dict):
        return patch
    out = {k: v for k, v in patch.items() if k != "patch"}
    for key, value in patch["patch"].items():
        out.setdefault(key, value)
    return out
