"""Read policies of the dev daemon (contract §2): who sees which memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .devdaemon_helpers import Client, ClientFactory, call, start_daemon

ROSTER: list[dict[str, Any]] = [
    {"name": "iso", "memory": {"read_policy": "isolated"}},
    {"name": "sha", "memory": {"read_policy": "shared"}},
    {"name": "g1", "memory": {"read_policy": {"type": "group", "group": "ops"}}},
    {"name": "g2", "read_policy": "group", "policy_group": "ops"},
    {"name": "other", "memory": {"read_policy": {"type": "group", "group": "dev"}}},
    {"name": "nogroup", "memory": {"read_policy": "group"}},
]


async def _write(client: Client, agent: str, text: str, **extra: Any) -> str:
    status, body = await call(
        client, "POST", "/api/memory/remember", {"content": text, "agentId": agent, **extra}
    )
    assert status == 200, body
    return str(body["id"])


async def _seen(client: Client, agent: str | None, query: str = "topic") -> set[str]:
    body: dict[str, Any] = {"query": query, "limit": 50}
    if agent is not None:
        body["agentId"] = agent
    status, result = await call(client, "POST", "/api/memory/recall", body)
    assert status == 200, result
    return {item["id"] for item in result["results"]}


@pytest.fixture
async def seeded(aiohttp_client: ClientFactory, tmp_path: Path) -> tuple[Client, dict[str, str]]:
    client = await start_daemon(aiohttp_client, tmp_path, "ts", ROSTER)
    ids = {}
    for agent in ("iso", "sha", "g1", "g2", "other", "default"):
        ids[f"{agent}:global"] = await _write(client, agent, f"{agent} global topic note")
        ids[f"{agent}:private"] = await _write(
            client, agent, f"{agent} private topic note", visibility="private"
        )
    return client, ids


def _pick(ids: dict[str, str], *keys: str) -> set[str]:
    return {ids[key] for key in keys}


async def test_isolated_reads_only_its_own(seeded: tuple[Client, dict[str, str]]) -> None:
    """An isolated agent sees its own global and private memories and nothing else."""
    client, ids = seeded
    assert await _seen(client, "iso") == _pick(ids, "iso:global", "iso:private")


async def test_shared_reads_every_global_plus_own_private(
    seeded: tuple[Client, dict[str, str]],
) -> None:
    """A shared agent sees every agent's global memories (even an isolated agent's) and
    its own private ones, never another agent's private ones."""
    client, ids = seeded
    globals_ = {value for key, value in ids.items() if key.endswith(":global")}
    assert await _seen(client, "sha") == globals_ | {ids["sha:private"]}


async def test_group_reads_globals_of_its_group(seeded: tuple[Client, dict[str, str]]) -> None:
    """Group members see the globals of the group's members plus all of their own; the
    flat ``read_policy: group`` + ``policy_group`` roster form works too."""
    client, ids = seeded
    group = _pick(ids, "g1:global", "g2:global")
    assert await _seen(client, "g1") == group | {ids["g1:private"]}
    assert await _seen(client, "g2") == group | {ids["g2:private"]}
    assert await _seen(client, "other") == _pick(ids, "other:global", "other:private")


async def test_group_without_group_and_unknown_agent_are_isolated(
    seeded: tuple[Client, dict[str, str]],
) -> None:
    """``group`` without a group name reads as isolated; an agent with no row sees nothing."""
    client, _ids = seeded
    own = await _write(client, "nogroup", "nogroup global topic note")
    assert await _seen(client, "nogroup") == {own}
    assert await _seen(client, "stranger") == set()
    _, agents = await call(client, "GET", "/api/agents")
    assert "stranger" not in {a["id"] for a in agents["agents"]}  # recall never registers
    assert {a["id"]: a["read_policy"] for a in agents["agents"]}["nogroup"] == "isolated"


async def test_no_agent_reads_as_default_shared(seeded: tuple[Client, dict[str, str]]) -> None:
    """A recall without agentId reads as `default`, which is shared."""
    client, ids = seeded
    globals_ = {value for key, value in ids.items() if key.endswith(":global")}
    assert await _seen(client, None) == globals_ | {ids["default:private"]}


async def test_get_by_id_applies_the_same_policy(seeded: tuple[Client, dict[str, str]]) -> None:
    """``GET /api/memory/:id`` answers 404 for memories the reader may not see."""
    client, ids = seeded
    private = ids["iso:private"]
    assert (await call(client, "GET", f"/api/memory/{private}?agentId=iso"))[0] == 200
    assert (await call(client, "GET", f"/api/memory/{private}?agentId=sha"))[0] == 404
    headers = {"x-signet-agent-id": "g1"}
    status, _ = await call(client, "GET", f"/api/memory/{ids['iso:global']}", headers=headers)
    assert status == 404
    status, body = await call(client, "GET", f"/api/memory/{ids['iso:global']}?agent_id=sha")
    assert status == 200
    assert "agent_id" not in body and "visibility" not in body  # never exposed


async def test_delete_agent_archives_its_memories(seeded: tuple[Client, dict[str, str]]) -> None:
    """Deleting an agent archives its memories (hidden from every reader) and drops its row;
    `default` cannot be deleted; purge removes the memories."""
    client, ids = seeded
    status, body = await call(client, "DELETE", "/api/agents/g2")
    assert (status, body) == (200, {"success": True, "purged": False})
    assert ids["g2:global"] not in await _seen(client, "sha")
    assert ids["g2:global"] not in await _seen(client, "g1")
    assert (await call(client, "GET", "/api/agents/g2"))[0] == 404
    status, body = await call(client, "DELETE", "/api/agents/default")
    assert (status, body) == (400, {"error": "Cannot remove the default agent"})
    assert (await call(client, "DELETE", "/api/agents/ghost"))[0] == 404
    status, body = await call(client, "DELETE", "/api/agents/other?purge=true")
    assert body == {"success": True, "purged": True}
    assert (await call(client, "GET", f"/api/memory/{ids['other:global']}?agentId=sha"))[0] == 404


async def test_ts_stores_any_other_visibility_as_global(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """TS stores any visibility but "private" as global: "archived" cannot be written."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts", ROSTER)
    mem = await _write(client, "iso", "archived topic try", visibility="archived")
    assert await _seen(client, "sha") == {mem}


async def test_created_agents_default_to_isolated(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """``POST /api/agents`` creates an isolated agent (201); remember auto-registers
    unknown agents as shared; a duplicate create is Hono's plain-text 500."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts", [])
    status, row = await call(client, "POST", "/api/agents", {"name": "writer"})
    assert status == 201
    assert row["read_policy"] == "isolated" and row["id"] == "writer"
    assert (await call(client, "POST", "/api/agents", {"name": "writer"})) == (
        500,
        "Internal Server Error",
    )
    await _write(client, "newbie", "hello topic")
    status, agent = await call(client, "GET", "/api/agents/newbie")
    assert status == 200 and agent["read_policy"] == "shared"
    assert sorted(agent) == [
        "created_at",
        "id",
        "name",
        "policy_group",
        "read_policy",
        "updated_at",
    ]
