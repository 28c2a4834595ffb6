"""Real clusters for tests: dev daemons and sidecars as aiohttp servers on ephemeral
loopback ports, started and stopped inside the test's event loop."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer as _AiohttpTestServer
from aiohttp.web_runner import AppRunner, BaseRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from yarl import URL

from sidecar import keys
from sidecar.app import make_app
from sidecar.pipeline.fastlane import SidecarRunner
from sidecar.security.limits import CONNECTIONS, server_options
from signet_cluster.clock import Clock
from signet_cluster.devdaemon import DevDaemonConfig, make_devdaemon_app
from signet_cluster.security.keyring import Keyring, new_key, save_keyring
from signet_cluster.security.roles import PRIVATE_PREFIX, parse_role_key, public_text
from signet_cluster.security.signing import RoleSigner, Signer
from signet_cluster.settings import Settings

# The key every test cluster shares; conftest.py also puts it in SIGNET_CLUSTER_SECRET so a
# CLI child process (`python -m cli`) signs with it too.
TEST_SECRET = "signet-cluster-test-secret-not-for-production-use"


def _role_key(label: bytes) -> tuple[str, str]:
    """A fixed test key pair (private key text, public key text)."""
    seed = hashlib.sha256(b"signet-cluster test role key " + label).digest()
    private = Ed25519PrivateKey.from_private_bytes(seed)
    text = PRIVATE_PREFIX + base64.urlsafe_b64encode(seed).rstrip(b"=").decode()
    return text, public_text(private.public_key())


# The operator's admin key (conftest.py puts it in SIGNET_CLUSTER_ADMIN_KEY for the CLI) and
# the coordinator key every test sidecar holds (so any of them can be promoted).
TEST_ADMIN_KEY, TEST_ADMIN_PUBLIC = _role_key(b"admin")
TEST_COORDINATOR_KEY, TEST_COORDINATOR_PUBLIC = _role_key(b"coordinator")


class TestServer(_AiohttpTestServer):
    """aiohttp's test server, but a client hanging up does not cancel the handler — as in
    production (sidecar/runner.py and the real daemons), so tests see what operators get."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        if keys.SETTINGS in self.app:
            # A sidecar: served as sidecar.runner serves it, fast lane included.
            return SidecarRunner(self.app, **kwargs)
        return AppRunner(self.app, **kwargs)


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
    """Builds and tears down nodes; `session` is a plain client for the test's own calls.

    Every node shares one cluster keyring (`keyring_path`, pass `keyring_file=None` to
    `add` for a keyless node), lists the test admin and coordinator public keys and holds the
    coordinator key; the harness's own get/post/delete are signed with the admin key as the
    operator (`signer_for(node)` signs with the cluster key as a node; `signed=False` sends
    them bare; `request` sends anything)."""

    OPERATOR = "operator"

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.nodes: dict[str, Node] = {}
        self.session: aiohttp.ClientSession | None = None
        key = new_key(TEST_SECRET)
        self.keyring = Keyring(keys=(key,), primary=key.id)
        self.keyring_path = tmp_path / "cluster-keyring.json"
        save_keyring(self.keyring_path, self.keyring)
        self.coordinator_key_path = tmp_path / "coordinator.key"
        self.coordinator_key_path.write_text(TEST_COORDINATOR_KEY)
        self.admin_key_path = tmp_path / "admin.key"
        self.admin_key_path.write_text(TEST_ADMIN_KEY)
        admin = parse_role_key(TEST_ADMIN_KEY, "test admin key")
        # The harness is the operator: it signs with the admin key.
        self.signer: Signer | RoleSigner = RoleSigner(lambda: admin, "admin", wall=time.time)
        # Client TLS for https sidecars (set by TLS tests).
        self.ssl_context: ssl.SSLContext | None = None

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
        node.sidecar_server = TestServer(app, host=node.settings.host, port=node.settings.port)
        await node.sidecar_server.start_server(
            ssl=app[keys.AUTH].tls.server_context(), **server_options(node.settings)
        )
        # Count connections as the runner does (sidecar/runner.py).
        assert node.sidecar_server.runner is not None and node.sidecar_server.runner.server
        app[CONNECTIONS].watch(node.sidecar_server.runner.server)

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
            "keyring_file": str(self.keyring_path),
            "admin_public_keys": (TEST_ADMIN_PUBLIC,),
            "coordinator_public_keys": (TEST_COORDINATOR_PUBLIC,),
            "coordinator_key_file": str(self.coordinator_key_path),
        }
        values.update(settings)
        node.settings = Settings(**values)
        await self.start_sidecar(node, clock=clock)
        return node

    async def request(
        self,
        method: str,
        url: str,
        *,
        data: bytes = b"",
        headers: dict[str, str] | None = None,
        signed: bool = True,
        signer: Signer | RoleSigner | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        """One request with exactly these bytes; signed by the harness unless told not to."""
        assert self.session is not None
        target = URL(url)
        if params:
            target = target.extend_query(params)
        sent = dict(headers or {})
        if signed:
            host = target.host_port_subcomponent or ""
            sent["Host"] = host
            sent.update(
                (signer or self.signer).headers(method, host, target.raw_path_qs, data, sent)
            )
        async with self.session.request(
            method,
            target,
            # aiohttp warns about large raw bytes bodies; a stream sends the same bytes.
            data=io.BytesIO(data) if len(data) > 1_000_000 else data,
            headers=sent,
            # A signature covers Content-Type: aiohttp must not add one it did not sign.
            skip_auto_headers=("Content-Type",),
            ssl=self.ssl_context if self.ssl_context is not None else True,
        ) as resp:
            raw = await resp.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode("utf-8", "replace")
            return resp.status, parsed, dict(resp.headers)

    async def _json(
        self,
        method: str,
        url: str,
        body: Any,
        signed: bool,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else b""
        headers = {
            **({"Content-Type": "application/json"} if body is not None else {}),
            **(headers or {}),
        }
        status, parsed, _ = await self.request(
            method, url, data=data, headers=headers, signed=signed, **kw
        )
        return status, parsed

    async def get(self, url: str, *, signed: bool = True, **kw: Any) -> tuple[int, Any]:
        return await self._json("GET", url, None, signed, **kw)

    async def post(
        self, url: str, body: Any = None, *, signed: bool = True, **kw: Any
    ) -> tuple[int, Any]:
        return await self._json("POST", url, body, signed, **kw)

    async def delete(self, url: str, *, signed: bool = True, **kw: Any) -> tuple[int, Any]:
        return await self._json("DELETE", url, None, signed, **kw)

    def signer_for(self, node_id: str) -> Signer:
        """Sign as another node (a heartbeat must be signed by the node it describes)."""
        return Signer(lambda: self.keyring, node_id, wall=time.time)

    def cli_env(self) -> dict[str, str]:
        """Environment that gives a `python -m cli` child this cluster's key."""
        return {
            "SIGNET_CLUSTER_KEYRING_FILE": str(self.keyring_path),
            "SIGNET_CLUSTER_ADMIN_KEY_FILE": str(self.admin_key_path),
        }

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

        try:
            await wait_for(check, timeout, f"states {expected}")
        except AssertionError as exc:
            seen = {n["node_id"]: n["state"] for n in latest.get("nodes", [])}
            raise AssertionError(f"{exc}; last seen via {via.name}: {seen}") from None
        return latest


def registry_of(node: Node) -> Any:
    return node.app[keys.REGISTRY]
