"""The network-namespace lab itself: a cluster across three namespaces forms, a node cut
off the network goes down, and comes back when healed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from signet_cluster.security.keyring import load_secret_file
from signet_cluster.security.signing import Signer

from .cluster_helpers import wait_for
from .netns_lab import NetnsLab, netns_unavailable

pytestmark = pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))

ROSTERS = [
    [{"name": "alice", "memory": {"read_policy": "shared"}}],
    [{"name": "bob", "memory": {"read_policy": "shared"}}],
    [{"name": "carol", "memory": {"read_policy": {"type": "group", "group": "ops"}}}],
]


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[NetnsLab]:
    built = NetnsLab(tmp_path)
    try:
        await built.setup(ROSTERS)
        await built.start()
        yield built
    finally:
        await built.teardown()


async def signed_get(lab: NetnsLab, url: str) -> tuple[int, Any]:
    keyring = load_secret_file(lab.secret_file)
    signer = Signer(lambda: keyring, "cli", wall=time.time)
    target = aiohttp.client.URL(url)
    host = target.host_port_subcomponent or ""
    headers = {"Host": host, **signer.headers("GET", host, target.raw_path_qs, b"")}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(target, headers=headers) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def states(lab: NetnsLab) -> dict[str, str]:
    code, body = await signed_get(lab, lab.nodes[0].url + "/api/cluster/status")
    assert code == 200, body
    return {n["node_id"]: n["state"] for n in body["nodes"]}


async def test_cluster_forms_across_namespaces_and_survives_a_cut(lab: NetnsLab) -> None:
    """Sidecars on three namespaced hosts form one cluster over the bridge; cutting n3's
    link takes it down in the registry; healing brings it back within a TTL."""

    async def all_alive() -> bool:
        return await states(lab) == {"n1": "alive", "n2": "alive", "n3": "alive"}

    await wait_for(all_alive, timeout=20, what="cluster across namespaces")
    lab.cut(lab.nodes[2])

    async def n3_down() -> bool:
        return (await states(lab)).get("n3") == "down"

    await wait_for(n3_down, timeout=10, what="n3 down after the cut")
    lab.heal(lab.nodes[2])
    await wait_for(all_alive, timeout=10, what="n3 back after healing")
