"""Coordinator capacity benchmark (run by hand; not part of CI).

    .venv/bin/python bench/capacity.py [--nodes 100,500,1000] [--seconds 20] [--json-only]

One coordinator (`signet-cluster serve --coordinator`, its own process, beside a dev daemon)
receives signed heartbeats from N simulated nodes, each with `--agents` agents, each once a
second on its own keep-alive connection, spread evenly over the second. After a warm-up (every
node joined, the registry settled: replies are the short `unchanged` form) it measures, over
`--seconds`:

- the coordinator's CPU share (its user+system CPU time / wall time, from /proc),
- heartbeat latency p50/p99/max as a node sees it (request written to reply read),
- the coordinator's RSS before the nodes joined and after (the difference is the registry),
- the heartbeats actually sent per second and the errors,
- the CPU time per heartbeat (independent of other load), and how long the coordinator's
  event loop waited for a CPU held by other processes (`waited`: high means the latencies
  say more about the machine than about the coordinator);

and separately an idle sidecar's RSS (a member with its daemon, no traffic). Prints a table
and a JSON document. Loopback only; every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGET_P99_MS = 50.0
TARGET_IDLE_RSS_MB = 60.0
REGISTRY_FIELD = re.compile(rb'"registry": "([^"]+)"')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def runqueue_wait_s(pid: int) -> float:
    """Time the process's main thread (its event loop) was ready to run but waited for a
    CPU: how much other load on the machine held it back."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def cpu_pressure() -> float | None:
    """The machine's CPU pressure over the last 60 s (share of time some task waited)."""
    try:
        text = Path("/proc/pressure/cpu").read_text()
    except OSError:
        return None
    match = re.search(r"some avg10=\S+ avg60=(\S+)", text)
    return float(match.group(1)) / 100 if match else None


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match is not None
    return int(match.group(1)) / 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def http(port: int, method: str, path: str) -> tuple[int, bytes]:
    """One small unsigned request (readiness and metrics; both open on loopback)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class Proc:
    """A child process started for the benchmark; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log.open("wb")
        self.popen = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


async def wait_ready(port: int, proc: Proc, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            proc.log.flush()
            tail = Path(proc.log.name).read_text(errors="replace")[-2000:]  # noqa: ASYNC240
            raise SystemExit(f"{what} exited with {proc.popen.returncode}:\n{tail}")
        try:
            status, _ = await http(port, "GET", "/readyz")
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"{what} not ready after 60 s; see {proc.log.name}")


def start_node(
    root: Path, name: str, *, coordinator: bool, secret: Path | None, profile: Path | None = None
) -> tuple[Proc, Proc, int]:
    """A dev daemon and a sidecar beside it; returns (daemon, sidecar, sidecar port)."""
    workspace = root / name / "workspace"
    workspace.mkdir(parents=True)
    daemon_port, port = free_port(), free_port()
    daemon = Proc(
        [PY, "-m", "cli", "devdaemon", "--port", str(daemon_port), "--path", str(workspace)],
        {},
        root / f"{name}-daemon.log",
    )
    env = {
        "SIGNET_CLUSTER_NODE_ID": name,
        "SIGNET_CLUSTER_PORT": str(port),
        "SIGNET_CLUSTER_DAEMON_URL": f"http://127.0.0.1:{daemon_port}",
        "SIGNET_CLUSTER_WORKSPACE": str(workspace),
        "SIGNET_CLUSTER_STATE_DIR": str(root / name / "state"),
        "SIGNET_CLUSTER_COORDINATOR": "true" if coordinator else "false",
        "SIGNET_CLUSTER_LOG_LEVEL": "warning",
        "SIGNET_CLUSTER_LOG_FORMAT": "json",
    }
    if secret is not None:
        env["SIGNET_CLUSTER_SECRET_FILE"] = str(secret)
    # --profile: the coordinator runs under cProfile (it exits normally on SIGTERM).
    runner = (
        [PY, "-m", "cProfile", "-o", str(profile), "-m", "cli"] if profile else [PY, "-m", "cli"]
    )
    sidecar = Proc([*runner, "serve"], env, root / f"{name}-sidecar.log")
    return daemon, sidecar, port


