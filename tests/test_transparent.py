"""Transparent mode: the daemon moves to another port (SIGNET_PORT) and the sidecar takes
the daemon's address, so every client on the host is cluster-aware without a change. The
ordinary calls of a harness, made against the sidecar, answer exactly as the daemon does."""

from __future__ import annotations

from typing import Any

import pytest

from .cluster_helpers import Cluster
from .devdaemon_helpers import shape_diff
from .routing_helpers import client

# What the harnesses and Signet's own CLI send, in order: health check first.
SESSION = "agent:default:harness-1"


def _calls(mem_id: str) -> list[tuple[str, str, Any, dict[str, str]]]:
    return [
        ("GET", "/health", None, {}),
        ("GET", "/api/status", None, {}),
        (
            "POST",
            "/api/hooks/session-start",
            {"harness": "claude-code", "sessionKey": SESSION, "runtimePath": "plugin"},
            {},
        ),
        ("POST", "/api/memory/recall", {"query": "vim keybindings", "limit": 5}, {}),
        ("GET", "/memory/search?q=vim", None, {}),
        ("GET", f"/api/memory/{mem_id}", None, {}),
        (
            "POST",
            "/api/memory/modify",
            {"patches": [{"id": mem_id, "importance": 0.6, "reason": "tune"}]},
            {},
        ),
        ("POST", "/api/memory/forget", {"mode": "preview", "ids": [mem_id]}, {}),
        ("GET", "/api/agents", None, {}),
        ("GET", "/api/features", None, {}),
    ]


# Values that legitimately differ between two daemons (times, ids, ports, pids), and the
# sidecar's additive `cluster` blocks (the agent roster's, README "Agents across the cluster").
# Values that legitimately differ between two daemons (times, ids, ports, pids).
# A remember without a key gets the sidecar's idempotency key, so a stored row has one
# (exactly once after a timeout: sidecar/pipeline/serve.py `keyed`).
ALLOW = (
    "uptime",
    "pid",
    "port",
    "startedAt",
    "agentsDir",
    "meta.timings",
    "cluster",
    "agents[].cluster",
    "idempotencyKey",
    "idempotency_key",
)


async def _run(cluster: Cluster, base: str) -> list[tuple[int, Any]]:
    code, saved, _ = await client(
        cluster,
        "POST",
        base + "/api/memory/remember",
        {"content": "User prefers vim keybindings", "sessionKey": SESSION},
    )
    assert code == 200, saved
    answers = []
    for method, path, body, headers in _calls(saved["id"]):
        status, answer, _ = await client(cluster, method, base + path, body, headers=headers)
        answers.append((status, answer))
    return answers


@pytest.mark.parametrize("flavor", ["ts", "rust"])
async def test_ordinary_client_calls_work_unchanged_against_the_sidecar(
    cluster: Cluster, flavor: str
) -> None:
    """A sidecar listening where clients expect the daemon (here any free port; 3850 in
    production) with its daemon on another port answers a harness's whole call sequence
    with the statuses and response shapes the daemon itself gives; where a Rust daemon
    rejects the TS body outright (flat modify patches: 422), the sidecar's adaptation makes
    the call succeed instead."""
    behind = await cluster.add("behind", [], coordinator=True, flavor=flavor)
    plain = await cluster.add("plain", [], flavor=flavor)
    through_sidecar = await _run(cluster, behind.url)
    direct = await _run(cluster, plain.daemon_url)
    for path_info, (got_status, got), (want_status, want) in zip(
        _calls("x"), through_sidecar, direct, strict=True
    ):
        if flavor == "rust" and path_info[1] == "/api/memory/modify":
            assert (want_status, got_status) == (422, 200), got
            continue
        assert got_status == want_status, (path_info[1], got)
        assert shape_diff(want, got, ALLOW) == [], path_info[1]
    health = through_sidecar[0][1]
    assert health["status"] == "healthy"
    assert health["port"] == int(behind.daemon_url.rsplit(":", 1)[1])  # the daemon's own port
