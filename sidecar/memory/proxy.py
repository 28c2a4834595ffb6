"""Serving one memory-API request: on this node's daemon (adapted to its flavor, ownership
checked) or relayed to the owner's sidecar in one hop.

`ProxyState` holds what that needs for the life of the app (daemon connection pool, the
read-only view of the daemon's `memories.db`, Rust sessions) and is
created and closed by `proxy_ctx`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import attrs
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar import keys
from sidecar.keys import PROXY
from sidecar.membership.peers import ForwardFailed, RawResponse
from sidecar.memory.forward import DaemonClient, DaemonError, request_headers
from sidecar.memory.owner_checks import daemon_error
from sidecar.memory.routing import RouteCache, Target, retry_after
from sidecar.memory.rust_sessions import RustSessions, not_active
from sidecar.security.auth import BEARER_HEADER, token_unverified
from signet_cluster.daemon.adapt import Plan, plan_request
from signet_cluster.daemon.agent_resolution import RouteKind, session_agent
from signet_cluster.daemon.ownership import MemoryOwnership

# Sent with every request relayed to another node: the agent it was routed for.
AGENT_ROUTED_HEADER = "x-signet-cluster-agent"
# Asks the owner to tag each hit with node and agent (an owner leg of a fan-out).
TAG_HEADER = "x-signet-cluster-tag"


@attrs.define
class ProxyState:
    daemon: DaemonClient
    ownership: MemoryOwnership
    sessions: RustSessions = attrs.Factory(RustSessions)
    routes: RouteCache = attrs.Factory(RouteCache)


class EarlyResponse(Exception):
    """A request answered by the sidecar itself (a refusal) before any daemon saw it."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


async def proxy_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    daemon = DaemonClient(settings.daemon_url, settings.daemon_timeout)
    daemon.on_unreachable = app[keys.WATCHER].daemon_failed
    ownership = MemoryOwnership(settings.workspace_path / "memory" / "memories.db")
    app[PROXY] = ProxyState(daemon=daemon, ownership=ownership)
    yield
    await daemon.close()
    await asyncio.to_thread(ownership.close)


def _too_large(limit: int) -> EarlyResponse:
    return EarlyResponse(
        daemon_error(
            413,
            f"request body is larger than this sidecar accepts ({limit} bytes, setting "
            "max_body_bytes)",
            code="body_too_large",
        )
    )


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole request body (cached on the request: the auth middleware may have read it
    to check a signature), refused with 413 past `limit` bytes and with 408 when it does not
    arrive within `timeout` seconds (a client trickling its body cannot hold a handler)."""
    if not request.body_exists:
        return b""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    try:
        if request.content.is_eof():
            return await request.read()  # all here already (the usual case): no timer
        async with asyncio.timeout(timeout):
            return await request.read()  # bounded by client_max_size = max_body_bytes
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except TimeoutError:
        raise EarlyResponse(
            daemon_error(
                408,
                f"request body not received within {timeout:g}s (setting body_timeout)",
                code="body_timeout",
            )
        ) from None


def parse_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None (then it reaches the daemon as sent, and the
    daemon answers with its own error)."""
    if not body:
        return None
    try:
        if body[:1] == b"{" and body[1:2] != b"\x00":
            # What json.loads would detect for these bytes (UTF-8), without the detection.
            parsed = json.loads(body.decode("utf-8", "surrogatepass"))
        else:
            parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: nesting deeper than the decoder's stack (`[[[[...`).
        return None
    return parsed if isinstance(parsed, dict) else None


def daemon_failure(exc: DaemonError) -> web.Response:
    status = 504 if exc.timed_out else 503
    return daemon_error(status, exc.message, code="daemon_unavailable")


def _path_qs(raw_path: str, path: str, plan: Plan, query: list[tuple[str, str]]) -> str:
    """The request line's path and query exactly as received, unless the plan changed them."""
    if plan.path == path and plan.query == query:
        return raw_path
    return plan.path + ("?" + urlencode(plan.query) if plan.query else "")


async def serve_local(
    request: web.Request,
    kind: RouteKind,
    agent: str,
    body: bytes,
    parsed: dict[str, Any] | None,
    *,
    explicit: bool,
) -> RawResponse:
    """Serve on this node's daemon, the body adapted to its flavor. Ownership of the ids a
    write names was checked before (sidecar.pipeline.ownership)."""
    return await serve_on_daemon(
        request.app,
        kind,
        agent,
        method=request.method,
        raw_path=request.raw_path,
        path=request.rel_url.raw_path,
        query=list(request.rel_url.query.items()) if request.query_string else [],
        headers=request.headers,
        body=body,
        parsed=parsed,
        explicit=explicit,
    )


