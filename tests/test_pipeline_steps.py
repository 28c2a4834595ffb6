"""Each step of the memory-API pipeline on its own, on a real sidecar's app state."""

from __future__ import annotations

import pytest

from sidecar.pipeline.decision import decide_action
from sidecar.pipeline.intake import Intake
from signet_cluster.daemon.agent_resolution import RouteKind

from .cluster_helpers import Cluster
from .routing_helpers import two_nodes

REMEMBER = Intake(body=b'{"content": "x"}', parsed={"content": "x"}, hop=False)


@pytest.mark.parametrize(
    ("kind", "path", "agent", "intake", "action", "spoolable"),
    [
        # alice lives on node a: a remember is forwarded there, and may be spooled.
        (RouteKind.REMEMBER, "/api/memory/remember", "alice", REMEMBER, "forward", True),
        # A recall federates whoever the reader is.
        (RouteKind.RECALL, "/api/memory/recall", "alice", REMEMBER, "federate", False),
        # default and unknown agents stay on this node.
        (RouteKind.REMEMBER, "/api/memory/remember", "default", REMEMBER, "local", True),
        (RouteKind.MODIFY, "/api/memory/modify", "nobody", REMEMBER, "local", False),
        # A hop for an agent this node does not own is misrouted (never routed again).
        (
            RouteKind.REMEMBER,
            "/api/memory/remember",
            "alice",
            Intake(body=b"", parsed=None, hop=True),
            "misrouted",
            False,
        ),
    ],
)
async def test_decision_step(
    cluster: Cluster,
    kind: RouteKind,
    path: str,
    agent: str,
    intake: Intake,
    action: str,
    spoolable: bool,
) -> None:
    _, b = await two_nodes(cluster)  # alice lives on a; b is where the request arrives
    decision = decide_action(b.app, kind, path, agent, intake)
    assert decision.action == action
    assert decision.spoolable is spoolable
    assert decision.explicit is intake.hop
    if not intake.hop:
        assert decision.target is not None
        assert decision.target.node_id == ("a" if agent == "alice" else "b")
