"""Sidecars over the real Signet daemons: the cluster forms and routes a write to its owner."""

from __future__ import annotations

import json
import sqlite3
import uuid

from .cluster_helpers import Cluster, wait_for
from .real_signet import LAYOUT, RealDaemon, needs_real_signet, real_cluster, real_daemons

__all__ = ["real_daemons"]  # the fixture, used by name

pytestmark = needs_real_signet


async def test_a_remember_through_any_sidecar_lands_on_the_owner(
    cluster: Cluster, real_daemons: dict[str, RealDaemon]
) -> None:
    nodes = await real_cluster(cluster, real_daemons)
    agents = {a for _, roster in LAYOUT.values() for a, _ in roster}

    async def routed() -> bool:
        status, body = await cluster.get(nodes["node3"].url + "/api/cluster/routes")
        return status == 200 and agents <= {r["agent_id"] for r in body["routes"]}

    await wait_for(routed, timeout=15, what="every agent routed")
    token = uuid.uuid4().hex
    status, body = await cluster.post(
        nodes["node3"].url + "/api/memory/remember",
        {"content": f"bob likes {token}", "agentId": "bob"},
    )
    assert status == 200, body
    rows = json.dumps(body)
    assert "id" in rows
    # It is in node1's database (bob's owner) and nowhere else.
    for name, daemon in real_daemons.items():
        db = daemon.workspace / "memory" / "memories.db"
        if not db.exists():
            continue
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            found = conn.execute(
                "SELECT count(*) FROM memories WHERE content LIKE ?", (f"%{token}%",)
            ).fetchone()[0]
        assert found == (1 if name == "node1" else 0), name