async def serve_on_daemon(
    app: web.Application,
    kind: RouteKind,
    agent: str,
    *,
    method: str,
    raw_path: str,
    path: str,
    query: list[tuple[str, str]],
    headers: CIMultiDictProxy[str] | CIMultiDict[str],
    body: bytes,
    parsed: dict[str, Any] | None,
    explicit: bool,
) -> RawResponse:
    """`serve_local` from the parts of a request (the fast lane has no `web.Request`)."""
    state = app[PROXY]
    flavor = app[keys.WATCHER].snapshot.flavor
    plan = plan_request(
        kind,
        flavor,
        agent,
        method=method,
        path=path,
        query=query,
        headers=headers,
        body=parsed,
        explicit=explicit,
    )
    sent = request_headers(headers)
    for name, value in plan.set_headers.items():
        sent[name] = value
    own_session = False
    if plan.session_for is not None and plan.body is not None:
        given = plan.body.get("sessionKey")
        if session_agent(given) != plan.session_for:
            plan.body["sessionKey"] = await state.sessions.ensure(state.daemon, plan.session_for)
            plan.changed = own_session = True
    data = json.dumps(plan.body).encode() if plan.changed and plan.body is not None else body
    path_qs = _path_qs(raw_path, path, plan, query)
    raw = await state.daemon.send(plan.method, path_qs, sent, data or None)
    again = own_session
    while (
        plan.session_for is not None and plan.body is not None and not_active(raw.status, raw.body)
    ):
        # The client's key was never opened, or the daemon restarted and lost every session:
        # retry with ours, opened again unless that was just tried (at most twice).
        plan.body["sessionKey"] = await state.sessions.ensure(
            state.daemon, plan.session_for, again=again
        )
        raw = await state.daemon.send(plan.method, path_qs, sent, json.dumps(plan.body).encode())
        if again:
            break
        again = True
    return raw


async def forward_to_owner(
    request: web.Request,
    target: Target,
    body: bytes,
    *,
    tag: bool = False,
    timeout: float | None = None,
) -> RawResponse:
    """Relay the client's request, as sent, to the owner's sidecar; raises ForwardFailed."""
    app = request.app
    headers: CIMultiDict[str] = request_headers(request.headers)
    headers[AGENT_ROUTED_HEADER] = target.agent_id
    if token_unverified(request):
        headers[BEARER_HEADER] = "unverified"
    if tag:
        headers[TAG_HEADER] = "1"
    return await app[keys.PEERS].forward(
        request.method,
        target.url,
        request.raw_path,
        headers=headers,
        body=body,
        timeout=timeout if timeout is not None else app[keys.SETTINGS].forward_timeout,
    )


def owner_unreachable(
    app: web.Application, target: Target, exc: ForwardFailed | None
) -> web.Response:
    """A write (or a single-object read) for an agent whose owner cannot be reached."""
    if exc is None:
        why = f"is {target.owner_state}"
        applied = "was not applied"
    elif not exc.connected:
        why = f"does not accept connections ({exc.message})"
        applied = "was not applied"
    else:
        why = f"did not answer ({exc.message})"
        # Remembers never get here (they are spooled); a modify, forget or delete may have
        # been applied, and has no idempotency key: the client should look before retrying.
        applied = "may or may not have been applied there; check its current state before retrying"
    response = daemon_error(
        503 if exc is None or not exc.connected else 504,
        f"agent {target.agent_id!r} lives on node {target.node_id} ({target.url}), which {why}; "
        f"the request {applied}",
        code="owner_unreachable",
        agent=target.agent_id,
        owner={"node_id": target.node_id, "url": target.url, "state": target.owner_state},
    )
    response.headers["Retry-After"] = retry_after(app)
    return response


def misrouted(app: web.Application, agent: str) -> web.Response:
    """A hop request for an agent this node does not own: the sender's table is stale."""
    node = app[keys.IDENTITY].node_id
    response = daemon_error(
        421,
        f"node {node} does not own agent {agent!r}: the sending node's routing table is out "
        "of date; the request was not applied (it is never routed a second time)",
        code="misrouted",
        agent=agent,
        node=node,
    )
    response.headers["Retry-After"] = retry_after(app)
    return response
