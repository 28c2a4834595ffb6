"""Step 4: a modify, forget or delete served here touches only the agent's own memories.

TS daemons do not scope these routes by agent, so the sidecar checks the owner of every id
(sidecar.memory.owner_checks) before the daemon sees the request.
"""

from __future__ import annotations

from aiohttp import web

from sidecar import keys
from sidecar.keys import PROXY
from sidecar.memory.owner_checks import refuse_foreign, refuse_unreadable
from sidecar.memory.proxy import EarlyResponse
from sidecar.pipeline.decision import Decision
from sidecar.pipeline.intake import Intake
from signet_cluster.daemon.agent_resolution import DEFAULT_AGENT, RouteKind


async def check_ownership(
    request: web.Request, kind: RouteKind, decision: Decision, intake: Intake
) -> None:
    """Raises EarlyResponse (403) when the request names another agent's memory, (400)
    when its body cannot be read to tell."""
    if kind.checks_ownership:
        unreadable = refuse_unreadable(kind, intake.body)
        if unreadable is not None:
            raise EarlyResponse(unreadable)
    if decision.action != "local" or not kind.checks_ownership or decision.agent == DEFAULT_AGENT:
        return
    app = request.app
    flavor = app[keys.WATCHER].snapshot.flavor
    if flavor not in ("ts", "rust"):
        return  # ts-legacy: one agent, nothing to check
    refusal = await refuse_foreign(
        app[PROXY].ownership,
        kind,
        decision.agent,
        flavor,
        intake.body,
        request.match_info.get("id"),
        app[keys.IDENTITY].node_id,
    )
    if refusal is not None:
        raise EarlyResponse(refusal)
