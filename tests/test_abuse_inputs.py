"""Input that used to answer 500 answers 400: an absolute-form request target (no
authentication needed to send one) and a recall `limit` too large for a float; and what a
refused or malformed request puts in the log is short and rate-limited."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.federation.fanout import _limit
from signet_cluster.errors import ValidationFailed

from .cluster_helpers import Cluster, free_port, wait_for
from .routing_helpers import BOB, client, wait_routes
from .test_bad_input import ALICE, raw_exchange

TARGETS = [
    b"http://x/health",
    b"http://127.0.0.1:1/api/memories",
    b"https://x:99999/livez",
    b"http://user:pw@x/api/cluster/status",
    b"x/health",
]


@pytest.mark.parametrize("target", TARGETS)
async def test_an_absolute_form_target_is_400_before_authentication(
    cluster: Cluster, target: bytes
) -> None:
    """`GET http://x/health HTTP/1.1` (and other targets that are not a path) is a 400
    with a JSON reason, on a sidecar that requires signatures, and it is not relayed."""
    a = await cluster.add("a", ALICE, coordinator=True)
    answer = await raw_exchange(a, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    # Targets the HTTP parser itself refuses (a bad port) get its plain-text 400.
    assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    assert b"bad_request_target" in answer or answer.startswith(b"HTTP/1.0 400"), answer
    code, _ = await cluster.get(a.url + "/livez", signed=False)
    assert code == 200


@pytest.mark.parametrize("digits", [309, 400, 1000, 4000])
async def test_a_huge_integer_limit_on_a_federated_recall_is_400(
    cluster: Cluster, digits: int
) -> None:
    """A JSON integer too large for a float as `limit` on a recall that fans out is a 400
    naming the field (it was an OverflowError and a 500)."""
    a = await cluster.add("a", [ALICE[0]], coordinator=True)
    b = await cluster.add("b", [BOB], coordinators=(a.url,))
    await wait_routes(cluster, a, {"bob": ("remote", "b")})
    await wait_routes(cluster, b, {"alice": ("remote", "a")})
    raw = b'{"query": "deploy", "agentId": "bob", "limit": ' + b"9" * digits + b"}"
    code, body, _ = await client(cluster, "POST", a.url + "/api/memory/recall", raw=raw)
    assert code == 400, body
    assert "limit" in json.dumps(body)


@settings(max_examples=200)
@given(
    st.one_of(
        st.integers(),
        st.integers(min_value=10**300, max_value=10**4000),
        st.floats(allow_nan=True),
        st.text(max_size=30),
        st.none(),
        st.booleans(),
    )
)
def test_any_limit_is_a_number_in_range_or_a_listed_problem(value: object) -> None:
    """Whatever JSON puts in `limit`, the fan-out reads it as 1..50 (or the default) or
    refuses it with ValidationFailed — never another exception."""
    problems: list[str] = []
    try:
        got = _limit(value, 10)
    except ValidationFailed as exc:
        problems = exc.problems
    if problems:
        assert "limit" in problems[0]
    else:
        assert 1 <= got <= 50


# -- what reaches the log -------------------------------------------------------------------


async def test_refusals_and_malformed_requests_do_not_flood_the_log(tmp_path: Path) -> None:
    """`serve` (the real logging set-up) under 150 refused requests with 8 KB headers, an
    over-long request line and absolute-form targets: no traceback, no line over 2 KB,
    refusals rate-limited, and the sidecar still serving."""
    key = tmp_path / "cluster.key"
    key.write_text("a" * 64 + "\n")
    key.chmod(0o600)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SIGNET_CLUSTER_")},
        "SIGNET_CLUSTER_PORT": str(port),
        "SIGNET_CLUSTER_DAEMON_URL": "http://127.0.0.1:1",
        "SIGNET_CLUSTER_WORKSPACE": str(tmp_path / "workspace"),
        "SIGNET_CLUSTER_STATE_DIR": str(tmp_path / "state"),
        "SIGNET_CLUSTER_COORDINATOR": "true",
        "SIGNET_CLUSTER_SECRET_FILE": str(key),
        "SIGNET_CLUSTER_LOG_FORMAT": "json",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )

    async def send(data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(data)
            await writer.drain()
            return await asyncio.wait_for(reader.read(4096), 10)
        finally:
            writer.close()

    async def live() -> bool:
        if proc.returncode is not None:
            raise AssertionError("serve exited")
        try:
            return (await send(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
                b"HTTP/1.1 200"
            )
        except OSError:
            return False

    try:
        await wait_for(live, timeout=30, what="serve to listen")
        big = b"X-Signet-Cluster-Node: " + b"N" * 8000 + b"\r\n"
        for _ in range(150):
            answer = await send(b"GET /api/cluster/status HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
            assert answer.startswith(b"HTTP/1.1 401"), answer[:100]
        await send(b"GET /" + b"A" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        await send(b"GET http://x/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await live()
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
    assert proc.stderr is not None
    log = (await proc.stderr.read()).decode()
    lines = log.splitlines()
    assert "Traceback" not in log and "AAAAAAAAAA" not in log, log[-2000:]
    assert max(len(line) for line in lines) < 2048, max(lines, key=len)[:300]
    refused = [line for line in lines if '"request_refused"' in line]
    assert 1 <= len(refused) <= 12, len(refused)
    assert len(log) < 64 * 1024, len(log)
