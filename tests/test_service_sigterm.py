"""What a service manager relies on: `signet-cluster serve` (the command the units run)
stops on SIGTERM by finishing the requests it is serving, then exits 0 within the units'
stop timeout."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from cli.service import stop_timeout
from signet_cluster.devdaemon import DevDaemonConfig, make_devdaemon_app

from .cluster_helpers import free_port, wait_for

GRACE_S = 8.0
DAEMON_LATENCY_MS = 1500


async def test_sigterm_lets_an_in_flight_request_finish(tmp_path: Path) -> None:
    """A request in flight when SIGTERM arrives (held at a slow daemon) completes with 200;
    the process then exits 0 before systemd/launchd would send SIGKILL."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    daemon = TestServer(
        make_devdaemon_app(DevDaemonConfig(path=workspace, flavor="ts")), host="127.0.0.1"
    )
    await daemon.start_server()
    daemon_url = str(daemon.make_url("")).rstrip("/")
    port = free_port()
    sidecar = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "SIGNET_CLUSTER_PORT": str(port),
        "SIGNET_CLUSTER_DAEMON_URL": daemon_url,
        "SIGNET_CLUSTER_WORKSPACE": str(workspace),
        "SIGNET_CLUSTER_STATE_DIR": str(tmp_path / "state"),
        "SIGNET_CLUSTER_COORDINATOR": "true",
        "SIGNET_CLUSTER_SHUTDOWN_TIMEOUT": str(GRACE_S),
        "SIGNET_CLUSTER_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    in_flight: asyncio.Task[tuple[int, object]] | None = None
    try:

        async def ready() -> bool:
            if proc.returncode is not None:
                raise AssertionError("serve exited before it was ready")
            try:
                async with session.get(sidecar + "/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, timeout=30, what="the sidecar to be ready")
        async with session.post(
            daemon_url + "/__devdaemon/faults", json={"latency_ms": DAEMON_LATENCY_MS}
        ) as resp:
            assert resp.status == 200
        async with session.delete(daemon_url + "/__devdaemon/requests"):
            pass

        async def slow_request() -> tuple[int, object]:
            async with session.get(sidecar + "/api/memories", params={"limit": "1"}) as resp:
                return resp.status, await resp.json(content_type=None)

        in_flight = asyncio.create_task(slow_request())

        async def at_daemon() -> bool:
            async with session.get(daemon_url + "/__devdaemon/requests") as resp:
                seen = (await resp.json())["requests"]
            return any(r["path"] == "/api/memories" for r in seen)

        await wait_for(at_daemon, what="the request to reach the daemon")
        assert not in_flight.done()
        proc.send_signal(signal.SIGTERM)

        status, body = await in_flight
        assert status == 200, body
        assert isinstance(body, dict) and "memories" in body
        code = await asyncio.wait_for(proc.wait(), stop_timeout(GRACE_S))
        assert code == 0
    finally:
        if in_flight is not None and not in_flight.done():
            in_flight.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await session.close()
        await daemon.close()
    _out, err = await proc.communicate()
    events = [
        json.loads(line)["event"] for line in err.decode().splitlines() if line.startswith("{")
    ]
    assert events.index("sidecar_stopping") < events.index("sidecar_stopped")
