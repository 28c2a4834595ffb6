"""Exhaustion: a flood of idle connections is shed early (probes and cluster calls still
served, readiness and metrics say so), and a spool on a full disk still drains, is
reported, and refuses new writes with 503."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sidecar.memory.handoff import SPOOL
from sidecar.security.limits import CONNECTIONS, PRIORITY_HEADROOM

from .cluster_helpers import Cluster, Node, free_port, wait_for
from .routing_helpers import client
from .test_bad_input import ALICE, raw_exchange
from .test_spool_handoff import contents, owner_down, remember_bob, spool_depth


@contextlib.asynccontextmanager
async def idle_connections(node: Node, count: int) -> AsyncIterator[list[asyncio.StreamWriter]]:
    """`count` connections that send nothing (as in the incident: 1,100 of them)."""
    assert node.settings is not None
    writers: list[asyncio.StreamWriter] = []
    try:
        for _ in range(count):
            _reader, writer = await asyncio.open_connection("127.0.0.1", node.settings.port)
            writers.append(writer)
        yield writers
    finally:
        for writer in writers:
            writer.close()


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:80]
    return int(answer.split(b" ", 2)[1])


async def fresh_get(node: Node, path: str, headers: str = "") -> bytes:
    return await raw_exchange(
        node, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode()
    )


async def wait_open(node: Node, count: int) -> None:
    async def counted() -> bool:
        return node.app[CONNECTIONS].open >= count

    await wait_for(counted, what=f"{count} connections to be counted")


async def test_idle_connection_flood_is_shed_while_probes_and_cluster_calls_work(
    cluster: Cluster,
) -> None:
    """Past max_connections a new client gets 503 at once (not a hang), while /livez,
    /readyz and signed cluster calls are still answered; /readyz and /metrics name the
    exhaustion; once the idle connections go, everything is served again."""
    a = await cluster.add("a", ALICE, coordinator=True, max_connections=20)
    async with idle_connections(a, 30):
        await wait_open(a, 30)
        assert status_of(await fresh_get(a, "/livez")) == 200
        answer = await fresh_get(a, "/api/memories?limit=1")
        assert status_of(answer) == 503 and b"too_many_connections" in answer, answer[:300]
        # A local recall (the fast lane's kind of request) is shed the same way: the idle
        # connections above sat in the fast lane and were counted there.
        body = b'{"query": "x", "agentId": "alice"}'
        recall = await raw_exchange(
            a,
            b"POST /api/memory/recall HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
        )
        assert status_of(recall) == 503 and b"too_many_connections" in recall, recall[:300]
        ready = await fresh_get(a, "/readyz")
        assert status_of(ready) == 503 and b"connection limit reached" in ready, ready
        code, status, _ = await cluster.request(
            "GET",
            a.url + "/api/cluster/status",
            headers={"Connection": "close"},
        )
        assert code == 200, status
        metrics = await fresh_get(a, "/metrics")
        # /metrics is not a probe: shed too. The gauge is read from the app instead.
        assert status_of(metrics) == 503
    guard = a.app[CONNECTIONS]
    assert guard.shed_requests >= 2

    async def recovered() -> bool:
        return status_of(await fresh_get(a, "/readyz")) == 200

    await wait_for(recovered, what="readiness after the flood")
    assert status_of(await fresh_get(a, "/api/memories?limit=1")) == 200
    code, text, _ = await client(cluster, "GET", a.url + "/metrics")
    assert code == 200
    assert 'signet_cluster_connections_shed_total{how="over_limit"}' in text
    assert "signet_cluster_open_connections " in text


async def test_one_source_cannot_take_every_connection(cluster: Cluster) -> None:
    """A single address past max_connections_per_source gets 503 for new connections; the
    node as a whole stays ready (one noisy client is not the node's problem)."""
    a = await cluster.add(
        "a", ALICE, coordinator=True, max_connections=1000, max_connections_per_source=10
    )
    async with idle_connections(a, 12):
        await wait_open(a, 12)
        answer = await fresh_get(a, "/api/memories?limit=1")
        assert status_of(answer) == 503 and b"max_connections_per_source 10" in answer
        assert status_of(await fresh_get(a, "/readyz")) == 200
        assert status_of(await fresh_get(a, "/livez")) == 200


async def test_connections_past_the_headroom_make_room_for_newer_ones(cluster: Cluster) -> None:
    """Past max_connections plus the headroom kept for probes, the oldest idle connection
    is closed for each new one: a flood cannot run the process out of descriptors, and a
    probe that arrives last is still answered."""
    a = await cluster.add("a", ALICE, coordinator=True, max_connections=4)
    async with idle_connections(a, 4 + PRIORITY_HEADROOM + 10):

        async def dropped() -> bool:
            return a.app[CONNECTIONS].dropped >= 10

        await wait_for(dropped, what="connections past the headroom to be closed")

        async def bounded() -> bool:
            return a.app[CONNECTIONS].open <= 4 + PRIORITY_HEADROOM

        await wait_for(bounded, what="the open connections to stay within the headroom")
        assert status_of(await fresh_get(a, "/livez")) == 200

    async def settled() -> bool:
        return a.app[CONNECTIONS].open <= 1

    await wait_for(settled, what="the count to return to zero")


# -- the spool on a full disk ---------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size_mb: int) -> Iterator[Path]:
    """A real filesystem of `size_mb` (tmpfs), or skip where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (CI runs these as root)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Take every free byte of the filesystem holding `path`."""
    filler = path / "filler"
    fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
    try:
        for size in (1 << 20, 4096, 512):
            while True:
                try:
                    if os.write(fd, b"\1" * size) < size:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


async def test_a_full_disk_still_drains_and_is_reported(cluster: Cluster, tmp_path: Path) -> None:
    """Writes spooled before the disk filled up are all delivered, once each, while the disk
    stays full; meanwhile /readyz is 503 naming the full disk, /metrics shows it, and a
    new write for the down owner gets 503 (not accepted). With space back, it is ready."""
    with small_filesystem(tmp_path / "statefs", 24) as fs:
        a, b, _clock = await owner_down(cluster, state_dir=str(fs / "state"))
        for i in range(5):
            code, body, _ = await remember_bob(cluster, a, f"Spooled before the disk filled {i}")
            assert code == 202, body
        filler = fill(fs)
        code, body, headers = await remember_bob(cluster, a, "After the disk filled")
        assert code == 503 and int(headers["Retry-After"]) > 0, body

        async def reports_full() -> bool:
            code, body, _ = await client(cluster, "GET", a.url + "/readyz")
            return code == 503 and "disk" in body["reason"] and "full" in body["reason"]

        await wait_for(reports_full, what="/readyz to report the full disk")
        code, text, _ = await client(cluster, "GET", a.url + "/metrics")
        assert "signet_cluster_spool_disk_full 1.0" in text

        await cluster.start_sidecar(b)

        async def drained() -> bool:
            return await spool_depth(cluster, a) == 0

        await wait_for(drained, timeout=20, what="the spool to drain on a full disk")
        assert contents(b, "bob") == [f"Spooled before the disk filled {i}" for i in range(5)]
        # The deletes needed space: the reserve set aside for them was given up.
        assert not (fs / "state" / "spool.db.reserve").exists()

        filler.unlink()

        async def ready_again() -> bool:
            await asyncio.to_thread(a.app[SPOOL].maintain)
            code, _body, _ = await client(cluster, "GET", a.url + "/readyz")
            return code == 200

        await wait_for(ready_again, what="readiness once there is space again")
        await cluster.stop_sidecar(a)


# -- pass-through uploads -------------------------------------------------------------------

UPLOAD_HEAD = (
    b"POST /api/documents HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Type: application/octet-stream\r\n\r\n"
)


async def trickle(node: Node, *, every: float, limit_s: float) -> bytes:
    """A chunked upload of one byte every `every` seconds; returns the answer (or b"")."""
    assert node.settings is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", node.settings.port)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    try:
        writer.write(UPLOAD_HEAD)
        while loop.time() < deadline:
            try:
                writer.write(b"1\r\na\r\n")
                await writer.drain()
            except ConnectionError:
                break
            try:
                answer = await asyncio.wait_for(reader.read(4096), every)
            except TimeoutError:
                continue
            return answer
        return b"still open"
    finally:
        writer.close()


async def test_a_trickling_upload_is_cut_off(cluster: Cluster) -> None:
    """An upload passed through to the daemon that falls below min_upload_rate after its
    first body_timeout seconds gets 408 (it no longer holds a daemon connection forever)."""
    a = await cluster.add("a", ALICE, coordinator=True, body_timeout=0.5, min_upload_rate=100)
    answer = await trickle(a, every=0.1, limit_s=8)
    assert answer.startswith(b"HTTP/1.1 408") and b"upload too slow" in answer, answer[:300]


async def test_one_client_cannot_hold_the_whole_upload_pool(cluster: Cluster) -> None:
    """Past UPLOADS_PER_SOURCE uploads in progress from one address, another one is refused
    at once (429); requests that are not uploads still get through to the daemon."""
    from sidecar.memory.passthrough import UPLOADS_PER_SOURCE

    a = await cluster.add("a", ALICE, coordinator=True, body_timeout=5.0, min_upload_rate=1)
    assert a.settings is not None
    held: list[asyncio.StreamWriter] = []
    try:
        for _ in range(UPLOADS_PER_SOURCE):
            _r, writer = await asyncio.open_connection("127.0.0.1", a.settings.port)
            writer.write(UPLOAD_HEAD + b"1\r\na\r\n")
            await writer.drain()
            held.append(writer)

        from sidecar.memory.passthrough import UPLOAD_SLOTS

        async def all_held() -> bool:
            return sum(a.app[UPLOAD_SLOTS].by_source.values()) == UPLOADS_PER_SOURCE

        await wait_for(all_held, what="the uploads to take their slots")
        answer = await trickle(a, every=0.5, limit_s=3)
        assert answer.startswith(b"HTTP/1.1 429") and b"too_many_uploads" in answer, answer[:200]
        assert status_of(await fresh_get(a, "/api/status")) == 200
    finally:
        for writer in held:
            writer.close()


# -- file descriptors, in a real `serve` process ------------------------------------------------


async def serve_with_fd_limit(
    tmp_path: Path, soft: int, hard: int
) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SIGNET_CLUSTER_")},
        "SIGNET_CLUSTER_PORT": str(port),
        "SIGNET_CLUSTER_DAEMON_URL": "http://127.0.0.1:1",
        "SIGNET_CLUSTER_WORKSPACE": str(tmp_path / "workspace"),
        "SIGNET_CLUSTER_STATE_DIR": str(tmp_path / "state"),
        "SIGNET_CLUSTER_COORDINATOR": "true",
        "SIGNET_CLUSTER_LOG_FORMAT": "json",
    }

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=limit,
    )
    return proc, port


