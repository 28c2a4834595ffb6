"""`bench/fanout.py --real`: federated reads on the real Signet daemons (run by hand).

The cluster is the one `tests/real_signet.py` describes (node1 alice isolated + bob shared,
node2 carol + dave group ops, node3 erin shared + frank group ops, all 0.145.7, node4
0.58.1), each daemon with a `signet-cluster serve` sidecar in its own process, default
settings. Beside it the same layout on dev daemons with `--recall-cost real`.

Phases (each prints JSON and a table row):
1. sequential: >= 100 federated recalls, every non-isolated reader through every sidecar
   in turn; partial count, p50/p95/p99, per-leg waits (from the `cluster` blocks);
2. concurrent: N clients for T seconds, the same mix; partial share, p50/p95/p99, CPU
   seconds of all sidecars and daemons per read (from /proc), breakers opened afterwards;
3. starvation: 30 matching memories of isolated alice on node1; erin must get bob's
   matching global memory, every try, through every sidecar;
4. killed daemon: SIGKILL node3's daemon with no traffic; time until node3's /readyz says
   503, its /metrics says daemon_healthy 0, and the coordinator's status says unhealthy;
5. dead sidecar: SIGKILL node2's sidecar; federated-read p50 before, right after (the
   connection is refused) and once the registry marks it down (skipped).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from proxy import PY, cpu_seconds, start, wait_http

from tests.real_signet import LAYOUT, REAL_SIGNET, RealDaemon, low_free_port, write_real_roster

READERS = ("bob", "carol", "dave", "erin", "frank")
HOME = {agent: node for node, (_, roster) in LAYOUT.items() for agent, _ in roster}


_given: set[int] = set()


def fresh_port() -> int:
    """A free low port not handed out before in this run (nothing listens on it yet)."""
    first = low_free_port()
    for port in range(first, 32000):
        if port in _given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError("no free port below 32000")


def running(pids: list[int]) -> list[int]:
    return [p for p in pids if p and Path(f"/proc/{p}").exists()]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


class Member:
    """One node: a daemon (real or dev) and its sidecar process."""

    def __init__(self, root: Path, name: str, version: str, roster: list[Any]) -> None:
        self.name, self.version, self.roster = name, version, roster
        self.ws = root / name
        self.daemon_port, self.port = fresh_port(), 0
        self.daemon_pid = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sidecar: subprocess.Popen[bytes] | None = None
        self.root = root

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_real(self) -> None:
        write_real_roster(self.ws, self.version, self.roster)
        daemon = RealDaemon(version=self.version, port=self.daemon_port, workspace=self.ws)
        daemon.start()
        self.daemon_pid = daemon.pid

    def start_dev(self) -> None:
        self.ws.mkdir(parents=True)
        roster = [{"name": n, "memory": m} for n, m in self.roster]
        (self.ws / "agent.yaml").write_text(yaml.safe_dump({"agents": {"roster": roster}}))
        flavor = "ts" if self.version != "0.58.1" else "ts-legacy"
        args = [PY, "-m", "signet_cluster.devdaemon", "--port", str(self.daemon_port)]
        args += ["--path", str(self.ws), "--flavor", flavor, "--recall-cost", "real"]
        proc = start(args, self.root / f"{self.name}-daemon.log")
        self.procs.append(proc)
        self.daemon_pid = proc.pid

    def start_sidecar(self, coordinator: str | None) -> None:
        self.port = self.port or fresh_port()
        args = [PY, "-m", "cli", "serve", "--port", str(self.port), "--node-id", self.name]
        args += ["--daemon-url", f"http://127.0.0.1:{self.daemon_port}"]
        args += ["--workspace", str(self.ws), "--state-dir", str(self.root / f"{self.name}-st")]
        args += ["--log-level", "warning", "--log-format", "json"]
        args += ["--coordinators", coordinator] if coordinator else ["--coordinator"]
        self.sidecar = start(args, self.root / f"{self.name}-sidecar.log")
        self.procs.append(self.sidecar)

    def kill_sidecar(self) -> None:
        if self.sidecar is not None and self.sidecar.poll() is None:
            os.killpg(self.sidecar.pid, signal.SIGKILL)
            self.sidecar.wait()

    def stop(self, real: bool) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        if real:
            subprocess.run(
                [str(REAL_SIGNET / "stop-daemon"), str(self.ws)], capture_output=True, check=False
            )


class Cluster:
    def __init__(self, root: Path, real: bool) -> None:
        self.real = real
        self.members = {
            name: Member(root, name, version, roster) for name, (version, roster) in LAYOUT.items()
        }

    async def start(self) -> None:
        for member in self.members.values():
            if self.real:
                await asyncio.to_thread(member.start_real)
            else:
                member.start_dev()
                await wait_http(member.daemon_port, "/health")
        first = None
        for member in self.members.values():
            member.start_sidecar(first)
            first = first or member.url
        for member in self.members.values():
            await wait_http(member.port, "/readyz", timeout=60)
        for member in self.members.values():
            for agent in HOME:
                await wait_http(
                    member.port,
                    f"/api/cluster/resolve?agent_id={agent}",
                    want='"route"',
                    timeout=60,
                )

    def stop(self) -> None:
        for member in self.members.values():
            member.stop(self.real)

    def daemon_pids(self) -> list[int]:
        return running([m.daemon_pid for m in self.members.values()])

    def sidecar_pids(self) -> list[int]:
        return running(
            [m.sidecar.pid for m in self.members.values() if m.sidecar and m.sidecar.poll() is None]
        )


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=30)) as resp:
        assert resp.status == 200, (resp.status, await resp.text())
        return await resp.json()


async def seed(session: aiohttp.ClientSession, cluster: Cluster, token: str) -> str:
    """Global and private memories for every agent and node default; 30 of alice's that
    fill node1's window; bob's one (the starvation case). Returns bob's memory id."""
    entry = cluster.members["node1"].url
    for agent in HOME:
        for visibility in ("global", "private"):
            body = {"content": f"{token} {agent} {visibility}", "agentId": agent}
            await post(session, entry + "/api/memory/remember", body | {"visibility": visibility})
    for name, member in cluster.members.items():
        await post(session, member.url + "/api/memory/remember", {"content": f"{token} {name}"})
    starve = "starve" + token
    for n in range(30):
        body = {"content": f"{starve} {starve} {starve} alice {n}", "agentId": "alice"}
        await post(session, entry + "/api/memory/remember", body)
    bob = await post(
        session, entry + "/api/memory/remember", {"content": f"{starve} bob", "agentId": "bob"}
    )
    return str(bob["id"])


