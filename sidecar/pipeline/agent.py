"""Step 2: which agent the request acts as, resolved the way the daemon does it."""

from __future__ import annotations

from aiohttp import web

from sidecar import keys
from sidecar.memory.owner_checks import daemon_error
from sidecar.memory.proxy import AGENT_ROUTED_HEADER, EarlyResponse
from sidecar.memory.routing import current_view, decide
from sidecar.pipeline.intake import Intake
from signet_cluster.daemon.agent_resolution import (
    DEFAULT_AGENT,
    RouteKind,
    daemon_honours_agent,
    resolve_agent,
)


def resolve(request: web.Request, kind: RouteKind, intake: Intake) -> str:
    """A hop names its agent in a header (the sender resolved it already); otherwise the
    daemon's own rule: body, query, headers, session key, else `default`.

    Where the daemon that would serve the agent ignores the name (TS knowledge expand acts
    as `default`), the request acts as `default`, which is node-local: it is served here,
    so no node's `default` (private memories included) answers for another node's caller.
    Raises EarlyResponse (421) for a hop this node's daemon could only serve as `default`."""
    app = request.app
    if intake.hop and (routed := request.headers.get(AGENT_ROUTED_HEADER)):
        flavor = app[keys.WATCHER].snapshot.flavor
        if routed != DEFAULT_AGENT and not daemon_honours_agent(kind, request.path, flavor):
            raise EarlyResponse(_not_served_as(app, routed, flavor))
        return routed
    agent = resolve_agent(
        kind, query=request.query, headers=request.headers, body=intake.parsed
    ).agent_id
    if agent != DEFAULT_AGENT and not daemon_honours_agent(
        kind, request.path, _owner_flavor(app, agent)
    ):
        return DEFAULT_AGENT
    return agent


def _owner_flavor(app: web.Application, agent: str) -> str:
    """The flavor of the daemon that would serve `agent` (this one for a local agent)."""
    target = decide(app, agent)
    view = current_view(app) if target.kind != "local" else None
    peer = view.peer(target.node_id) if view is not None else None
    return peer.daemon.flavor if peer is not None else app[keys.WATCHER].snapshot.flavor


def _not_served_as(app: web.Application, agent: str, flavor: str) -> web.Response:
    node = app[keys.IDENTITY].node_id
    return daemon_error(
        421,
        f"node {node}'s daemon ({flavor}) would answer this request as its own `default` "
        f"agent, not as {agent!r}, so it is not served for another node; the sending node "
        "serves it as its own `default` (its view of this node's flavor is out of date)",
        code="agent_not_honoured",
        agent=agent,
        node=node,
    )
