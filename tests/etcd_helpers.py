"""A real etcd for tests: Debian's `etcd-server` binary on ephemeral loopback ports with a
throw-away data dir, started and stopped (or killed) by the test. Tests that need it skip
with a clear reason when the binary is not installed; CI installs it (.ci/run)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from .cluster_helpers import free_port, wait_for

ETCD_BINARY = shutil.which("etcd") or "/usr/bin/etcd"


def etcd_available() -> bool:
    return os.access(ETCD_BINARY, os.X_OK)


class EtcdServer:
    """One single-member etcd. `stop()` + `start()` restarts it on the same ports and data."""

    def __init__(self, base: Path) -> None:
        self.data_dir = base / "etcd-data"
        self.log_path = base / "etcd.log"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def _spawn(self) -> subprocess.Popen[bytes]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                [
                    ETCD_BINARY,
                    "--name=test",
                    f"--data-dir={self.data_dir}",
                    f"--listen-client-urls={self.url}",
                    f"--advertise-client-urls={self.url}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=test={peer}",
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
        process.send_signal(sig)
        await asyncio.to_thread(process.wait, 30)

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