class Tally:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.partial = 0
        self.statuses: dict[str, int] = {}
        self.owner_ms: list[float] = []
        self.contributor_ms: list[float] = []
        self.past_owner_ms: list[float] = []

    def add(self, seconds: float, answer: dict[str, Any]) -> None:
        self.latencies.append(seconds * 1000)
        block = answer.get("cluster")
        if not block:
            return
        owner = None
        for node in block["nodes"]:
            if node["status"] != "ok":
                self.statuses[node["status"]] = self.statuses.get(node["status"], 0) + 1
            if node["took_ms"] is None:
                continue
            if node["role"] == "owner":
                owner = node["took_ms"]
                self.owner_ms.append(node["took_ms"])
            else:
                self.contributor_ms.append(node["took_ms"])
        if owner is not None:
            self.past_owner_ms.append(max(0.0, block["took_ms"] - owner))
        if block["partial"]:
            self.partial += 1

    def summary(self) -> dict[str, Any]:
        n = len(self.latencies)
        return {
            "reads": n,
            "partial": self.partial,
            "partial_share": round(self.partial / n, 4) if n else None,
            "p50_ms": pct(self.latencies, 0.5),
            "p95_ms": pct(self.latencies, 0.95),
            "p99_ms": pct(self.latencies, 0.99),
            "not_ok_legs": self.statuses,
            "owner_leg_p50_ms": pct(self.owner_ms, 0.5),
            "owner_leg_p99_ms": pct(self.owner_ms, 0.99),
            "contributor_leg_p50_ms": pct(self.contributor_ms, 0.5),
            "contributor_leg_p99_ms": pct(self.contributor_ms, 0.99),
            "waited_past_owner_p50_ms": pct(self.past_owner_ms, 0.5),
            "waited_past_owner_p99_ms": pct(self.past_owner_ms, 0.99),
        }


def mix(cluster: Cluster, token: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (member.url + "/api/memory/recall", {"query": token, "agentId": reader})
        for reader in READERS
        for member in cluster.members.values()
    ]


async def sequential(session: aiohttp.ClientSession, cluster: Cluster, token: str, n: int) -> Tally:
    tally, calls = Tally(), mix(cluster, token)
    for i in range(n):
        url, body = calls[i % len(calls)]
        started = time.perf_counter()
        answer = await post(session, url, body)
        tally.add(time.perf_counter() - started, answer)
    return tally