class SimNode:
    """One simulated node: its own keep-alive connection, signed heartbeats, and the
    registry tag of the last full reply (so steady-state replies are `unchanged`)."""

    def __init__(self, index: int, port: int, agents: int, signer: Any) -> None:
        self.node_id = f"sim{index:05d}"
        self.port = port
        self.signer = signer
        self.seq = 0
        self.known: str | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.busy = False
        self.full_replies = 0  # replies that carried the whole registry
        policies = [("isolated", None), ("shared", None), ("group", "ops"), ("group", "dev")]
        self.agents = [
            {
                "id": f"{self.node_id}-a{j}",
                "read_policy": policies[j % len(policies)][0],
                "policy_group": policies[j % len(policies)][1],
                "created_at": "2026-01-01T00:00:00Z",
            }
            for j in range(agents)
        ]
        self.base = {
            "protocol": {"min": 1, "max": 1},
            "node_id": self.node_id,
            "instance_id": secrets.token_hex(16),
            "url": f"http://127.0.0.1:{20000 + index}",
            "sidecar_version": "0.1.0",
            "daemon": {"flavor": "ts", "version": "0.145.7", "healthy": True, "error": None},
            "agents": [{"id": "default", "read_policy": "shared"}, *self.agents],
            "capabilities": ["route"],
            "coordinator": False,
        }

    def request(self) -> bytes:
        self.seq += 1
        body = json.dumps(
            {**self.base, "seq": self.seq, "sent_at": time.time(), "known_registry": self.known}
        ).encode()
        host = f"127.0.0.1:{self.port}"
        path = "/api/cluster/heartbeat"
        headers = {
            "Host": host,
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
            "Accept-Encoding": "gzip",  # as a sidecar's aiohttp client sends
        }
        headers.update(self.signer(self.node_id).headers("POST", host, path, body, headers))
        head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return head.encode() + b"\r\n" + body

    async def beat(self) -> tuple[float, int]:
        """Send one heartbeat; (latency in seconds, HTTP status or 0 on a broken connection).
        The caller marks the node busy when it schedules this."""
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self.reader is not None
            started = time.perf_counter()
            self.writer.write(self.request())
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
            length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
            body = await self.reader.readexactly(length)
            took = time.perf_counter() - started
            status = int(head.split()[1])
            if status == 200:
                # A full reply is O(nodes); parsing it here would make this one process the
                # bottleneck instead of the coordinator. The header fields come first.
                if re.search(rb"(?i)content-encoding: gzip", head):
                    # Only the start: the tag is all a simulated node needs.
                    head_fields = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body, 400)
                else:
                    head_fields = body[:400]
                if b'"unchanged": true' not in head_fields:
                    self.full_replies += 1
                    self.known = REGISTRY_FIELD.search(head_fields).group(1).decode()  # type: ignore[union-attr]
            return took, status
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            self.close()
            return 0.0, 0
        finally:
            self.busy = False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def drive(
    nodes: list[SimNode], warmup: float, seconds: float, coordinator_pid: int
) -> dict[str, Any]:
    """Every node once a second, spread over the second; measure after `warmup`."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    measuring = {"on": False}
    latencies: list[float] = []
    errors = 0
    sent = 0
    skipped = 0
    lag_max = 0.0
    tasks: set[asyncio.Task[None]] = set()

    last_full = 0.0  # when a node last needed the whole registry (cold start: everyone)

    async def one(node: SimNode) -> None:
        nonlocal errors, sent, last_full
        full_before = node.full_replies
        took, status = await node.beat()
        if node.full_replies != full_before:
            last_full = loop.time() - start
        if measuring["on"]:
            sent += 1
            if status == 200:
                latencies.append(took)
            else:
                errors += 1

    total = warmup + seconds
    n = len(nodes)
    tick = 0
    cpu0 = wall0 = cpu_client0 = wait0 = 0.0
    while True:
        second, slot = divmod(tick, n)
        due = start + second + slot / n
        if second >= total:
            break
        now = loop.time()
        if due > now:
            await asyncio.sleep(due - now)
        elif measuring["on"]:
            lag_max = max(lag_max, now - due)
        if not measuring["on"] and second >= warmup:
            measuring["on"] = True
            wait0 = runqueue_wait_s(coordinator_pid)
            cpu0, wall0, cpu_client0 = (
                cpu_seconds(coordinator_pid),
                time.monotonic(),
                time.process_time(),
            )
        node = nodes[slot]
        if node.busy:
            # A real sidecar also waits for its previous round.
            skipped += 1 if measuring["on"] else 0
        else:
            node.busy = True
            task = asyncio.create_task(one(node))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        tick += 1
    wall = time.monotonic() - wall0
    cpu = cpu_seconds(coordinator_pid) - cpu0
    waited = runqueue_wait_s(coordinator_pid) - wait0
    client_cpu = time.process_time() - cpu_client0
    if tasks:
        await asyncio.wait(tasks, timeout=10)
    return {
        "window_s": round(wall, 2),
        # Cold start (every node joins within one second): when the last full registry went
        # out, i.e. from then on every reply was the short `unchanged` one.
        "converged_after_s": round(last_full, 2),
        "heartbeats": sent,
        "rate_per_s": round(sent / wall, 1),
        "errors": errors,
        "skipped_busy": skipped,
        "coordinator_cpu_share": round(cpu / wall, 4),
        # CPU per heartbeat does not depend on what else the machine runs; the share and
        # the latencies do (see loadavg).
        "cpu_ms_per_heartbeat": round(cpu / sent * 1000, 3) if sent else None,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "coordinator_runqueue_wait_share": round(waited / wall, 4),
        "machine_cpu_pressure_60s": cpu_pressure(),
        "client_cpu_share": round(client_cpu / wall, 4),
        "client_lag_max_ms": round(lag_max * 1000, 2),
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 3) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 3) if latencies else None,
        "max_ms": round(max(latencies) * 1000, 3) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 3) if latencies else None,
    }


async def registry_facts(port: int) -> dict[str, Any]:
    """Alive nodes and registry events, from the coordinator's own /metrics."""
    try:
        _status, body = await http(port, "GET", "/metrics")
    except (OSError, TimeoutError):
        return {}
    text = body.decode()
    alive = re.search(r'^signet_cluster_peers\{state="alive"\} (\S+)$', text, re.M)
    events = {
        kind: int(float(value))
        for kind, value in re.findall(
            r'^signet_cluster_peer_events_total\{kind="(\w+)"\} (\S+)$', text, re.M
        )
    }
    return {"alive": int(float(alive.group(1))) if alive else -1, "events": events}


