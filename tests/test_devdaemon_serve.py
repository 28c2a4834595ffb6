"""Running the dev daemon for real: serve_devdaemon, graceful stop, the module and CLI entries."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from cli.devdaemon_cmd import devdaemon
from signet_cluster.devdaemon import DevDaemonConfig, serve_devdaemon
from signet_cluster.devdaemon.__main__ import parse_args

TIMEOUT = aiohttp.ClientTimeout(total=10)


@contextlib.asynccontextmanager
async def running(config: DevDaemonConfig) -> AsyncIterator[tuple[str, asyncio.Task[None]]]:
    ready = asyncio.Event()
    urls: list[str] = []
    task = asyncio.create_task(serve_devdaemon(config, ready, on_listening=urls.append))
    await asyncio.wait_for(ready.wait(), timeout=10)
    try:
        yield urls[0], task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_serve_until_cancelled(tmp_path: Path) -> None:
    """serve_devdaemon listens on an ephemeral port, reports its URL, answers, and stops
    when cancelled; the workspace database is in WAL mode."""
    config = DevDaemonConfig(path=tmp_path, flavor="ts", port=0)
    async with running(config) as (url, task), aiohttp.ClientSession(timeout=TIMEOUT) as http:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        async with http.get(url + "/health") as resp:
            body = await resp.json()
            assert resp.status == 200
            assert body["port"] == int(url.rsplit(":", 1)[1])
            assert body["agentsDir"] == str(tmp_path)
    assert task.done()
    with contextlib.closing(sqlite3.connect(tmp_path / "memory" / "memories.db")) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_stop_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    """A graceful stop lets a slow in-flight request complete, and releases hung ones
    with 503 instead of waiting for them."""
    config = DevDaemonConfig(path=tmp_path, flavor="ts", port=0, latency_ms=300)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        async with running(config) as (url, task):
            slow = asyncio.create_task(http.get(url + "/api/status"))
            await asyncio.sleep(0.1)  # the request is now inside the daemon's delay
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            resp = await slow
            assert resp.status == 200
            resp.release()
        hang = DevDaemonConfig(path=tmp_path, flavor="ts", port=0, fail="hang")
        async with running(hang) as (url, task):
            hung = asyncio.create_task(http.post(url + "/api/memory/recall", json={"query": "x"}))
            await asyncio.sleep(0.1)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=5)
            resp = await hung
            assert resp.status == 503
            resp.release()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_module_entry_stops_on_sigterm(tmp_path: Path) -> None:
    """``python -m signet_cluster.devdaemon`` prints one ready line and exits 0 on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signet_cluster.devdaemon",
        "--port",
        "0",
        "--path",
        str(tmp_path),
        "--flavor",
        "rust",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout=20)).decode().strip()
        match = re.fullmatch(
            rf"devdaemon \(rust\) listening on (http://127\.0\.0\.1:\d+), workspace {re.escape(str(tmp_path))}",
            line,
        )
        assert match, line
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as http,
            http.get(match.group(1) + "/api/version") as resp,
        ):
            assert (await resp.json())["runtime"] == "rust"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_cli_options_are_documented() -> None:
    """The click command has help text on every option and refuses bad flavors."""
    runner = CliRunner()
    result = runner.invoke(devdaemon, ["--help"])
    assert result.exit_code == 0
    for option in ("--port", "--path", "--flavor", "--host", "--version", "--latency-ms", "--fail"):
        assert option in result.output
    assert all(param.help for param in devdaemon.params if param.name != "help")
    bad = runner.invoke(devdaemon, ["--path", "x", "--flavor", "go"])
    assert bad.exit_code != 0


def test_module_arguments_build_the_config(tmp_path: Path) -> None:
    """The module entry maps its flags onto DevDaemonConfig (default version per flavor)."""
    config = parse_args(
        [
            "--path",
            str(tmp_path),
            "--port",
            "0",
            "--flavor",
            "ts-legacy",
            "--latency-ms",
            "2",
            "--fail",
            "error",
        ]
    )
    assert config == DevDaemonConfig(
        path=tmp_path, flavor="ts-legacy", port=0, latency_ms=2.0, fail="error"
    )
    assert config.effective_version == "0.58.1"
    with pytest.raises(ValueError, match="flavor"):
        DevDaemonConfig(path=tmp_path, flavor="go")


def test_module_refuses_bad_numbers_with_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A negative latency or a port out of range is a one-line usage error (exit 2) from
    both entry points, not a traceback or a failed bind."""
    for flag, value in (("--latency-ms", "-1"), ("--port", "70000")):
        with pytest.raises(SystemExit) as stopped:
            parse_args(["--path", str(tmp_path), flag, value])
        assert stopped.value.code == 2
        assert flag.lstrip("-").split("-")[0] in capsys.readouterr().err
        refused = CliRunner().invoke(devdaemon, ["--path", str(tmp_path), flag, value])
        assert refused.exit_code == 2 and flag in refused.output
