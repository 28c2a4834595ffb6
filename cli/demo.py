"""`signet-cluster demo`: a whole cluster on loopback (dev daemons + sidecars, the first one
coordinator) for trying signet-cluster with no Signet installed. Every process is a child
of the demo; Ctrl-C or SIGTERM stops them all and removes the temporary workspace."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import click
import yaml

from signet_cluster.security.keyring import generate_secret, write_private
from signet_cluster.security.roles import generate_role_key

from .client import CliError, run_async

# Agents of every read policy, spread over the nodes (node i gets entry i % len).
DEMO_ROSTERS: list[list[dict[str, Any]]] = [
    [
        {"name": "alice", "memory": {"read_policy": "isolated"}},
        {"name": "bob", "memory": {"read_policy": "shared"}},
    ],
    [
        {"name": "carol", "memory": {"read_policy": {"type": "group", "group": "ops"}}},
        {"name": "dave", "memory": {"read_policy": {"type": "group", "group": "ops"}}},
    ],
    [
        {"name": "erin", "memory": {"read_policy": "shared"}},
        {"name": "frank", "memory": {"read_policy": {"type": "group", "group": "ops"}}},
    ],
]


@attrs.define
class DemoNode:
    index: int
    node_id: str
    sidecar_port: int
    daemon_port: int
    workspace: Path
    state_dir: Path
    flavor: str
    agents: list[str]
    daemon: asyncio.subprocess.Process | None = None
    sidecar: asyncio.subprocess.Process | None = None

    @property
    def sidecar_url(self) -> str:
        return f"http://127.0.0.1:{self.sidecar_port}"

    @property
    def daemon_url(self) -> str:
        return f"http://127.0.0.1:{self.daemon_port}"


def port_free(port: int) -> bool:
    """Whether a sidecar could listen on 127.0.0.1:port now. Checked before starting: a
    port someone else holds would otherwise answer our readiness probes for them."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the sidecar binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: if the demo itself is killed outright, its children get SIGTERM instead of
    # living on as orphans.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def roster_for(index: int, nodes: int) -> list[dict[str, Any]]:
    if index < len(DEMO_ROSTERS):
        return DEMO_ROSTERS[index]
    return [{"name": f"agent{index + 1}", "memory": {"read_policy": "shared"}}]


def plan(root: Path, nodes: int, port: int, flavors: list[str]) -> list[DemoNode]:
    planned = []
    for i in range(nodes):
        workspace = root / f"node{i + 1}" / "workspace"
        workspace.mkdir(parents=True, exist_ok=True)
        roster = roster_for(i, nodes)
        (workspace / "agent.yaml").write_text(
            yaml.safe_dump({"agent": {"name": f"demo-node{i + 1}"}, "agents": {"roster": roster}})
        )
        planned.append(
            DemoNode(
                index=i,
                node_id=f"node{i + 1}",
                sidecar_port=port + i,
                daemon_port=free_port(),
                workspace=workspace,
                state_dir=root / f"node{i + 1}" / "state",
                flavor=flavors[i % len(flavors)],
                agents=[entry["name"] for entry in roster],
            )
        )
    return planned


async def _spawn(
    args: list[str], env: dict[str, str], log_path: Path
) -> asyncio.subprocess.Process:
    log = log_path.open("ab")
    try:
        return await asyncio.create_subprocess_exec(
            *args, stdout=log, stderr=log, env=env, preexec_fn=_die_with_parent
        )
    finally:
        log.close()


async def _wait_http(
    url: str,
    deadline: float,
    proc: asyncio.subprocess.Process,
    what: str,
    node_id: str | None = None,
) -> None:
    """Until `url` answers; with `node_id`, it must answer as that node (`/api/cluster/info`),
    so a process that took the port meanwhile is never mistaken for ours."""
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while loop.time() < deadline:
            if proc.returncode is not None:
                raise CliError(
                    f"{what} exited with code {proc.returncode} during start-up (see its log)"
                )
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                async with session.get(url) as resp:
                    if resp.status < 500 and node_id is None:
                        return
                    if resp.status == 200:
                        body = await resp.json()
                        answered = body.get("node_id") if isinstance(body, dict) else None
                        if answered == node_id:
                            return
                        raise CliError(f"{url} answers as {answered!r}, not the demo's {what}")
            await asyncio.sleep(0.1)
    raise CliError(f"{what} did not answer at {url} in time")


def write_secret(root: Path) -> Path:
    path = root / "cluster.secret"
    path.write_text(generate_secret())
    path.chmod(0o600)
    return path