async def concurrent(
    session: aiohttp.ClientSession, cluster: Cluster, token: str, clients: int, seconds: float
) -> tuple[Tally, dict[str, float]]:
    tally, calls = Tally(), mix(cluster, token)
    daemons, sidecars = cluster.daemon_pids(), cluster.sidecar_pids()
    before = cpu_seconds(daemons), cpu_seconds(sidecars)
    stop_at = time.monotonic() + seconds

    async def client(offset: int) -> None:
        i = offset
        while time.monotonic() < stop_at:
            url, body = calls[i % len(calls)]
            i += 1
            started = time.perf_counter()
            answer = await post(session, url, body)
            tally.add(time.perf_counter() - started, answer)

    await asyncio.gather(*(client(c * 7) for c in range(clients)))
    reads = max(1, len(tally.latencies))
    spent = cpu_seconds(running(daemons)) - before[0], cpu_seconds(running(sidecars)) - before[1]
    return tally, {
        "cpu_ms_per_read_daemons": round(spent[0] / reads * 1000, 3),
        "cpu_ms_per_read_sidecars": round(spent[1] / reads * 1000, 3),
    }


async def breakers(session: aiohttp.ClientSession, cluster: Cluster) -> dict[str, Any]:
    """Breakers each sidecar has open and has ever opened (its status' federation block)."""
    out: dict[str, Any] = {}
    for name, member in cluster.members.items():
        async with session.get(member.url + "/api/cluster/status?local=1") as resp:
            status = await resp.json()
        nodes = status.get("federation", {}).get("nodes", {})
        out[name] = {
            "open": sorted(n for n, h in nodes.items() if h["breaker"] != "closed"),
            "ever_opened": sum(h["opened"] for h in nodes.values()),
        }
    return out


async def starvation(
    session: aiohttp.ClientSession, cluster: Cluster, token: str, bob: str, tries: int
) -> dict[str, Any]:
    got = total = 0
    for _ in range(tries):
        for member in cluster.members.values():
            body = {"query": "starve" + token, "agentId": "erin"}
            answer = await post(session, member.url + "/api/memory/recall", body)
            total += 1
            got += any(hit["id"] == bob for hit in answer["results"])
    return {"tries": total, "bobs_memory_returned": got}


async def killed_daemon(session: aiohttp.ClientSession, cluster: Cluster) -> dict[str, Any]:
    node3, coordinator = cluster.members["node3"], cluster.members["node1"]
    os.kill(node3.daemon_pid, signal.SIGKILL)
    killed = time.perf_counter()
    seen: dict[str, float] = {}
    while len(seen) < 3 and time.perf_counter() - killed < 30:
        now = round((time.perf_counter() - killed) * 1000, 1)
        if "readyz" not in seen:
            async with session.get(node3.url + "/readyz") as resp:
                if resp.status == 503:
                    seen["readyz"] = now
        if "metrics" not in seen:
            async with session.get(node3.url + "/metrics") as resp:
                if "signet_cluster_daemon_healthy 0.0" in await resp.text():
                    seen["metrics"] = now
        if "status" not in seen:
            async with session.get(coordinator.url + "/api/cluster/status") as resp:
                status = await resp.json()
            entry = next(n for n in status["nodes"] if n["node_id"] == "node3")
            if not entry["daemon"]["healthy"]:
                seen["status"] = now
        await asyncio.sleep(0.02)
    return {f"{k}_unhealthy_after_ms": v for k, v in seen.items()}


