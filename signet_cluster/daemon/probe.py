"""Reading the local Signet daemon over loopback: flavor, version, health and agent roster.

Flavor detection: `/api/version` answering `runtime: "rust"` means Rust; otherwise a
daemon with `/api/agents` is TS >= 0.76 (`ts`) and one without is `ts-legacy`. The roster is
`/api/agents` (authoritative when reachable) merged with `agent.yaml`'s `agents.roster[]` and
the `agents/<name>/` folders, plus the implicit `default` agent; legacy daemons have only
`default`. An agent the daemon has no row for is read as `isolated`, as the daemon does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import attrs

from signet_cluster.daemon.roster import discover_agent_dirs, read_yaml_roster
from signet_cluster.protocol import READ_POLICIES, AgentInfo, DaemonInfo

DEFAULT_AGENT = AgentInfo(id="default", read_policy="shared")


@attrs.frozen(kw_only=True)
class DaemonSnapshot:
    flavor: str = "unknown"
    version: str | None = None
    healthy: bool = False
    error: str | None = None
    agents: tuple[AgentInfo, ...] = (DEFAULT_AGENT,)
    agents_dir: str | None = None
    pid: int | None = None

    def info(self) -> DaemonInfo:
        return DaemonInfo(
            flavor=self.flavor, version=self.version, healthy=self.healthy, error=self.error
        )

    def agent(self, agent_id: str) -> AgentInfo | None:
        for agent in self.agents:
            if agent.id == agent_id:
                return agent
        return None


class DaemonAdapter:
    """Stateless reads of one daemon; `DaemonWatcher` (sidecar) calls `probe` on a timer."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        workspace: Path,
        timeout: float,
        token: str | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.workspace = workspace
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def _get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(
            self.base_url + path, timeout=self.timeout, headers=self._headers
        ) as resp:
            raw = await resp.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            return resp.status, body

    async def health(self, timeout: float) -> tuple[int, Any]:
        """`GET /health` alone, within `timeout` (the watcher's quick check)."""
        async with self.session.get(
            self.base_url + "/health",
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers=self._headers,
        ) as resp:
            raw = await resp.read()
            try:
                return resp.status, json.loads(raw) if raw else None
            except ValueError:
                return resp.status, None

    async def detect_flavor(self) -> str:
        status, body = await self._get("/api/version")
        if status == 200 and isinstance(body, dict) and body.get("runtime") == "rust":
            return "rust"
        status, body = await self._get("/api/agents")
        if status == 200 and isinstance(body, dict) and isinstance(body.get("agents"), list):
            return "ts"
        if status == 404:
            return "ts-legacy"
        # 401/403 in team mode without a token: the daemon has agents but we cannot list them.
        return "ts" if status in (401, 403) else "unknown"

    async def probe(self, previous: DaemonSnapshot | None = None) -> DaemonSnapshot:
        """One full reading. On failure the previous roster is kept, marked unhealthy."""
        try:
            status, health = await self._get("/health")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return self._unreachable(previous, f"daemon unreachable: {_describe(exc)}")
        if status != 200 or not isinstance(health, dict):
            return self._unreachable(previous, f"daemon /health answered {status}")
        healthy = health.get("status") == "healthy"
        version = health.get("version") if isinstance(health.get("version"), str) else None
        pid = health.get("pid") if isinstance(health.get("pid"), int) else None
        agents_dir = health.get("agentsDir") if isinstance(health.get("agentsDir"), str) else None
        try:
            reuse = previous is not None and previous.flavor != "unknown"
            reuse = (
                reuse
                and previous is not None
                and (previous.version, previous.pid) == (version, pid)
            )
            flavor = (
                previous.flavor if reuse and previous is not None else await self.detect_flavor()
            )
            agents, roster_error = await self._roster(flavor)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return self._unreachable(previous, f"daemon roster unreadable: {_describe(exc)}")
        error = None if healthy else f"daemon status {health.get('status')!r}"
        return DaemonSnapshot(
            flavor=flavor,
            version=version,
            healthy=healthy and roster_error is None,
            error=error or roster_error,
            agents=agents,
            agents_dir=agents_dir,
            pid=pid,
        )

    def _unreachable(self, previous: DaemonSnapshot | None, error: str) -> DaemonSnapshot:
        if previous is not None:
            return attrs.evolve(previous, healthy=False, error=error)
        agents = self.workspace_roster()
        return DaemonSnapshot(healthy=False, error=error, agents=agents)

    async def _roster(self, flavor: str) -> tuple[tuple[AgentInfo, ...], str | None]:
        if flavor == "ts-legacy":
            return (DEFAULT_AGENT,), None
        status, body = await self._get("/api/agents")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("agents"), list):
            return self.workspace_roster(), f"daemon /api/agents answered {status}"
        return merge_roster(body["agents"], self.workspace), None

    def workspace_roster(self) -> tuple[AgentInfo, ...]:
        """The offline roster (what `signet agent list` shows without a daemon)."""
        agents: dict[str, AgentInfo] = {"default": DEFAULT_AGENT}
        for entry in read_yaml_roster(self.workspace):
            _add(agents, entry.name, entry.read_policy, entry.policy_group)
        for name in discover_agent_dirs(self.workspace):
            _add(agents, name, "isolated")
        return tuple(sorted(agents.values(), key=lambda a: a.id))


def _add(
    agents: dict[str, AgentInfo],
    agent_id: str,
    read_policy: str,
    policy_group: str | None = None,
    created_at: str | None = None,
) -> None:
    """Add an agent unless one with that id is listed already; an id the cluster cannot
    route (spaces, ':' ...) is left out: it stays node-local, served by the local daemon."""
    if agent_id in agents:
        return
    try:
        agents[agent_id] = AgentInfo(
            id=agent_id, read_policy=read_policy, policy_group=policy_group, created_at=created_at
        )
    except ValueError:
        return


def effective_policy(read_policy: object, policy_group: object) -> tuple[str, str | None]:
    """The policy the daemon actually applies (unknown values and group-without-group are isolated)."""
    if read_policy == "group":
        if isinstance(policy_group, str) and policy_group:
            return "group", policy_group
        return "isolated", None
    if read_policy in READ_POLICIES:
        return str(read_policy), None
    return "isolated", None


def merge_roster(rows: list[Any], workspace: Path) -> tuple[AgentInfo, ...]:
    """API rows win; yaml entries and agent folders without a row are listed as isolated,
    because a daemon treats an agent with no row as isolated."""
    agents: dict[str, AgentInfo] = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not row["id"]:
            continue
        policy, group = effective_policy(row.get("read_policy"), row.get("policy_group"))
        created = row.get("created_at") if isinstance(row.get("created_at"), str) else None
        _add(agents, row["id"], policy, group, created)
    agents.setdefault("default", DEFAULT_AGENT)
    for name in [e.name for e in read_yaml_roster(workspace)] + discover_agent_dirs(workspace):
        _add(agents, name, "isolated")
    return tuple(sorted(agents.values(), key=lambda a: a.id))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