async def livez(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return (await asyncio.wait_for(reader.read(64), 5)).startswith(b"HTTP/1.1 200")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


async def test_a_connection_flood_under_a_low_fd_limit_keeps_livez_and_a_quiet_log(
    tmp_path: Path,
) -> None:
    """With only 600 file descriptors (soft = hard), 700 idle connections do not run the
    process out of them: /livez answers throughout, the start line shows max_connections
    fitted to the limit, and the log stays small (no accept-error storm)."""
    proc, port = await serve_with_fd_limit(tmp_path, 600, 600)
    writers: list[asyncio.StreamWriter] = []
    try:
        await wait_for(lambda: livez(port), timeout=30, what="serve to listen")
        for _ in range(700):
            try:
                _r, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            writers.append(writer)
        for _ in range(3):
            assert await livez(port), "/livez did not answer during the flood"
    finally:
        for writer in writers:
            writer.close()
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    started = next(json.loads(x) for x in log.splitlines() if '"sidecar_started"' in x)
    assert started["open_files_limit"] == 600 and started["max_connections"] < 600 - 64
    assert len(log) < 64 * 1024, len(log)


async def test_the_soft_fd_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    """Started with the usual soft limit below the hard one, the sidecar raises it."""
    proc, port = await serve_with_fd_limit(tmp_path, 256, 4096)
    try:
        await wait_for(lambda: livez(port), timeout=30, what="serve to listen")
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    started = next(json.loads(x) for x in log.splitlines() if '"sidecar_started"' in x)
    assert started["open_files_limit"] == 4096
