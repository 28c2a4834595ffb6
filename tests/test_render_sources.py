"""`status` says where its picture of the cluster comes from, and counts an unreachable etcd
as a problem (exit code 3), not only a stale coordinator table."""

from __future__ import annotations

from typing import Any

from cli.render import render_status
from signet_cluster.explain import cluster_problems


def status(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "node_id": "n1",
        "ttl_s": 5.0,
        "nodes": [
            {
                "node_id": "n1",
                "state": "alive",
                "url": "http://10.0.0.1:3860",
                "daemon": {"flavor": "ts", "version": "0.145.7", "healthy": True},
                "agents": [],
            }
        ],
        "routes": [],
        "collisions": [],
        "coordinators": [],
    }
    body.update(extra)
    return body


def test_etcd_source_and_outage_are_shown() -> None:
    """An etcd-backed node names etcd as its source; an etcd that does not answer is a problem."""
    healthy = status(
        view={"source": "etcd", "age_s": 0.1, "stale": False},
        etcd={"ok": True, "endpoint": "http://127.0.0.1:2379", "error": None},
    )
    assert "from etcd http://127.0.0.1:2379 (connected)" in render_status(healthy)
    assert cluster_problems(healthy) == []
    down = status(
        view={"source": "etcd", "age_s": 9.0, "stale": True},
        etcd={"ok": False, "endpoint": "http://127.0.0.1:2379", "error": "timed out"},
    )
    assert "UNREACHABLE (timed out)" in render_status(down)
    assert cluster_problems(down) == [
        "etcd does not answer (timed out): routing from the last view"
    ]


def test_stale_coordinator_table_is_a_problem() -> None:
    """A member whose coordinators are all silent reports the table's age."""
    stale = status(view={"source": "http://10.0.0.9:3860", "age_s": 12.5, "stale": True})
    assert "copy held by n1, 12.5s old" in render_status(stale)
    assert cluster_problems(stale) == ["routing table is 12.5s old: no coordinator answers"]
