"""Plain-text rendering of the sidecar's JSON answers for people; `--json` skips this."""

from __future__ import annotations

import time
from typing import Any

from signet_cluster.explain import cluster_problems

# Everything that makes the cluster degraded (shared with `explain` and the /cluster page).
status_problems = cluster_problems


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return "\n".join(lines)


def _age(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s ago"


def policy_text(policy: str | None, group: str | None) -> str:
    """`shared`, `isolated`, `group:ops`; a group policy without a group says what it does."""
    if policy == "group":
        return f"group:{group}" if group else "group (no group: acts as isolated)"
    return policy or "?"


def _agents(agents: list[dict[str, Any]]) -> str:
    parts = []
    for agent in agents:
        policy = agent.get("read_policy", "?")
        if policy == "group":
            # Compact in the table: a group without a group shows as `group:-`.
            policy = f"group:{agent.get('policy_group') or '-'}"
        parts.append(f"{agent['id']}({policy})")
    return " ".join(parts) or "-"


def _daemon(daemon: dict[str, Any]) -> tuple[str, str]:
    flavor = daemon.get("flavor") or "?"
    version = daemon.get("version") or "?"
    health = "healthy" if daemon.get("healthy") else "UNHEALTHY"
    return f"{flavor} {version}", health


def _spool_lines(nodes: list[dict[str, Any]], now: float) -> list[str]:
    """Nodes holding remembers for owners they cannot reach (hinted handoff), and writes an
    owner refused for good (dead letters); nothing when every spool is empty."""
    lines = []
    for node in nodes:
        spool = node.get("spool") or {}
        depth, dead = spool.get("depth") or 0, spool.get("dead_letters") or 0
        if not depth and not dead:
            continue
        parts = []
        if depth:
            oldest = spool.get("oldest_at")
            age = f", oldest {max(0.0, now - oldest):.0f}s old" if oldest else ""
            parts.append(f"{depth} write(s) waiting for their owner{age}")
        if dead:
            parts.append(
                f"{dead} refused by their owner for good (`spooled_write_refused` in its log)"
            )
        lines.append(f"  {node['node_id']}: " + "; ".join(parts))
    return ["Spooled writes:", *lines] if lines else []


def render_status(status: dict[str, Any], now: float | None = None) -> str:
    view = status.get("view") or {}
    if view.get("source") == "registry":
        source = f"coordinator {status.get('answered_by')}"
    elif view.get("source") == "standalone":
        source = f"{status.get('node_id')} (standalone: no coordinator)"
    elif view.get("source") == "etcd":
        etcd = status.get("etcd") or {}
        state = "connected" if etcd.get("ok") else f"UNREACHABLE ({etcd.get('error')})"
        source = f"{status.get('node_id')} from etcd {etcd.get('endpoint') or ''} ({state})"
    else:
        age = view.get("age_s")
        source = f"copy held by {status.get('node_id')}, {age}s old"
    lines = [f"Cluster as seen by {source}; TTL {status.get('ttl_s')}s"]
    rows = []
    for node in status.get("nodes", []):
        daemon, health = _daemon(node.get("daemon") or {})
        if node.get("state") != "alive":
            health = "unknown"  # the last report is stale once the node is down
        rows.append(
            [
                node["node_id"],
                node.get("state", "?"),
                node.get("url", "?"),
                daemon,
                health,
                _age(node.get("last_seen_age_s")),
                "yes" if node.get("coordinator") else "",
                f"{node.get('sidecar_version') or '?'}/p{node.get('protocol') or '?'}",
                _agents(node.get("agents", [])),
            ]
        )
    lines.append(
        table(
            ["NODE", "STATE", "URL", "DAEMON", "HEALTH", "HEARTBEAT", "COORD", "SIDECAR", "AGENTS"],
            rows,
        )
    )
    versions = {
        n.get("sidecar_version") for n in status.get("nodes", []) if n.get("sidecar_version")
    }
    daemons = {
        str((n.get("daemon") or {}).get("version"))
        for n in status.get("nodes", [])
        if (n.get("daemon") or {}).get("version")
    }
    if len(versions) > 1:
        lines.append(f"Mixed sidecar versions: {', '.join(sorted(versions))}")
    if len(daemons) > 1:
        lines.append(f"Mixed daemon versions: {', '.join(sorted(daemons))}")
    lines.extend(_spool_lines(status.get("nodes", []), time.time() if now is None else now))
    routes = status.get("routes", [])
    lines.append(
        f"Routes: {len(routes)} agent(s) routable; coordinators: {', '.join(status.get('coordinators', [])) or 'none'}"
    )
    problems = status_problems(status)
    lines.append("Problems:" if problems else "Healthy: every node alive, every daemon healthy.")
    lines.extend(f"  - {p}" for p in problems)
    for error in status.get("coordinator_errors", []):
        lines.append(f"  ! {error}")
    return "\n".join(lines)


# Beyond this many nodes a section is summarised; `--json` has everything.
MAX_NODES_SHOWN = 8


def render_explanation(expl: dict[str, Any]) -> str:
    """`explain AGENT` for people, from the Explanation's JSON form."""
    agent = expl["agent_id"]
    lines: list[str] = []
    if not expl.get("known"):
        lines.append(f"{agent}: not known to the cluster")
    elif expl.get("owner") is None:
        lines.append(
            f"{agent}: node-local on every node ({policy_text(expl.get('read_policy'), None)})"
        )
    else:
        age = _age(expl.get("last_heartbeat_age_s"))
        lines.append(
            f"{agent}: owned by {expl['owner']} ({expl.get('owner_url')}), "
            f"{expl.get('owner_state')}, last heartbeat {age}"
        )
        daemon, health = _daemon(expl.get("owner_daemon") or {})
        if expl.get("owner_state") != "alive":
            health = "health unknown (last report is stale)"
        route = expl.get("route")
        collision = expl.get("collision")
        lines.append(
            f"  policy:    {policy_text(expl.get('read_policy'), expl.get('policy_group'))}"
        )
        lines.append(f"  daemon:    {daemon}, {health}")
        lines.append(
            f"  route:     {agent} → {route['node_id']} {route['url']}"
            if route
            else "  route:     none (the owner is not alive, so nothing routes to it)"
        )
        lines.append(
            f"  collision: claimed by {', '.join(collision['claimants'])}; "
            f"owner {collision['winner']} ({collision['rule']})"
            if collision
            else "  collision: none"
        )
        lines.append(f"Who can read {agent}'s memories:")
        by_node: dict[str, list[str]] = {}
        for reader in expl.get("readers", []):
            by_node.setdefault(reader["node_id"], []).append(
                f"{reader['agent_id']} ({reader['why']})"
            )
        for index, (node, who) in enumerate(sorted(by_node.items())):
            if index == MAX_NODES_SHOWN:
                lines.append(f"  ... and {len(by_node) - index} more node(s) (see --json)")
                break
            lines.append(f"  {node}: " + "; ".join(who))
        lines.append(f"What {agent} reads:")
        for index, source in enumerate(expl.get("reads", [])):
            if index == MAX_NODES_SHOWN:
                lines.append(f"  ... and {len(expl['reads']) - index} more (see --json)")
                break
            what = (
                "its own memories"
                if source["scope"] == "own"
                else "global memories of " + ", ".join(source["agents"])
            )
            flag = "" if source["healthy"] else f"  [{source['state']}, unavailable]"
            lines.append(f"  {source['node_id']}: {what}{flag}")
    misses = expl.get("misses", [])
    lines.append("Why a read would miss:" if misses else "Nothing makes a read miss right now.")
    lines.extend(f"  - {m}" for m in misses)
    notes = expl.get("notes", [])
    if notes:
        lines.append("By design:")
        lines.extend(f"  - {n}" for n in notes)
    return "\n".join(lines)
