"""A real etcd for tests: Debian's `etcd-server` binary on ephemeral loopback ports with a
throw-away data dir (one member, or a cluster of three), started and stopped (or killed,
or frozen) by the test. Tests that need it skip with a clear reason when the binary is not
installed; CI installs it (.ci/run). Also the helpers of the sidecar tests on etcd."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.etcd.backend import ETCD, EtcdBackend
from signet_cluster.etcd.client import EtcdClient

from .cluster_helpers import Cluster, Node, free_port, wait_for

ETCD_BINARY = shutil.which("etcd") or "/usr/bin/etcd"


def etcd_available() -> bool:
    return os.access(ETCD_BINARY, os.X_OK)


class EtcdServer:
    """One etcd member (alone, unless `initial_cluster` names its peers). `stop()` +
    `start()` restarts it on the same ports and data."""

    def __init__(self, base: Path, name: str = "test") -> None:
        self.name = name
        self.data_dir = base / f"etcd-data-{name}"
        self.log_path = base / f"etcd-{name}.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.initial_cluster = f"{name}={self.peer_url}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [
                    ETCD_BINARY,
                    f"--name={self.name}",
                    f"--data-dir={self.data_dir}",
                    f"--listen-client-urls={self.url}",
                    f"--advertise-client-urls={self.url}",
                    f"--listen-peer-urls={self.peer_url}",
                    f"--initial-advertise-peer-urls={self.peer_url}",
                    f"--initial-cluster={self.initial_cluster}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    async def start(self, timeout: float = 30.0) -> None:
        self.process = self._spawn()
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(
                        f"etcd exited with {self.process.returncode}: {self.log_tail()}"
                    )
                try:
                    async with session.get(
                        self.url + "/health", timeout=aiohttp.ClientTimeout(total=1)
                    ) as resp:
                        body = await resp.json(content_type=None)  # etcd says text/plain
                        return resp.status == 200 and body.get("health") == "true"
                except (aiohttp.ClientError, OSError, TimeoutError):
                    return False

            try:
                await wait_for(healthy, timeout, f"etcd on {self.url} to report healthy")
            except BaseException:
                await self.stop(signal.SIGKILL)
                raise

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop etcd (SIGTERM: clean; SIGKILL: a crash) and wait for it to exit."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a frozen member cannot act on SIGTERM
        process.send_signal(sig)
        await asyncio.to_thread(process.wait, 30)

    def freeze(self) -> None:
        """SIGSTOP: the member keeps its sockets open but answers nothing, like a host
        cut off by a network partition (no reset reaches the clients)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def require_etcd() -> None:
    if not etcd_available():
        pytest.skip(
            f"etcd is not installed ({ETCD_BINARY} missing): `apt-get install etcd-server` "
            "to run the etcd backend tests (CI installs it)"
        )


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[EtcdServer]:
    """A running etcd of its own for one test."""
    require_etcd()
    server = EtcdServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class EtcdCluster:
    """Three etcd members on loopback forming one cluster (quorum survives one member)."""

    def __init__(self, base: Path, size: int = 3) -> None:
        self.members = [EtcdServer(base, f"m{i}") for i in range(size)]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(m.url for m in self.members)

    async def start(self) -> None:
        # Members wait for each other's votes before reporting healthy: start them together.
        try:
            await asyncio.gather(*(m.start() for m in self.members))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*(m.stop() for m in self.members))

    async def follower(self) -> EtcdServer:
        """A member that is not the raft leader (freezing it forces no election)."""
        async with aiohttp.ClientSession() as session:
            for member in self.members:
                async with session.post(
                    member.url + "/v3/maintenance/status",
                    json={},
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as resp:
                    status = await resp.json(content_type=None)
                if status["leader"] != status["header"]["member_id"]:
                    return member
        raise AssertionError("every member claims to lead")


@pytest.fixture
async def etcd_cluster(tmp_path: Path) -> AsyncIterator[EtcdCluster]:
    """A running three-member etcd cluster of its own for one test."""
    require_etcd()
    cluster = EtcdCluster(tmp_path)
    await cluster.start()
    try:
        yield cluster
    finally:
        await cluster.stop()


# -- sidecars on etcd ---------------------------------------------------------------------
ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]
BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]
CAROL = [{"name": "carol", "memory": {"read_policy": {"type": "group", "group": "ops"}}}]
SHARED_X = [{"name": "x", "memory": {"read_policy": "shared"}}]
PREFIX = "/signet-cluster/"


def etcd_settings(server: EtcdServer) -> dict[str, Any]:
    return etcd_settings_for((server.url,))


def etcd_settings_for(endpoints: tuple[str, ...]) -> dict[str, Any]:
    # A 2 s lease (etcd's minimum) renewed every 0.25 s keeps the tests short.
    return {
        "registry_backend": "etcd",
        "etcd_endpoints": endpoints,
        "heartbeat_interval": 0.25,
        "peer_ttl": 2.0,
    }


async def add(cluster: Cluster, server: EtcdServer, name: str, roster: Any) -> Node:
    return await cluster.add(name, roster, **etcd_settings(server))


def backend(node: Node) -> EtcdBackend:
    return node.app[ETCD]


async def view(cluster: Cluster, node: Node) -> tuple[dict[str, str], dict[str, str]]:
    """(node id -> state, agent id -> owner) as `node`'s status shows them."""
    status = await cluster.status(node)
    states = {n["node_id"]: n["state"] for n in status["nodes"]}
    return states, {r["agent_id"]: r["node_id"] for r in status["routes"]}


async def wait_view(
    cluster: Cluster,
    node: Node,
    states: dict[str, str],
    routes: dict[str, str],
    timeout: float = 15.0,
) -> None:
    last: Any = None

    async def check() -> bool:
        nonlocal last
        last = await view(cluster, node)
        return all(last[0].get(k) == v for k, v in states.items()) and last[1] == routes

    try:
        await wait_for(check, timeout, f"{node.name} to see {states} {routes}")
    except AssertionError as exc:
        raise AssertionError(f"{exc} (last seen: {last})") from None


async def etcd_keys(server: EtcdServer) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        found = await EtcdClient(session, [server.url], timeout=2).range(PREFIX, prefix=True)
    return {kv.key[len(PREFIX) :]: json.loads(kv.value) for kv in found.kvs}


async def readyz(cluster: Cluster, node: Node) -> tuple[int, Any]:
    return await cluster.get(node.url + "/readyz")


async def has_claim(server: EtcdServer, agent: str, owner: str) -> bool:
    claim = (await etcd_keys(server)).get(f"claims/{agent}")
    return claim is not None and claim["node_id"] == owner