def write_role_keys(root: Path) -> dict[str, str]:
    """The demo's admin key (for the CLI: `admin.key`) and coordinator key, as the sidecars'
    settings: every demo node lists both public keys and holds the coordinator key, so any
    of them can be promoted."""
    settings = {}
    for role in ("admin", "coordinator"):
        private, public = generate_role_key()
        path = root / f"{role}.key"
        write_private(path, private)
        settings[f"SIGNET_CLUSTER_{role.upper()}_PUBLIC_KEYS"] = public
    settings["SIGNET_CLUSTER_COORDINATOR_KEY_FILE"] = str(root / "coordinator.key")
    return settings


async def seed_memories(nodes: list[DemoNode]) -> int:
    """One global note per agent, written through the first sidecar (so most travel one hop
    to their owner): something for a federated recall to find."""
    written = 0
    url = nodes[0].sidecar_url + "/api/memory/remember"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for node in nodes:
            for agent in node.agents:
                body = {
                    "content": f"{agent} on {node.node_id}: the staging deploy checklist lives in ops/{agent}.md",
                    "agentId": agent,
                    "idempotencyKey": f"demo-{agent}",
                }
                async with session.post(url, json=body) as resp:
                    if resp.status in (200, 202):
                        written += 1
    return written


async def start_node(
    node: DemoNode,
    coordinator_url: str,
    root: Path,
    interval: float,
    role_settings: dict[str, str],
) -> None:
    env = dict(os.environ)
    for key in [k for k in env if k.startswith("SIGNET_CLUSTER_")]:
        del env[key]
    loop = asyncio.get_running_loop()
    node.daemon = await _spawn(
        [
            sys.executable,
            "-m",
            "signet_cluster.devdaemon",
            "--port",
            str(node.daemon_port),
            "--path",
            str(node.workspace),
            "--flavor",
            node.flavor,
        ],
        env,
        root / f"{node.node_id}-daemon.log",
    )
    await _wait_http(
        f"{node.daemon_url}/health", loop.time() + 20, node.daemon, f"dev daemon of {node.node_id}"
    )
    env.update(
        {
            "SIGNET_CLUSTER_NODE_ID": node.node_id,
            "SIGNET_CLUSTER_PORT": str(node.sidecar_port),
            "SIGNET_CLUSTER_DAEMON_URL": node.daemon_url,
            "SIGNET_CLUSTER_WORKSPACE": str(node.workspace),
            "SIGNET_CLUSTER_STATE_DIR": str(node.state_dir),
            "SIGNET_CLUSTER_COORDINATOR": "true" if node.index == 0 else "false",
            "SIGNET_CLUSTER_COORDINATORS": coordinator_url,
            "SIGNET_CLUSTER_HEARTBEAT_INTERVAL": str(interval),
            "SIGNET_CLUSTER_LOG_FORMAT": "json",
            # One cluster key for every demo node; admin commands sign with admin.key.
            "SIGNET_CLUSTER_SECRET_FILE": str(root / "cluster.secret"),
            **role_settings,
        }
    )
    node.sidecar = await _spawn(
        [sys.executable, "-m", "cli", "serve"], env, root / f"{node.node_id}-sidecar.log"
    )
    await _wait_http(
        f"{node.sidecar_url}/api/cluster/info",
        loop.time() + 20,
        node.sidecar,
        f"sidecar of {node.node_id}",
        node_id=node.node_id,
    )


async def wait_formed(coordinator_url: str, count: int, timeout: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    body: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while loop.time() < deadline:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                async with session.get(f"{coordinator_url}/api/cluster/status") as resp:
                    body = await resp.json()
                alive = [n for n in body.get("nodes", []) if n.get("state") == "alive"]
                if len(alive) >= count:
                    return body
            await asyncio.sleep(0.2)
    raise CliError(
        f"the cluster did not form within {timeout:g}s (see the logs in the demo folder)"
    )


async def stop_all(nodes: list[DemoNode], grace: float = 10.0) -> None:
    procs = [
        p for n in nodes for p in (n.sidecar, n.daemon) if p is not None and p.returncode is None
    ]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), timeout=grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def describe(nodes: list[DemoNode], root: Path, keep: bool) -> str:
    coord = nodes[0].sidecar_url
    lines = [
        f"signet-cluster demo: {len(nodes)} nodes on loopback (files in {root}{'' if keep else ', removed on exit'})",
        "",
    ]
    for node in nodes:
        role = "coordinator" if node.index == 0 else "member"
        lines.append(
            f"  {node.node_id}: sidecar {node.sidecar_url} ({role}, pid {node.sidecar.pid if node.sidecar else '?'})"
            f"  dev daemon {node.daemon_url} ({node.flavor}, pid {node.daemon.pid if node.daemon else '?'})"
            f"  agents: default, {', '.join(node.agents)}"
        )
    reader = next((a for n in nodes for a in n.agents if a == "bob"), nodes[0].agents[0])
    lines += [
        "",
        "Try:",
        f"  export SIGNET_CLUSTER_SIDECAR={coord} SIGNET_CLUSTER_ADMIN_KEY_FILE={root / 'admin.key'}",
        "  signet-cluster status                 # every node, its daemon and agents",
        f"  signet-cluster explain {reader}           # who owns it, who can read it, why a read would miss",
        "  signet-cluster routes",
        f"  curl -s {coord}/api/memory/recall -H 'content-type: application/json' \\",
        f'       -d \'{{"query":"staging","agentId":"{reader}"}}\'   # a federated recall',
        f"  open {coord}/cluster                 # live topology page; {coord}/metrics for Prometheus",
        f"  kill {nodes[-1].sidecar.pid if nodes[-1].sidecar else 'PID'}   # watch {nodes[-1].node_id} go down within the TTL",
        "",
    ]
    return "\n".join(lines)


