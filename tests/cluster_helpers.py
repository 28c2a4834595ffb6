"""Real clusters for tests: dev daemons and sidecars as aiohttp servers on ephemeral
loopback ports, started and stopped inside the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar import keys
from sidecar.app import make_app
from signet_cluster.clock import Clock
from signet_cluster.devdaemon import DevDaemonConfig, make_devdaemon_app
from signet_cluster.settings import Settings


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_roster(workspace: Path, roster: list[dict[str, Any]]) -> None:
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "agent.yaml").write_text(yaml.safe_dump({"agents": {"roster": roster}}))


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll `predicate` until true, failing the test after `timeout` seconds (no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if await predicate():
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


@attrs.define
class Node:
    name: str
    workspace: Path
    state_dir: Path
    daemon_server: TestServer | None = None
    sidecar_server: TestServer | None = None
    settings: Settings | None = None
    flavor: str = "ts"

    @property
    def url(self) -> str:
        assert self.settings is not None
        return self.settings.url

    @property
    def daemon_url(self) -> str:
        assert self.daemon_server is not None
        return str(self.daemon_server.make_url("")).rstrip("/")

    @property
    def app(self) -> web.Application:
        assert self.sidecar_server is not None
        return self.sidecar_server.app  # type: ignore[return-value]


class Cluster:
    """Builds and tears down nodes; `session` is a plain client for the test's own calls."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.nodes: dict[str, Node] = {}
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Cluster:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for node in list(self.nodes.values()):
            await self.stop_sidecar(node)
            await self.stop_daemon(node)
        if self.session is not None:
            await self.session.close()

    async def start_daemon(self, node: Node, **config: Any) -> None:
        app = make_devdaemon_app(DevDaemonConfig(path=node.workspace, flavor=node.flavor, **config))
        node.daemon_server = TestServer(app, host="127.0.0.1", port=free_port())
        await node.daemon_server.start_server()

    async def stop_daemon(self, node: Node) -> None:
        if node.daemon_server is not None:
            await node.daemon_server.close()
            node.daemon_server = None

    async def start_sidecar(self, node: Node, clock: Clock | None = None, **overrides: Any) -> None:
        assert node.settings is not None
        if overrides:
            node.settings = attrs.evolve(node.settings, **overrides)
        app = make_app(node.settings, clock=clock)
        node.sidecar_server = TestServer(app, host="127.0.0.1", port=node.settings.port)
        await node.sidecar_server.start_server()

    async def stop_sidecar(self, node: Node) -> None:
        if node.sidecar_server is not None:
            await node.sidecar_server.close()
            node.sidecar_server = None

    async def add(
        self,
        name: str,
        roster: list[dict[str, Any]] | None = None,
        *,
        flavor: str = "ts",
        coordinator: bool = False,
        coordinators: tuple[str, ...] = (),
        clock: Clock | None = None,
        start_daemon: bool = True,
        **settings: Any,
    ) -> Node:
        workspace = self.tmp_path / name / "workspace"
        write_roster(workspace, roster or [])
        node = Node(
            name=name, workspace=workspace, state_dir=self.tmp_path / name / "state", flavor=flavor
        )
        self.nodes[name] = node
        if start_daemon:
            await self.start_daemon(node)
        port = free_port()
        values: dict[str, Any] = {
            "node_id": name,
            "port": port,
            "daemon_url": node.daemon_url if start_daemon else f"http://127.0.0.1:{free_port()}",
            "workspace": str(workspace),
            "state_dir": str(node.state_dir),
            "coordinator": coordinator,
            "coordinators": coordinators,
            "heartbeat_interval": 0.1,
            "roster_refresh": 0.5,
            "peer_timeout": 1.0,
            "daemon_timeout": 2.0,
        }
        values.update(settings)
        node.settings = Settings(**values)
        await self.start_sidecar(node, clock=clock)
        return node

    async def get(self, url: str, **kw: Any) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.get(url, **kw) as resp:
            return resp.status, await resp.json(content_type=None)

    async def post(self, url: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.post(url, json=body, **kw) as resp:
            return resp.status, await resp.json(content_type=None)

    async def delete(self, url: str, **kw: Any) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.delete(url, **kw) as resp:
            return resp.status, await resp.json(content_type=None)

    async def status(self, node: Node) -> dict[str, Any]:
        code, body = await self.get(node.url + "/api/cluster/status")
        assert code == 200, body
        return body  # type: ignore[no-any-return]

    async def wait_states(
        self, via: Node, expected: dict[str, str], timeout: float = 10.0
    ) -> dict[str, Any]:
        """Wait until `via`'s status shows each node in the expected state."""
        latest: dict[str, Any] = {}

        async def check() -> bool:
            nonlocal latest
            latest = await self.status(via)
            states = {n["node_id"]: n["state"] for n in latest["nodes"]}
            return all(states.get(k) == v for k, v in expected.items())

        await wait_for(check, timeout, f"states {expected} (last: {latest.get('nodes')})")
        return latest


def registry_of(node: Node) -> Any:
    return node.app[keys.REGISTRY]
