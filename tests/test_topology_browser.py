"""The /cluster page in real headless Chromium against a live three-node cluster: nodes and
agents coloured by policy, and a node going down shown without a reload."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

from PIL import Image

from signet_cluster.clock import ManualClock

from .cdp import Browser, chromium_binary
from .cluster_helpers import Cluster, wait_for

ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]
BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]
OPS = [
    {"name": "carol", "memory": {"read_policy": {"type": "group", "group": "ops"}}},
    {"name": "dave", "memory": {"read_policy": {"type": "group", "group": "ops"}}},
]

CARDS = """Object.fromEntries([...document.querySelectorAll('[data-node-id]')].map(
  n => [n.dataset.nodeId, n.dataset.state]))"""
CHIP_COLOURS = """Object.fromEntries([...document.querySelectorAll('#nodes [data-agent]')].map(
  c => [c.dataset.agent + '@' + c.closest('[data-node-id]').dataset.nodeId,
        [c.dataset.policy, getComputedStyle(c).backgroundColor]]))"""


async def test_page_shows_the_cluster_and_a_node_going_down(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Chromium renders every node with its agents coloured by read policy (one colour per
    policy), the coordinator marked; after a member stops and the coordinator's clock passes
    the TTL, the same page (no reload) shows that node down and the cluster degraded. The
    screenshot is a real picture, not a blank page."""
    clock = ManualClock()
    a = await cluster.add("a", ALICE, coordinator=True, clock=clock)
    await cluster.add("b", BOB, coordinators=(a.url,))
    c = await cluster.add("c", OPS, coordinators=(a.url,))
    await cluster.wait_states(a, {"a": "alive", "b": "alive", "c": "alive"})

    async with Browser(tmp_path / "chromium-profile") as browser:
        await browser.navigate(a.url + "/cluster")

        async def all_alive() -> bool:
            cards = await browser.evaluate(CARDS)
            return bool(cards == {"a": "alive", "b": "alive", "c": "alive"})

        await wait_for(all_alive, what="three alive node cards")
        # A marker that a reload would wipe: the later checks prove the page updated in place.
        await browser.evaluate("window.__sameDocument = true")

        chips = await browser.evaluate(CHIP_COLOURS)
        assert set(chips) == {
            "alice@a",
            "default@a",
            "bob@b",
            "default@b",
            "carol@c",
            "dave@c",
            "default@c",
        }
        by_policy: dict[str, set[str]] = {}
        for policy, colour in chips.values():
            by_policy.setdefault(policy, set()).add(colour)
        assert set(by_policy) == {"isolated", "shared", "group", "default"}
        assert all(len(colours) == 1 for colours in by_policy.values()), by_policy
        assert len({next(iter(c)) for c in by_policy.values()}) == 4, "policies share a colour"
        coordinator = await browser.evaluate(
            "document.querySelector('[data-node-id=\"a\"] .badge.coordinator') !== null"
        )
        assert coordinator is True
        daemon_b = await browser.evaluate(
            'document.querySelector(\'[data-node-id="b"] [data-field="daemon"]\').textContent'
        )
        assert daemon_b.startswith("ts 0.145.7 · healthy")
        assert await browser.evaluate("document.getElementById('overall').dataset.state") == (
            "healthy"
        )
        groups = await browser.evaluate("document.getElementById('groups').textContent")
        assert "ops: carol@c, dave@c" in groups

        await cluster.stop_sidecar(c)
        assert a.settings is not None
        clock.advance(a.settings.ttl + 0.5)

        async def c_down() -> bool:
            cards = await browser.evaluate(CARDS)
            return bool(cards.get("c") == "down" and cards.get("a") == "alive")

        await wait_for(c_down, what="node c shown down on the open page")
        assert await browser.evaluate("window.__sameDocument === true") is True
        assert await browser.evaluate("document.getElementById('overall').dataset.state") == (
            "degraded"
        )
        problems = await browser.evaluate("document.getElementById('problems').textContent")
        assert "node c is down" in problems
        # c's agents are marked: nothing routes to them while c is down.
        unroutable = await browser.evaluate(
            "[...document.querySelectorAll('[data-routable=\"no\"]')].map(c => c.dataset.agent)"
        )
        assert sorted(unroutable) == ["carol", "dave"]
        events = await browser.evaluate("document.getElementById('events').textContent")
        assert "c went down" in events
        badges = await browser.evaluate(
            "document.querySelector('[data-node-id=\"b\"] .badge.membership').textContent"
        )
        assert badges == "discovered"

        shot = await browser.screenshot(tmp_path / "cluster.png")

    image = Image.open(io.BytesIO(shot))
    assert image.format == "PNG" and image.size[0] >= 800 and image.size[1] >= 600
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) >= 16, "the screenshot is (nearly) blank"
    # The policy colours themselves are on the picture (chips are solid fills).
    present = {rgb for _count, rgb in colours}
    assert {(192, 57, 43), (39, 174, 96), (47, 111, 214)} <= present


async def test_a_plain_headless_screenshot_shows_the_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A plain `chromium --headless --screenshot` (no waiting for scripts) shows the nodes
    and their policy colours: the first paint comes from the sidecar, not the script (the
    page's HTML alone carries the cards: tests/test_topology.py)."""
    a = await cluster.add("a", ALICE, coordinator=True)
    await cluster.add("b", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"a": "alive", "b": "alive"})
    shot = tmp_path / "plain.png"
    process = await asyncio.create_subprocess_exec(
        chromium_binary(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
        f"--screenshot={shot}",
        a.url + "/cluster",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(process.wait(), 60) == 0
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) >= 16, "the screenshot is (nearly) blank"
    present = {rgb for _count, rgb in colours}
    # isolated (alice) and shared (bob) chips, painted without any script.
    assert {(192, 57, 43), (39, 174, 96)} <= present