async def run_one(root: Path, n: int, args: argparse.Namespace, secret: Path) -> dict[str, Any]:
    from signet_cluster.security.keyring import load_secret_file
    from signet_cluster.security.signing import Signer

    keyring = load_secret_file(secret)
    signers: dict[str, Signer] = {}

    def signer(node_id: str) -> Signer:
        if node_id not in signers:
            signers[node_id] = Signer(lambda: keyring, node_id, wall=time.time)
        return signers[node_id]

    run_root = root / f"run-{n}"
    profile = Path(f"{args.profile}-{n}.prof").absolute() if args.profile else None  # noqa: ASYNC240
    daemon, sidecar, port = start_node(
        run_root, "coord", coordinator=True, secret=secret, profile=profile
    )
    try:
        await wait_ready(port, sidecar, "the coordinator")
        if args.nice:
            # On a machine shared with other work: let the coordinator have its core.
            os.setpriority(os.PRIO_PROCESS, sidecar.pid, args.nice)
        # Let the start-up settle (first roster reads, caches), then take the baseline.
        await asyncio.sleep(2)
        rss_before = rss_mb(sidecar.pid)
        nodes = [SimNode(i, port, args.agents, signer) for i in range(n)]
        result = await drive(nodes, args.warmup, args.seconds, sidecar.pid)
        rss_after = rss_mb(sidecar.pid)
        facts = await registry_facts(port)
        for node in nodes:
            node.close()
    finally:
        sidecar.stop()
        daemon.stop()
    return {
        "nodes": n,
        "agents_per_node": args.agents,
        "alive_in_registry": facts.get("alive", 0) - 1,  # minus the coordinator itself
        "registry_events": facts.get("events", {}),
        **result,
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_after, 1),
        "registry_mb": round(rss_after - rss_before, 1),
    }


