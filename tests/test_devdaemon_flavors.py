"""What differs between the ts, ts-legacy and rust flavors of the dev daemon (contract §5)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from pathlib import Path
from typing import Any

from .devdaemon_helpers import GOLDEN_ROSTER, Client, ClientFactory, call, start_daemon

SESSION = "agent:alice:run-1"


async def _start_session(client: Client, key: str, path: str = "plugin") -> tuple[int, Any]:
    body = {"harness": "claude-code", "sessionKey": key, "runtimePath": path}
    return await call(client, "POST", "/api/hooks/session-start", body)


async def test_version_route_only_on_rust(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    """Rust answers /api/version with runtime "rust"; TS answers Hono's plain-text 404."""
    rust = await start_daemon(aiohttp_client, tmp_path / "r", "rust")
    ts = await start_daemon(aiohttp_client, tmp_path / "t", "ts")
    status, body = await call(rust, "GET", "/api/version")
    assert status == 200
    assert body["runtime"] == "rust" and body["version"] == "0.145.7"
    assert await call(ts, "GET", "/api/version") == (404, "404 Not Found")
    _, status_body = await call(rust, "GET", "/api/status")
    assert {"db", "agent"} <= set(status_body)
    assert status_body["db"]["memories"] == 0


async def test_rust_never_syncs_the_roster(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    """Rust ignores agents.roster[] and stamps rows with to_rfc3339 (``+00:00``)."""
    client = await start_daemon(aiohttp_client, tmp_path, "rust", GOLDEN_ROSTER)
    status, body = await call(client, "GET", "/api/agents")
    assert status == 200
    assert [a["id"] for a in body["agents"]] == ["default"]
    assert body["agents"][0]["created_at"].endswith("+00:00")
    status, row = await call(client, "POST", "/api/agents", {"name": "Bad_Name"})
    assert (status, row) == (400, {"error": "Name must be lowercase alphanumeric + hyphens only"})
    status, row = await call(client, "POST", "/api/agents", {"name": "default"})
    assert status == 400
    status, row = await call(client, "POST", "/api/agents", {"name": "writer"})
    assert status == 201 and row["read_policy"] == "isolated"
    status, row = await call(client, "POST", "/api/agents", {"name": "writer"})
    assert status == 500 and "UNIQUE" in row["error"]


async def test_rust_non_default_writes_need_an_active_session(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Rust refuses non-default, private or scoped writes without an active
    ``agent:<id>:`` session key, with the daemon's messages; session-start activates it."""
    client = await start_daemon(aiohttp_client, tmp_path, "rust")
    remember = "/api/memory/remember"
    cases = [
        (
            {"content": "x1", "agentId": "alice"},
            "non-default agent_id requires session_key with agent scope",
        ),
        (
            {"content": "x2", "visibility": "private"},
            "non-default visibility/scope requires session_key with agent scope",
        ),
        (
            {"content": "x3", "scope": "bench"},
            "non-default visibility/scope requires session_key with agent scope",
        ),
        (
            {"content": "x4", "agentId": "alice", "sessionKey": "plain-key"},
            "session_key must be agent scoped",
        ),
        ({"content": "x5", "agentId": "alice", "sessionKey": SESSION}, "session_key is not active"),
        (
            {"content": "x6", "agentId": "bob", "sessionKey": SESSION},
            "agent_id does not match session scope",
        ),
    ]
    for body, message in cases:
        assert await call(client, "POST", remember, body) == (403, {"error": message}), body
    assert (await call(client, "POST", remember, {"content": "plain default write"}))[0] == 200
    status, _ = await _start_session(client, SESSION)
    assert status == 200
    status, body = await call(
        client, "POST", remember, {"content": "alice via session", "sessionKey": SESSION}
    )
    assert status == 200
    assert body["status"] == "created" and body["duplicateOf"] is None
    assert body["importance"] == 0.5 and body["type"] == "fact"
    status, body = await call(
        client, "POST", remember, {"content": "alice via session", "sessionKey": SESSION}
    )
    assert body["status"] == "duplicate" and body["deduped"] is True
    assert body["duplicateOf"] == body["id"]
    # The session is claimed by the plugin path; the legacy path is refused.
    status, body = await _start_session(client, SESSION, "legacy")
    assert (status, body) == (409, {"error": "session claimed by plugin path"})


async def test_rust_archived_write_is_hidden_from_everyone(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Rust accepts visibility "archived"; archived memories are hidden even from the owner."""
    client = await start_daemon(aiohttp_client, tmp_path, "rust")
    await _start_session(client, SESSION)
    body = {"content": "archived alice memo", "sessionKey": SESSION, "visibility": "archived"}
    status, _ = await call(client, "POST", "/api/memory/remember", body)
    assert status == 200
    status, result = await call(
        client, "POST", "/api/memory/recall", {"query": "memo", "agentId": "alice"}
    )
    assert status == 200 and result["results"] == []
    status, result = await call(
        client, "POST", "/api/memory/remember", {"content": "x", "visibility": "bogus"}
    )
    assert (status, result) == (
        400,
        {"error": "visibility must be one of: global, private, archived"},
    )


async def test_rust_plain_text_rejections(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    """axum's Json extractor: 415 without the JSON content-type, 400 on bad JSON, 422 when
    a required field is missing; all plain text. TS answers JSON errors instead."""
    rust = await start_daemon(aiohttp_client, tmp_path / "r", "rust")
    ts = await start_daemon(aiohttp_client, tmp_path / "t", "ts")
    recall = "/api/memory/recall"
    async with rust.post(recall, data='{"query": "x"}') as resp:
        assert resp.status == 415
        assert resp.content_type == "text/plain"
        assert await resp.text() == "Expected request with `Content-Type: application/json`"
    headers = {"Content-Type": "application/json"}
    async with rust.post(recall, data="{not json", headers=headers) as resp:
        assert resp.status == 400
        assert (await resp.text()).startswith("Failed to parse the request body as JSON")
    status, text = await call(rust, "POST", recall, {"agentId": "alice"})
    assert status == 422
    assert re.match(
        r"Failed to deserialize the JSON body into the target type: missing field "
        r"`query` at line 1 column \d+",
        text,
    )
    status, text = await call(rust, "POST", recall, {"query": "x", "limit": "ten"})
    assert status == 422 and "limit: invalid type" in text
    assert await call(ts, "POST", recall, {"agentId": "alice"}) == (
        400,
        {"error": "query is required"},
    )
    async with ts.post(recall, data="{not json", headers=headers) as resp:
        assert resp.status == 400
        assert await resp.json() == {"error": "Invalid JSON body"}


async def _rust_with_alices_memory(
    aiohttp_client: ClientFactory, tmp_path: Path, **extra: Any
) -> tuple[Client, dict[str, Any]]:
    """A Rust daemon with an active session for alice and one memory she wrote in it."""
    client = await start_daemon(aiohttp_client, tmp_path, "rust")
    await _start_session(client, SESSION)
    body = {"content": "alice owns this", "sessionKey": SESSION, **extra}
    status, mine = await call(client, "POST", "/api/memory/remember", body)
    assert status == 200, mine
    return client, mine


async def test_rust_modify_is_nested_and_owner_scoped(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Rust modify takes ``patch: {...}`` (a flat TS patch is a 422) and only touches the
    resolved agent's memories; forget is owner-scoped the same way."""
    client, mine = await _rust_with_alices_memory(aiohttp_client, tmp_path)
    _, other = await call(client, "POST", "/api/memory/remember", {"content": "default owns this"})
    flat = {"patches": [{"id": mine["id"], "importance": 0.9}], "reason": "r"}
    status, text = await call(client, "POST", "/api/memory/modify", flat)
    assert status == 422 and "missing field `patch`" in text
    nested = {
        "patches": [
            {"id": mine["id"], "patch": {"importance": 0.9}},
            {"id": other["id"], "patch": {"importance": 0.9}},
        ],
        "agentId": "alice",
    }
    status, body = await call(client, "POST", "/api/memory/modify", nested)
    assert status == 200
    assert [r["status"] for r in body["results"]] == ["updated", "not_found"]
    conflict = {
        "patches": [{"id": mine["id"], "patch": {"pinned": True}, "if_version": 1}],
        "agentId": "alice",
    }
    _, body = await call(client, "POST", "/api/memory/modify", conflict)
    assert body["results"][0]["status"] == "version_mismatch"
    forget = {
        "ids": [mine["id"], other["id"]],
        "mode": "execute",
        "reason": "r",
        "agentId": "alice",
    }
    _, body = await call(client, "POST", "/api/memory/forget", forget)
    assert [r["status"] for r in body["results"]] == ["deleted", "not_found"]


async def test_rust_patch_and_delete_by_id_are_owner_scoped(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Rust's PATCH and DELETE /api/memory/:id only touch memories of the agent they act as
    (PATCH: the `x-signet-agent-id` header; DELETE: also `agent_id`/`agentId` in the body or
    query), `default` when none is named: another agent's memory is a 404 `not_found`. By id,
    Rust names a stale version `version_conflict` and an unforced pinned delete
    `pinned_requires_force` (the batch routes say `version_mismatch` and `pinned`)."""
    client, mine = await _rust_with_alices_memory(aiohttp_client, tmp_path, pinned=True)
    path = f"/api/memory/{mine['id']}"
    as_alice = {"x-signet-agent-id": "alice"}
    status, body = await call(client, "PATCH", path, {"importance": 0.2, "reason": "r"})
    assert (status, body["status"]) == (404, "not_found")
    status, body = await call(client, "DELETE", f"{path}?reason=r&force=true")
    assert (status, body["status"]) == (404, "not_found")
    stale = {"importance": 0.2, "reason": "r", "if_version": 7}
    status, body = await call(client, "PATCH", path, stale, headers=as_alice)
    assert (status, body["status"]) == (409, "version_conflict")
    status, body = await call(
        client, "PATCH", path, {"importance": 0.2, "reason": "r"}, headers=as_alice
    )
    assert (status, body["status"]) == (200, "updated")
    status, body = await call(client, "DELETE", f"{path}?reason=r&agentId=alice")
    assert (status, body["status"]) == (409, "pinned_requires_force")
    status, body = await call(
        client, "DELETE", path, {"reason": "r", "force": True, "agent_id": "alice"}
    )
    assert (status, body["status"]) == (200, "deleted")


async def test_ts_modify_and_forget_are_unscoped(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """TS modify/forget touch any id whatever agent asks (the sidecar must check)."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts", GOLDEN_ROSTER)
    _, mine = await call(
        client,
        "POST",
        "/api/memory/remember",
        {"content": "alice secret", "agentId": "alice", "visibility": "private"},
    )
    patch = {"patches": [{"id": mine["id"], "importance": 0.1}], "reason": "x", "agentId": "bob"}
    _, body = await call(client, "POST", "/api/memory/modify", patch)
    assert body["results"][0]["status"] == "updated"
    forget = {"ids": [mine["id"]], "mode": "execute", "reason": "x", "agentId": "bob"}
    _, body = await call(client, "POST", "/api/memory/forget", forget)
    assert body["deleted"] == 1


async def test_ts_legacy_has_no_agents(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    """0.58.1: no /api/agents, agentId and visibility ignored, one global `default` pool;
    dedupe ignores the writer; responses carry no visibility/scope/meta."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts-legacy", GOLDEN_ROSTER)
    assert await call(client, "GET", "/api/agents") == (404, "404 Not Found")
    _, health = await call(client, "GET", "/health")
    assert health["version"] == "0.58.1" and "shuttingDown" not in health
    _, first = await call(
        client,
        "POST",
        "/api/memory/remember",
        {"content": "Private to carol", "agentId": "carol", "visibility": "private"},
    )
    assert set(first) == {"id", "type", "tags", "pinned", "importance", "content", "embedded"}
    _, again = await call(
        client, "POST", "/api/memory/remember", {"content": "private to carol.", "agentId": "bob"}
    )
    assert again["id"] == first["id"] and again["deduped"] is True
    for reader in ("alice", "nobody", None):
        body: dict[str, Any] = {"query": "carol"} | ({"agentId": reader} if reader else {})
        _, result = await call(client, "POST", "/api/memory/recall", body)
        assert [r["id"] for r in result["results"]] == [first["id"]]
        assert "meta" not in result and "visibility" not in result["results"][0]
    _, row = await call(client, "GET", f"/api/memory/{first['id']}?agentId=alice")
    assert "idempotency_key" not in row and "sourcePath" not in row


async def test_memory_search_differs_by_flavor(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """TS: /api/memory/search falls into the by-id route (404) and /memory/search returns
    raw FTS rows blind to agents; Rust: both are recall aliases as `default`."""
    ts = await start_daemon(aiohttp_client, tmp_path / "t", "ts", GOLDEN_ROSTER)
    rust = await start_daemon(aiohttp_client, tmp_path / "r", "rust")
    await call(
        ts,
        "POST",
        "/api/memory/remember",
        {"content": "alice hidden zebra", "agentId": "alice", "visibility": "private"},
    )
    assert await call(ts, "GET", "/api/memory/search?q=zebra") == (404, {"error": "not found"})
    _, raw = await call(ts, "GET", "/memory/search?q=zebra")
    assert len(raw["results"]) == 1 and raw["results"][0]["score"] < 0  # bm25, private too
    await call(rust, "POST", "/api/memory/remember", {"content": "rust zebra"})
    for path in ("/api/memory/search?q=zebra", "/memory/search?q=zebra"):
        status, body = await call(rust, "GET", path)
        assert status == 200 and body["method"] == "keyword" and len(body["results"]) == 1
    assert (await call(rust, "GET", "/api/memory/search"))[0] == 400


async def test_knowledge_expand_agent_handling(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Rust reads agentId on knowledge expand; TS always expands as `default`."""
    structured = {
        "entities": [
            {
                "source": "Cache layer",
                "sourceType": "system",
                "relationship": "uses",
                "target": "Redis",
                "targetType": "tool",
            }
        ]
    }
    rust = await start_daemon(aiohttp_client, tmp_path / "r", "rust")
    await _start_session(rust, SESSION)
    _, written = await call(
        rust,
        "POST",
        "/api/memory/remember",
        {"content": "The cache layer uses Redis", "sessionKey": SESSION, "structured": structured},
    )
    assert written["entities_linked"] == 2 and written["structured"] is True
    status, body = await call(
        rust, "POST", "/api/knowledge/expand", {"entity": "cache layer", "agentId": "alice"}
    )
    assert status == 200 and body["entity"]["name"] == "Cache layer"
    assert body["memories"] == [{"id": written["id"], "content": "The cache layer uses Redis"}]
    assert (await call(rust, "POST", "/api/knowledge/expand", {"entity": "Cache layer"}))[0] == 404


def _columns(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {row[1] for row in conn.execute("PRAGMA table_info(memories)")}


async def test_legacy_database_upgrades_in_place(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A ts-legacy database has no agent columns; opening it with the ts flavor runs
    migration 043 like an upgraded daemon: old rows become `default`, `global`."""
    legacy = await start_daemon(aiohttp_client, tmp_path, "ts-legacy")
    _, old = await call(legacy, "POST", "/api/memory/remember", {"content": "pre-upgrade note"})
    await legacy.close()
    db = tmp_path / "memory" / "memories.db"
    assert not {"agent_id", "visibility", "idempotency_key"} & _columns(db)
    ts = await start_daemon(aiohttp_client, tmp_path, "ts", GOLDEN_ROSTER)
    assert {"agent_id", "visibility", "idempotency_key"} <= _columns(db)
    _, hits = await call(ts, "POST", "/api/memory/recall", {"query": "note", "agentId": "bob"})
    assert [(h["id"], h["visibility"]) for h in hits["results"]] == [(old["id"], "global")]
    _, agents = await call(ts, "GET", "/api/agents")
    assert len(agents["agents"]) == 5
