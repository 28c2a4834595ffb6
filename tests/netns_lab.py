"""Several test hosts on one machine: each node (dev daemon + sidecar) in its own network
namespace, joined by veth pairs to a bridge on the host, so traffic between sidecars crosses
a real (virtual) network that the tests can cut and heal.

Needs root and `ip` (iproute2); the tests that use it skip with the reason otherwise. Only
addresses inside namespaces made here are ever contacted.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import yaml

from signet_cluster.security.keyring import generate_secret

_LAB_COUNTER = itertools.count()
SIDECAR_PORT = 3860
DAEMON_PORT = 3850


def netns_unavailable() -> str | None:
    """Why namespace tests cannot run here, or None."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` does not work here: {probe.stderr.decode().strip()}"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@attrs.define
class LabNode:
    index: int
    name: str
    netns: str
    host_veth: str
    address: str
    workspace: Path
    state_dir: Path
    log_dir: Path
    coordinator: bool
    flavor: str = "ts"
    daemon: asyncio.subprocess.Process | None = None
    sidecar: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{SIDECAR_PORT}"

    @property
    def db_path(self) -> Path:
        return self.workspace / "memory" / "memories.db"


class NetnsLab:
    """Build with `await lab.setup(rosters)`, always `await lab.teardown()`."""

    def __init__(
        self,
        tmp_path: Path,
        heartbeat_interval: float = 0.2,
        sidecar_env: dict[str, str] | None = None,
    ) -> None:
        # Unique per lab, not just per process: the kernel removes a deleted namespace's
        # links asynchronously, so the next lab in this run must not reuse their names.
        tag = f"{os.getpid() % 10000}{next(_LAB_COUNTER) % 100}"
        self.tmp_path = tmp_path
        self.bridge = f"scbr{tag}"
        self.prefix = f"sc{tag}"
        self.subnet = f"10.{200 + os.getpid() % 50}.{int(tag) % 250}"
        self.heartbeat_interval = heartbeat_interval
        self.sidecar_env = sidecar_env or {}
        self.nodes: list[LabNode] = []
        self.secret_file = tmp_path / "cluster.secret"
        self.secret_file.write_text(generate_secret())
        self.secret_file.chmod(0o600)
        self._bridge_up = False
        # Everything created so far, so a setup that fails half-way is still cleaned up.
        self._namespaces: list[str] = []
        self._links: list[str] = []

    @property
    def host_address(self) -> str:
        return f"{self.subnet}.1"

    async def setup(
        self, rosters: list[list[dict[str, Any]]], flavors: list[str] | None = None
    ) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        self._bridge_up = True
        _ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, roster in enumerate(rosters):
            name = f"n{i + 1}"
            netns = f"{self.prefix}{name}"
            host_veth, inner = f"{self.prefix}h{i + 1}", f"{self.prefix}i{i + 1}"
            _ip("netns", "add", netns)
            self._namespaces.append(netns)
            _ip("link", "add", host_veth, "type", "veth", "peer", "name", inner)
            self._links.append(host_veth)
            _ip("link", "set", inner, "netns", netns)
            _ip("link", "set", host_veth, "master", self.bridge)
            _ip("link", "set", host_veth, "up")
            address = f"{self.subnet}.{11 + i}"
            _ip("-n", netns, "addr", "add", f"{address}/24", "dev", inner)
            _ip("-n", netns, "link", "set", inner, "up")
            _ip("-n", netns, "link", "set", "lo", "up")
            workspace = self.tmp_path / name / "workspace"
            workspace.mkdir(parents=True)
            (workspace / "agent.yaml").write_text(yaml.safe_dump({"agents": {"roster": roster}}))
            log_dir = self.tmp_path / name / "logs"
            log_dir.mkdir()
            self.nodes.append(
                LabNode(
                    index=i,
                    name=name,
                    netns=netns,
                    host_veth=host_veth,
                    address=address,
                    workspace=workspace,
                    state_dir=self.tmp_path / name / "state",
                    log_dir=log_dir,
                    coordinator=i == 0,
                    flavor=(flavors or ["ts"])[i % len(flavors or ["ts"])],
                )
            )

    async def _spawn(
        self, node: LabNode, args: list[str], env: dict[str, str], log: str
    ) -> asyncio.subprocess.Process:
        handle = (node.log_dir / log).open("ab")
        try:
            return await asyncio.create_subprocess_exec(
                "ip",
                "netns",
                "exec",
                node.netns,
                sys.executable,
                *args,
                stdout=handle,
                stderr=handle,
                env=env,
            )
        finally:
            handle.close()

    async def start_daemon(self, node: LabNode) -> None:
        node.daemon = await self._spawn(
            node,
            [
                "-m",
                "signet_cluster.devdaemon",
                "--port",
                str(DAEMON_PORT),
                "--path",
                str(node.workspace),
                "--flavor",
                node.flavor,
            ],
            dict(os.environ),
            "daemon.log",
        )

    async def start_sidecar(self, node: LabNode) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNET_CLUSTER_")}
        env.update(
            {
                "SIGNET_CLUSTER_NODE_ID": node.name,
                "SIGNET_CLUSTER_HOST": node.address,
                "SIGNET_CLUSTER_PORT": str(SIDECAR_PORT),
                "SIGNET_CLUSTER_DAEMON_URL": f"http://127.0.0.1:{DAEMON_PORT}",
                "SIGNET_CLUSTER_WORKSPACE": str(node.workspace),
                "SIGNET_CLUSTER_STATE_DIR": str(node.state_dir),
                "SIGNET_CLUSTER_COORDINATOR": "true" if node.coordinator else "false",
                "SIGNET_CLUSTER_COORDINATORS": self.nodes[0].url,
                "SIGNET_CLUSTER_HEARTBEAT_INTERVAL": str(self.heartbeat_interval),
                "SIGNET_CLUSTER_SECRET_FILE": str(self.secret_file),
                "SIGNET_CLUSTER_LOG_FORMAT": "json",
                **self.sidecar_env,
            }
        )
        node.sidecar = await self._spawn(node, ["-m", "cli", "serve"], env, "sidecar.log")

    async def start(self) -> None:
        for node in self.nodes:
            await self.start_daemon(node)
        for node in self.nodes:
            await self.start_sidecar(node)
        for node in self.nodes:
            await self.wait_http(node.url + "/livez", node)

    async def wait_http(self, url: str, node: LabNode, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while loop.time() < deadline:
                if node.sidecar is not None and node.sidecar.returncode is not None:
                    raise AssertionError(
                        f"sidecar {node.name} exited: {self.log(node, 'sidecar.log')}"
                    )
                try:
                    async with session.get(url) as resp:
                        if resp.status < 500:
                            return
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"{url} did not answer: {self.log(node, 'sidecar.log')}")

    def log(self, node: LabNode, name: str) -> str:
        path = node.log_dir / name
        return path.read_text()[-3000:] if path.exists() else "(no log)"

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process | None, sig: int = signal.SIGKILL) -> None:
        if proc is None or proc.returncode is not None:
            return
        # `ip netns exec` execs the target, so this pid is the Python process itself.
        proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def kill_daemon(self, node: LabNode) -> None:
        await self._kill(node.daemon)

    async def kill_sidecar(self, node: LabNode) -> None:
        await self._kill(node.sidecar)

    def cut(self, node: LabNode) -> None:
        """Take the node off the network (its processes keep running)."""
        _ip("link", "set", node.host_veth, "down")

    def heal(self, node: LabNode) -> None:
        _ip("link", "set", node.host_veth, "up")

    async def teardown(self) -> None:
        for node in self.nodes:
            await self._kill(node.sidecar, signal.SIGTERM)
            await self._kill(node.daemon, signal.SIGTERM)
        self.destroy_network()

    def destroy_network(self) -> None:
        # `ip` answers in milliseconds; no need to leave the event loop for it.
        for link in self._links:
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        for netns in self._namespaces:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        if self._bridge_up:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
