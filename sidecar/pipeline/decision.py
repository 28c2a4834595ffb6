"""Step 3: what to do with the request, decided once from the agent and the routing table."""

from __future__ import annotations

from typing import Literal

import attrs
from aiohttp import web

from sidecar.federation.fanout import federates
from sidecar.keys import PROXY
from sidecar.memory.routing import Target, owns
from sidecar.pipeline.intake import Intake
from signet_cluster.daemon.agent_resolution import RouteKind

Action = Literal["local", "forward", "federate", "unreachable", "misrouted"]

# Only new memories are kept for later: modify/forget/delete depend on the memory's state
# at the owner, so they get 503 while it is unreachable.
SPOOLABLE = frozenset({RouteKind.REMEMBER, RouteKind.HOOK_REMEMBER})


@attrs.frozen(kw_only=True)
class Decision:
    action: Action
    agent: str
    # Where the agent lives (None for a hop: this node, by the sender's table).
    target: Target | None
    # A hop: the agent was named by the sending node, so the daemon is told it explicitly.
    explicit: bool
    # A remember: kept in the spool when its owner (or this daemon) cannot take it now.
    spoolable: bool


def decide_action(
    app: web.Application, kind: RouteKind, path: str, agent: str, intake: Intake
) -> Decision:
    spoolable = kind in SPOOLABLE and intake.parsed is not None
    if intake.hop:
        action: Action = "local" if owns(app, agent) else "misrouted"
        return Decision(action=action, agent=agent, target=None, explicit=True, spoolable=spoolable)
    target = app[PROXY].routes.target(app, agent)
    if federates(kind, path):
        action = "federate"
    elif target.kind == "local":
        action = "local"
    elif target.kind == "unreachable":
        action = "unreachable"
    else:
        action = "forward"
    return Decision(action=action, agent=agent, target=target, explicit=False, spoolable=spoolable)
