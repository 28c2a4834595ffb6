"""Plain-text rendering of the sidecar's JSON answers for people; `--json` skips this."""

from __future__ import annotations

from typing import Any


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


def _agents(agents: list[dict[str, Any]]) -> str:
    parts = []
    for agent in agents:
        policy = agent.get("read_policy", "?")
        if policy == "group":
            policy = f"group:{agent.get('policy_group')}"
        parts.append(f"{agent['id']}({policy})")
    return " ".join(parts) or "-"


def _daemon(daemon: dict[str, Any]) -> tuple[str, str]:
    flavor = daemon.get("flavor") or "?"
    version = daemon.get("version") or "?"
    health = "healthy" if daemon.get("healthy") else "UNHEALTHY"
    return f"{flavor} {version}", health


def status_problems(status: dict[str, Any]) -> list[str]:
    """Everything that makes the cluster degraded, one line each (empty when healthy)."""
    problems = []
    for node in status.get("nodes", []):
        if node.get("state") != "alive":
            problems.append(f"node {node['node_id']} is {node.get('state')}")
        elif not (node.get("daemon") or {}).get("healthy"):
            error = (node.get("daemon") or {}).get("error")
            problems.append(
                f"daemon on {node['node_id']} is unhealthy" + (f": {error}" if error else "")
            )
    view = status.get("view") or {}
    if view.get("stale"):
        problems.append(f"routing table is {view.get('age_s')}s old: no coordinator answers")
    for collision in status.get("collisions", []):
        problems.append(
            f"agent {collision['agent_id']} is claimed by {', '.join(collision['claimants'])}; "
            f"owner {collision['winner']} ({collision['rule']})"
        )
    return problems


def render_status(status: dict[str, Any]) -> str:
    view = status.get("view") or {}
    if view.get("source") == "registry":
        source = f"coordinator {status.get('answered_by')}"
    elif view.get("source") == "standalone":
        source = f"{status.get('node_id')} (standalone: no coordinator)"
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
