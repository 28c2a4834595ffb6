"""The real Signet daemons in ../shared/real-signet, started for tests and benchmarks.

Each daemon is a real process (Bun running the released bundle) on a fixed loopback port
below 32768 (ports in the ephemeral range can be taken by outgoing connections), with its
own workspace whose `agent.yaml` is the release's offline one with only the roster changed.
Where the folder is absent the tests that need it skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from .cluster_helpers import Cluster, Node

ROOT = Path(__file__).resolve().parent.parent
REAL_SIGNET = Path(os.environ.get("SIGNET_REAL_DIR", ROOT.parent / "shared" / "real-signet"))
SKIP_REASON = (
    f"the real Signet daemons are not here ({REAL_SIGNET}: expected beside the project as "
    "../shared/real-signet, or set SIGNET_REAL_DIR)"
)
needs_real_signet = pytest.mark.skipif(
    not (REAL_SIGNET / "start-daemon").exists(), reason=SKIP_REASON
)

# The layout the issues measure: three 0.145.7 with different rosters and one 0.58.1.
ISOLATED = {"read_policy": "isolated"}
SHARED = {"read_policy": "shared"}
OPS = {"read_policy": {"type": "group", "group": "ops"}}
LAYOUT: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]] = {
    "node1": ("0.145.7", [("alice", ISOLATED), ("bob", SHARED)]),
    "node2": ("0.145.7", [("carol", OPS), ("dave", OPS)]),
    "node3": ("0.145.7", [("erin", SHARED), ("frank", OPS)]),
    "node4": ("0.58.1", []),
}


def low_free_port(start: int = 21000, end: int = 32000) -> int:
    """A loopback port below the ephemeral range that nothing listens on now."""
    for port in range(start + os.getpid() % 997 * 7, end):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 32768")


@attrs.define
class RealDaemon:
    version: str
    port: int
    workspace: Path
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def flavor(self) -> str:
        return "ts" if self.version != "0.58.1" else "ts-legacy"

    def start(self) -> None:
        out = subprocess.run(
            [str(REAL_SIGNET / "start-daemon"), self.version, str(self.port), str(self.workspace)],
            capture_output=True,
            text=True,
            timeout=300,  # the first start may install Bun with npm
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"start-daemon {self.version} failed: {out.stderr[-2000:]}")
        self.pid = int(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        subprocess.run(
            [str(REAL_SIGNET / "stop-daemon"), str(self.workspace)],
            capture_output=True,
            timeout=60,
            check=False,
        )

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def write_real_roster(
    workspace: Path, version: str, roster: list[tuple[str, dict[str, Any]]]
) -> None:
    """The release's offline agent.yaml with only `agents.roster` replaced."""
    workspace.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REAL_SIGNET / f"ts-{version}" / "agent.yaml").read_text())
    if roster:
        config.setdefault("agents", {})["roster"] = [
            {"name": name, "memory": memory} for name, memory in roster
        ]
    (workspace / "agent.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def start_layout(
    base: Path, layout: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]] = LAYOUT
) -> dict[str, RealDaemon]:
    daemons: dict[str, RealDaemon] = {}
    try:
        for name, (version, roster) in layout.items():
            workspace = base / name
            write_real_roster(workspace, version, roster)
            daemon = RealDaemon(version=version, port=low_free_port(), workspace=workspace)
            daemon.start()
            daemons[name] = daemon
    except BaseException:
        for daemon in daemons.values():
            daemon.stop()
        raise
    return daemons


@pytest.fixture(scope="module")
def real_daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RealDaemon]]:
    """The four real daemons of LAYOUT, started once per test module (about 10 s)."""
    if not (REAL_SIGNET / "start-daemon").exists():
        pytest.skip(SKIP_REASON)
    daemons = start_layout(tmp_path_factory.mktemp("real-signet"))
    yield daemons
    for daemon in daemons.values():
        daemon.stop()


async def real_cluster(
    cluster: Cluster, daemons: dict[str, RealDaemon], **settings: Any
) -> dict[str, Node]:
    """One in-process sidecar per real daemon; the first is the coordinator."""
    nodes: dict[str, Node] = {}
    first: Node | None = None
    for name, daemon in daemons.items():
        nodes[name] = await cluster.add(
            name,
            coordinator=first is None,
            coordinators=() if first is None else (first.url,),
            start_daemon=False,
            daemon_url=daemon.url,
            workspace=str(daemon.workspace),
            flavor=daemon.flavor,
            **settings,
        )
        first = first or nodes[name]
    return nodes
