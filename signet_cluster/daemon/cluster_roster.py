"""The cluster's agent roster in the daemon's own `GET /api/agents` shape.

Each node's rows are its daemon's rows as the daemon wrote them (contract §2: `id`, `name`,
`read_policy`, `policy_group`, `created_at`, `updated_at`, ordered by `name`). Where a daemon
cannot be asked (a legacy daemon has no agents API, a node is down or does not answer) the
rows are built from what the sidecar knows of the roster (`AgentInfo`), with the timestamps
it does not know left null (`cluster.source` then says where the row came from). Every row gets `cluster: {node_id, state}`; a name claimed by
two nodes also gets `cluster.collision`, on every claimant's row, so it cannot go unseen.
`default` is node-local: only the asking node's own `default` row is listed.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from signet_cluster.daemon.agent_resolution import DEFAULT_AGENT
from signet_cluster.protocol import AgentInfo, Collision

Row = dict[str, Any]


def row_from_info(agent: AgentInfo) -> Row:
    """A daemon-shaped row for an agent known only from a roster (no daemon row to show)."""
    return {
        "id": agent.id,
        "name": agent.id,  # the daemons create every agent with id = name
        "read_policy": agent.read_policy,
        "policy_group": agent.policy_group,
        "created_at": agent.created_at,
        "updated_at": None,
    }


def daemon_rows(answer: object) -> list[Row] | None:
    """The rows of a daemon's `{"agents": [...]}` answer; None when it is not that shape."""
    if not isinstance(answer, dict) or not isinstance(answer.get("agents"), list):
        return None
    return [r for r in answer["agents"] if isinstance(r, dict) and isinstance(r.get("id"), str)]


@attrs.frozen(kw_only=True)
class NodeRoster:
    """One node's part of the cluster roster, and how it was obtained."""

    node_id: str
    state: str  # the node's state in the registry: alive, down, ...
    rows: tuple[Row, ...]
    source: str  # "daemon" (its daemon's own rows) or "registry" (built from AgentInfo)
    status: str = "ok"  # ok | error | timeout | down: was the node's daemon read?
    error: str | None = None
    # Agents its sidecar routes that its daemon has no row for (`agent.yaml` roster entries
    # and `agents/<name>/` folders a Rust daemon never syncs): rows built from the roster.
    roster_only: frozenset[str] = frozenset()


def with_roster_agents(
    rows: list[Row], roster: Iterable[AgentInfo]
) -> tuple[list[Row], frozenset[str]]:
    """A daemon's rows plus a row for each roster agent it has no row for, by name."""
    have = {row["id"] for row in rows}
    extra = [row_from_info(a) for a in roster if a.id not in have]
    merged = sorted([*rows, *extra], key=lambda row: str(row.get("name") or row["id"]))
    return merged, frozenset(row["id"] for row in extra)


def collision_block(collision: Collision) -> dict[str, Any]:
    return {
        "winner": collision.winner,
        "claimants": list(collision.claimants),
        "rule": collision.rule,
    }


def cluster_rows(
    local_node: str, rosters: Iterable[NodeRoster], collisions: Iterable[Collision]
) -> list[Row]:
    """Every node's rows in one list, ordered by name as a daemon orders them (a collided
    name lists its winner first). Only `local_node` contributes a `default` row."""
    by_agent = {c.agent_id: c for c in collisions}
    merged: list[tuple[tuple[str, int, str], Row]] = []
    for roster in rosters:
        for row in roster.rows:
            agent_id = row["id"]
            if agent_id == DEFAULT_AGENT and roster.node_id != local_node:
                continue
            block: dict[str, Any] = {"node_id": roster.node_id, "state": roster.state}
            collision = by_agent.get(agent_id)
            if collision is not None:
                block["collision"] = collision_block(collision)
            if roster.source != "daemon":
                block["source"] = roster.source
            elif agent_id in roster.roster_only:
                block["source"] = "roster"
            name = row.get("name")
            name = name if isinstance(name, str) else str(agent_id)
            loser = 1 if collision is not None and collision.winner != roster.node_id else 0
            merged.append(((name, loser, roster.node_id), {**row, "cluster": block}))
    merged.sort(key=lambda item: item[0])
    return [row for _, row in merged]


def nodes_block(rosters: Iterable[NodeRoster]) -> list[dict[str, Any]]:
    """Per node: where its rows came from, and why when its daemon could not be read."""
    return [
        {
            "node_id": r.node_id,
            "state": r.state,
            "status": r.status,
            "source": r.source,
            "agents": sum(1 for row in r.rows if row.get("id") != DEFAULT_AGENT),
            "error": r.error,
        }
        for r in rosters
    ]
