"""Plain-text rendering of the sidecar's JSON answers for people; `--json` skips this."""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, TextIO

import click

from signet_cluster.explain import cluster_problems

# Everything that makes the cluster degraded (shared with `explain` and the /cluster page).
status_problems = cluster_problems


# Status rows are kept within this many columns (a terminal reports its own width).
STATUS_WIDTH = 100
GREEN, RED, YELLOW = "green", "red", "yellow"


def use_colour(stream: TextIO | None = None) -> bool:
    """Colour on a terminal only, and never when NO_COLOR is set (no-color.org) or the
    terminal is dumb."""
    stream = stream if stream is not None else sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return stream.isatty()


def screen_width() -> int:
    """The terminal's width on a terminal, else STATUS_WIDTH (pipes and files)."""
    if sys.stdout.isatty():
        return max(60, shutil.get_terminal_size((STATUS_WIDTH, 24)).columns)
    return STATUS_WIDTH


def paint(text: str, colour: str | None, enabled: bool) -> str:
    return click.style(text, fg=colour) if enabled and colour else text


def table(
    headers: list[str],
    rows: list[list[str]],
    colours: list[list[str | None]] | None = None,
    *,
    colour: bool = False,
) -> str:
    """Columns padded to their widest cell; `colours` (per cell) is applied after padding,
    so escape codes never disturb the alignment."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for r, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            padded = cell.ljust(widths[i]) if i < len(row) - 1 else cell
            hue = colours[r][i] if colours is not None else None
            cells.append(paint(padded, hue, colour))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _fit_cell(text: str, room: int) -> str:
    """Cut a cell to `room` characters, saying how many items were left out."""
    if len(text) <= room:
        return text
    items = text.split(" ")
    kept: list[str] = []
    for index, item in enumerate(items):
        rest = len(items) - index - 1
        candidate = " ".join([*kept, item])
        if len(candidate) + len(f" +{rest}") > room and kept:
            return " ".join(kept) + f" +{len(items) - index}"
        kept.append(item)
    return text[: max(room, 8)]


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
            owners = spool.get("owners") or []
            whom = f" ({', '.join(owners)})" if owners else ""
            parts.append(f"{depth} write(s) waiting for their owner{whom}{age}")
        if dead:
            parts.append(
                f"{dead} refused by their owner for good (`spooled_write_refused` in its log)"
            )
        lines.append(f"  {node['node_id']}: " + "; ".join(parts))
    return ["Spooled writes:", *lines] if lines else []


def _address(url: str) -> str:
    # http is the default; https stays visible.
    return url.removeprefix("http://")


def render_status(
    status: dict[str, Any],
    now: float | None = None,
    *,
    width: int = STATUS_WIDTH,
    colour: bool = False,
) -> str:
    """The status for people: where it comes from, the problems first (a cut-off `--watch`
    frame loses node rows, never the problems), then one row per node within `width`."""
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
    problems = status_problems(status)
    if problems:
        lines.append(paint(f"Problems ({len(problems)}):", RED, colour))
        lines.extend(f"  - {p}" for p in problems)
    else:
        lines.append(paint("Healthy: every node alive, every daemon healthy.", GREEN, colour))
    for error in status.get("coordinator_errors", []):
        lines.append(f"  ! {error}")
    rows: list[list[str]] = []
    colours: list[list[str | None]] = []
    for node in status.get("nodes", []):
        daemon, health = _daemon(node.get("daemon") or {})
        alive = node.get("state") == "alive"
        if not alive:
            health = "unknown"  # the last report is stale once the node is down
        role = "coord" if node.get("coordinator") else ("member" if node.get("joined") else "")
        rows.append(
            [
                node["node_id"],
                node.get("state", "?"),
                _address(node.get("url", "?")),
                daemon,
                health,
                _age(node.get("last_seen_age_s")).removesuffix(" ago"),
                role,
                _agents(node.get("agents", [])),
            ]
        )
        colours.append(
            [
                None,
                GREEN if alive else RED,
                None,
                None,
                GREEN if health == "healthy" else (RED if health == "UNHEALTHY" else YELLOW),
                None,
                None,
                None,
            ]
        )
    headers = ["NODE", "STATE", "ADDRESS", "DAEMON", "HEALTH", "SEEN", "ROLE", "AGENTS"]
    # The agents column takes what the others leave of `width`.
    fixed = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers[:-1])]
    room = max(16, width - sum(fixed) - 2 * (len(headers) - 1))
    for row in rows:
        row[-1] = _fit_cell(row[-1], room)
    lines.append(table(headers, rows, colours, colour=colour))
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
        f"Routes: {len(routes)} agent(s) routable; coordinators: "
        f"{', '.join(status.get('coordinators', [])) or 'none'}"
    )
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
