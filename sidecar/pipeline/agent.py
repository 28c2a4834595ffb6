"""Step 2: which agent the request acts as, resolved the way the daemon does it."""

from __future__ import annotations

from aiohttp import web

from sidecar.memory.proxy import AGENT_ROUTED_HEADER
from sidecar.pipeline.intake import Intake
from signet_cluster.daemon.agent_resolution import RouteKind, resolve_agent


def resolve(request: web.Request, kind: RouteKind, intake: Intake) -> str:
    """A hop names its agent in a header (the sender resolved it already); otherwise the
    daemon's own rule: body, query, headers, session key, else `default`."""
    if intake.hop and (routed := request.headers.get(AGENT_ROUTED_HEADER)):
        return routed
    return resolve_agent(
        kind, query=request.query, headers=request.headers, body=intake.parsed
    ).agent_id
