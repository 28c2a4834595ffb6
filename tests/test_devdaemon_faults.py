"""The dev daemon's test hooks: injected latency and failures, and the request log."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from .devdaemon_helpers import ClientFactory, call, start_daemon


async def test_latency_is_added_except_on_health(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """latency_ms delays every request but /health; it can be changed at run time."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts", latency_ms=150)
    started = time.monotonic()
    assert (await call(client, "GET", "/api/status"))[0] == 200
    assert time.monotonic() - started >= 0.15
    # /health stays prompt even under a huge delay (it would time out otherwise).
    await call(client, "POST", "/__devdaemon/faults", {"latency_ms": 60_000})
    status, _ = await asyncio.wait_for(call(client, "GET", "/health"), timeout=5)
    assert status == 200
    status, faults = await call(client, "POST", "/__devdaemon/faults", {"latency_ms": 0})
    assert (status, faults) == (200, {"latency_ms": 0.0, "fail": "none", "recall_cost": None})
    assert await call(client, "GET", "/__devdaemon/faults") == (200, faults)


async def test_fail_error_breaks_memory_routes_only(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """fail=error answers 500 JSON on memory routes while /health and /api/status work."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts", fail="error")
    status, body = await call(client, "POST", "/api/memory/recall", {"query": "x"})
    assert (status, body) == (500, {"error": "Recall failed", "results": []})
    status, body = await call(client, "POST", "/api/memory/remember", {"content": "x"})
    assert status == 500 and "error" in body
    assert (await call(client, "GET", "/health"))[0] == 200
    assert (await call(client, "GET", "/api/status"))[0] == 200
    await call(client, "POST", "/__devdaemon/faults", {"fail": "none"})
    assert (await call(client, "POST", "/api/memory/recall", {"query": "x"}))[0] == 200


async def test_fail_hang_holds_requests_until_released(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """fail=hang never answers memory routes; switching the mode back releases them."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts")
    await call(client, "POST", "/__devdaemon/faults", {"fail": "hang"})
    hung = asyncio.create_task(call(client, "POST", "/api/memory/recall", {"query": "x"}))
    done, _ = await asyncio.wait({hung}, timeout=0.2)
    assert not done
    assert (await call(client, "GET", "/health"))[0] == 200
    await call(client, "POST", "/__devdaemon/faults", {"fail": "none"})
    status, _ = await asyncio.wait_for(hung, timeout=5)
    assert status == 200


async def test_bad_fault_settings_are_refused(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Invalid fault settings answer 400 and change nothing."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts")
    bad: list[dict[str, object]] = [
        {"fail": "explode"},
        {"latency_ms": -1},
        {"latency_ms": "fast"},
        {"recall_cost": "cheap"},
        {"recall_cost": {"cpu_ms_per_call": -1}},
        {"recall_cost": {"cpu_ms_per_row": "x"}},
        {"recall_cost": {"bogus": 1}},
        {"latency_ms": 5, "recall_cost": "cheap"},  # one bad field: nothing applied
    ]
    for body in bad:
        assert (await call(client, "POST", "/__devdaemon/faults", body))[0] == 400
    assert await call(client, "GET", "/__devdaemon/faults") == (
        200,
        {"latency_ms": 0.0, "fail": "none", "recall_cost": None},
    )


async def test_the_recall_cost_knob_answers_like_0_145_7(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """recall_cost=real: the recall lists 0.145.7's 15 timing stages (its response size) and
    the faults show the measured figures; off again gives the dev daemon's own answer."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts")
    await call(client, "POST", "/api/memory/remember", {"content": "the zebra runbook"})
    status, faults = await call(client, "POST", "/__devdaemon/faults", {"recall_cost": "real"})
    assert status == 200 and faults["recall_cost"]["cpu_ms_per_call"] > 0
    status, body = await call(client, "POST", "/api/memory/recall", {"query": "zebra"})
    assert status == 200 and len(body["results"]) == 1
    stages = body["meta"]["timings"]["stages"]
    assert [s["name"] for s in stages][:2] == ["memory_fts", "query_embedding_total"]
    assert len(stages) == 15
    await call(client, "POST", "/__devdaemon/faults", {"recall_cost": "off"})
    status, body = await call(client, "POST", "/api/memory/recall", {"query": "zebra"})
    assert len(body["meta"]["timings"]["stages"]) == 1


async def test_request_log_records_what_the_daemon_received(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """The request log keeps method, path, query, the forwarded headers and the JSON body
    of the last 200 requests (not its own routes), and can be cleared."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts")
    headers = {
        "x-signet-agent-id": "bob",
        "Authorization": "Bearer t0k",
        "X-Unrelated": "dropped",
    }
    await call(client, "POST", "/api/memory/recall?trace=1", {"query": "x"}, headers=headers)
    async with client.post(
        "/api/memory/recall", data="{broken", headers={"Content-Type": "application/json"}
    ):
        pass
    _, log = await call(client, "GET", "/__devdaemon/requests")
    first, second = log["requests"]
    assert first == {
        "method": "POST",
        "path": "/api/memory/recall",
        "query": {"trace": "1"},
        "headers": {
            "x-signet-agent-id": "bob",
            "authorization": "Bearer t0k",
            "content-type": "application/json",
        },
        "body": {"query": "x"},
    }
    assert second["body"] is None
    assert (await call(client, "DELETE", "/__devdaemon/requests"))[0] == 200
    for _ in range(205):
        await call(client, "GET", "/health")
    _, log = await call(client, "GET", "/__devdaemon/requests")
    assert len(log["requests"]) == 200


@pytest.mark.parametrize("flavor", ["ts", "ts-legacy", "rust"])
async def test_unknown_routes_are_plain_text_404(
    aiohttp_client: ClientFactory, tmp_path: Path, flavor: str
) -> None:
    """Every flavor answers unknown routes with a plain-text ``404 Not Found``."""
    client = await start_daemon(aiohttp_client, tmp_path, flavor)
    assert await call(client, "GET", "/api/does-not-exist") == (404, "404 Not Found")