async def dead_sidecar(
    session: aiohttp.ClientSession, cluster: Cluster, token: str
) -> dict[str, Any]:
    """bob's reads through node1 (node3's daemon is dead by now: its leg is skipped)."""
    url = cluster.members["node1"].url + "/api/memory/recall"
    body = {"query": token, "agentId": "bob"}

    node2_leg_ms: list[float] = []

    async def p50(n: int) -> tuple[float | None, list[str]]:
        latencies, states = [], set()
        for _ in range(n):
            started = time.perf_counter()
            answer = await post(session, url, body)
            latencies.append((time.perf_counter() - started) * 1000)
            states |= {f"{x['node_id']}:{x['status']}" for x in answer["cluster"]["nodes"]}
            leg = next(x for x in answer["cluster"]["nodes"] if x["node_id"] == "node2")
            if leg["status"] == "error" and leg["took_ms"] is not None:
                node2_leg_ms.append(leg["took_ms"])  # the refused connection's own cost
        return pct(latencies, 0.5), sorted(states)

    before, before_states = await p50(60)
    cluster.members["node2"].kill_sidecar()
    refused, refused_states = await p50(30)  # within the TTL: the connection is refused
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = await post(session, url, body)
        leg = next(x for x in answer["cluster"]["nodes"] if x["node_id"] == "node2")
        if leg["status"] == "down":
            break
        await asyncio.sleep(0.2)
    down, down_states = await p50(60)
    return {
        "p50_ms_all_sidecars_up": before,
        "p50_ms_node2_sidecar_dead_refused": refused,
        "p50_ms_node2_sidecar_dead_down": down,
        "added_ms_refused": None
        if refused is None or before is None
        else round(refused - before, 3),
        "added_ms_down": None if down is None or before is None else round(down - before, 3),
        "refused_leg_p50_ms": pct(node2_leg_ms, 0.5),
        "refused_leg_p99_ms": pct(node2_leg_ms, 0.99),
        "legs": {"before": before_states, "refused": refused_states, "down": down_states},
    }


async def run(root: Path, real: bool, args: Any) -> dict[str, Any]:
    cluster = Cluster(root / ("real" if real else "dev"), real)
    (root / ("real" if real else "dev")).mkdir()
    try:
        await cluster.start()
        token = "b" + uuid.uuid4().hex[:10]
        async with aiohttp.ClientSession() as session:
            bob = await seed(session, cluster, token)
            await sequential(session, cluster, token, 20)  # warm-up
            result: dict[str, Any] = {
                "sequential": (await sequential(session, cluster, token, args.sequential)).summary()
            }
            tally, cpu = await concurrent(session, cluster, token, args.clients, args.seconds)
            result["concurrent"] = (
                tally.summary()
                | cpu
                | {
                    "clients": args.clients,
                    "seconds": args.seconds,
                }
            )
            result["breakers_after"] = await breakers(session, cluster)
            result["starvation"] = await starvation(session, cluster, token, bob, 3)
            if real or args.faults_on_dev:
                result["killed_daemon"] = await killed_daemon(session, cluster)
                result["dead_sidecar"] = await dead_sidecar(session, cluster, token)
        return result
    finally:
        cluster.stop()


def table(report: dict[str, Any]) -> str:
    lines = [
        f"{'cluster':<8}{'phase':<12}{'reads':>7}{'partial':>9}{'p50':>9}{'p95':>9}{'p99':>9}"
        f"{'owner p50':>11}{'contrib p99':>13}{'past owner p99':>16}"
    ]
    for name in ("real", "dev"):
        result = report.get(name)
        if not result:
            continue
        for phase in ("sequential", "concurrent"):
            r = result[phase]
            lines.append(
                f"{name:<8}{phase:<12}{r['reads']:>7}{r['partial']:>9}{r['p50_ms']:>9}"
                f"{r['p95_ms']:>9}{r['p99_ms']:>9}{r['owner_leg_p50_ms']!s:>11}"
                f"{r['contributor_leg_p99_ms']!s:>13}{r['waited_past_owner_p99_ms']!s:>16}"
            )
        lines.append(f"{name:<8}breakers after load: {result['breakers_after']}")
        lines.append(f"{name:<8}starvation: {result['starvation']}")
        if "killed_daemon" in result:
            lines.append(f"{name:<8}killed daemon: {result['killed_daemon']}")
            dead = {k: v for k, v in result["dead_sidecar"].items() if k != "legs"}
            lines.append(f"{name:<8}dead sidecar: {dead}")
    return "\n".join(lines)


async def main_real(args: Any) -> None:
    if not (REAL_SIGNET / "start-daemon").exists():
        raise SystemExit(f"--real needs the real daemons in {REAL_SIGNET}")
    root = Path(tempfile.mkdtemp(prefix="signet-bench-fanout-real-"))
    try:
        report: dict[str, Any] = {"real": await run(root, True, args)}
        if not args.skip_dev:
            report["dev"] = await run(root, False, args)
        report["machine"] = {
            "cpus": os.cpu_count(),
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0],
        }
        print(json.dumps(report, indent=2))
        if not args.json_only:
            print()
            print(table(report))
    finally:
        shutil.rmtree(root, ignore_errors=True)