async def idle_sidecar(root: Path) -> dict[str, Any]:
    daemon, sidecar, port = start_node(root / "idle", "idle", coordinator=False, secret=None)
    try:
        await wait_ready(port, sidecar, "the idle sidecar")
        await asyncio.sleep(5)
        return {"idle_sidecar_rss_mb": round(rss_mb(sidecar.pid), 1)}
    finally:
        sidecar.stop()
        daemon.stop()


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        f"{'nodes':>6} {'hb/s':>7} {'coord CPU':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'errors':>6} {'RSS before':>10} {'RSS after':>9} {'registry':>8} {'CPU/hb ms':>9} "
        f"{'waited':>6}"
    )
    lines = [head]
    for r in runs:
        lines.append(
            f"{r['nodes']:>6} {r['rate_per_s']:>7} {r['coordinator_cpu_share'] * 100:>8.1f}% "
            f"{r['p50_ms']:>7} {r['p99_ms']:>7} {r['max_ms']:>7} {r['errors']:>6} "
            f"{r['rss_before_mb']:>8} MB {r['rss_after_mb']:>6} MB {r['registry_mb']:>5} MB "
            f"{r['cpu_ms_per_heartbeat']:>9} {r['coordinator_runqueue_wait_share'] * 100:>5.1f}%"
        )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", default="100,500,1000", help="comma-separated node counts")
    parser.add_argument("--agents", type=int, default=5, help="agents per simulated node")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before measuring")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority for the coordinator (e.g. -10 as root on a busy machine)",
    )
    parser.add_argument(
        "--profile", metavar="PREFIX", help="run the coordinator under cProfile: PREFIX-N.prof"
    )
    args = parser.parse_args()
    counts = [int(x) for x in args.nodes.split(",")]
    if args.nice:
        # The load generator too: its own scheduling delays would count as latency.
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    with tempfile.TemporaryDirectory(prefix="signet-capacity-") as tmp:
        root = Path(tmp)
        secret = root / "cluster.key"
        from signet_cluster.security.keyring import generate_secret

        secret.write_text(generate_secret() + "\n")
        secret.chmod(0o600)
        runs = [await run_one(root, n, args, secret) for n in counts]
        idle = await idle_sidecar(root)
    best = max(
        (r for r in runs if (r["p99_ms"] or 1e9) < TARGET_P99_MS),
        key=lambda r: r["nodes"],
        default=None,
    )
    doc = {
        "runs": runs,
        **idle,
        "targets": {
            "nodes_on_one_core_p99_under_50ms": 1000,
            "idle_sidecar_rss_mb": TARGET_IDLE_RSS_MB,
        },
        "met": {
            "1000_nodes": any(
                r["nodes"] >= 1000
                and (r["p99_ms"] or 1e9) < TARGET_P99_MS
                and r["coordinator_cpu_share"] < 1.0
                and r["errors"] == 0
                for r in runs
            ),
            "idle_rss": idle["idle_sidecar_rss_mb"] <= TARGET_IDLE_RSS_MB,
        },
        # Nodes one core could take at 1 heartbeat/s, from the CPU cost per heartbeat of the
        # largest run (linear: the steady-state cost per heartbeat does not grow with N).
        "implied_nodes_per_core": round(1000 / runs[-1]["cpu_ms_per_heartbeat"])
        if runs[-1]["cpu_ms_per_heartbeat"]
        else None,
        "largest_run_meeting_p99": best["nodes"] if best else None,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "coordinator_nice": args.nice,
    }
    if not args.json_only:
        print(table(runs))
        print(f"idle sidecar RSS: {idle['idle_sidecar_rss_mb']} MB")
        print()
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