async def run_demo(
    nodes_count: int,
    port: int,
    path: Path | None,
    flavors: list[str],
    interval: float,
    exit_when_ready: bool,
) -> None:
    root = path or Path(tempfile.mkdtemp(prefix="signet-cluster-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    nodes = plan(root, nodes_count, port, flavors)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        coordinator_url = nodes[0].sidecar_url
        write_secret(root)
        role_settings = write_role_keys(root)
        for node in nodes:
            await start_node(node, coordinator_url, root, interval, role_settings)
        await wait_formed(coordinator_url, len(nodes), timeout=max(10.0, 10 * interval))
        seeded = await seed_memories(nodes)
        click.echo(f"seeded {seeded} memories (one per agent) through {coordinator_url}")
        click.echo(describe(nodes, root, keep=path is not None), nl=True)
        click.echo(
            "demo ready; stopping it now (--exit-when-ready)."
            if exit_when_ready
            else "demo ready; Ctrl-C stops everything."
        )
        sys.stdout.flush()
        if not exit_when_ready:
            while not stop.is_set():
                # Ctrl-C reaches the children too (same process group): once we are
                # stopping, their exits are expected, not news.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=0.5)
                if stop.is_set():
                    break
                for node in nodes:
                    for what, proc in (("dev daemon", node.daemon), ("sidecar", node.sidecar)):
                        if (
                            proc is not None
                            and proc.returncode is not None
                            and not getattr(proc, "_reported", False)
                        ):
                            click.echo(
                                f"{what} of {node.node_id} exited (code {proc.returncode})",
                                err=True,
                            )
                            proc._reported = True  # type: ignore[attr-defined]
    finally:
        click.echo("stopping demo ...", err=True)
        await stop_all(nodes)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if path is None:
            shutil.rmtree(root, ignore_errors=True)
        click.echo("demo stopped; no process left behind.", err=True)


@click.command()
@click.option(
    "--nodes", type=click.IntRange(1, 16), default=3, show_default=True, help="Number of nodes."
)
@click.option(
    "--port",
    type=click.IntRange(1, 65000),
    default=3860,
    show_default=True,
    help="First sidecar port; node i listens on PORT+i.",
)
@click.option(
    "--path",
    type=click.Path(path_type=Path),
    help="Keep workspaces, state and logs here (default: a temporary folder removed on exit).",
)
@click.option(
    "--flavors",
    default="ts",
    show_default=True,
    help="Comma-separated dev daemon flavors assigned round-robin (ts, ts-legacy, rust).",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds between heartbeats.",
)
@click.option(
    "--exit-when-ready", is_flag=True, help="Stop as soon as the cluster has formed (for scripts)."
)
def demo(
    nodes: int,
    port: int,
    path: Path | None,
    flavors: str,
    heartbeat_interval: float,
    exit_when_ready: bool,
) -> None:
    """Start a local cluster of dev daemons and sidecars on loopback and keep it running."""
    flavor_list = [f.strip() for f in flavors.split(",") if f.strip()]
    bad = [f for f in flavor_list if f not in ("ts", "ts-legacy", "rust")]
    if bad or not flavor_list:
        raise click.BadParameter(
            f"unknown flavor(s) {', '.join(bad) or '(none given)'}; use ts, ts-legacy, rust",
            param_hint="--flavors",
        )
    taken = [p for p in range(port, port + nodes) if not port_free(p)]
    if taken:
        raise CliError(
            f"port(s) {', '.join(map(str, taken))} already in use (another demo or sidecar?); "
            "stop it or choose another --port"
        )
    run_async(run_demo(nodes, port, path, flavor_list, heartbeat_interval, exit_when_ready))
