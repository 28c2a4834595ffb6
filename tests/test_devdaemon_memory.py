"""Memory behaviour of the dev daemon: dedupe, idempotency, chunking, recall knobs,
modify/forget rules and the by-id mutations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .devdaemon_helpers import GOLDEN_ROSTER, Client, ClientFactory, call, start_daemon

REMEMBER = "/api/memory/remember"


async def _ts(aiohttp_client: ClientFactory, tmp_path: Path) -> Client:
    return await start_daemon(aiohttp_client, tmp_path, "ts", GOLDEN_ROSTER)


async def test_content_hash_dedupe_uses_the_daemon_normalisation(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Case, whitespace, CRLF and trailing punctuation do not make a new memory; the dedupe
    tuple (agent, visibility, scope, project) does."""
    client = await _ts(aiohttp_client, tmp_path)
    _, first = await call(
        client, "POST", REMEMBER, {"content": "Deploys run  on Fridays", "agentId": "bob"}
    )
    _, same = await call(
        client, "POST", REMEMBER, {"content": "  deploys run on\r\nfridays!!", "agentId": "bob"}
    )
    assert same["id"] == first["id"] and same["deduped"] is True
    variants: list[dict[str, Any]] = [
        {"agentId": "alice"},
        {"agentId": "bob", "visibility": "private"},
        {"agentId": "bob", "scope": "bench:1"},
        {"agentId": "bob", "project": "acme"},
    ]
    ids = {first["id"]}
    for extra in variants:
        _, body = await call(
            client, "POST", REMEMBER, {"content": "Deploys run on Fridays", **extra}
        )
        assert "deduped" not in body, extra
        ids.add(body["id"])
    assert len(ids) == 5


async def test_idempotency_key_returns_the_original(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A repeated idempotency key returns the first row, even with new content; the key is
    scoped by agent; sourceType+sourceId dedupes too."""
    client = await _ts(aiohttp_client, tmp_path)
    _, first = await call(
        client, "POST", REMEMBER, {"content": "v1", "agentId": "dave", "idempotencyKey": "k1"}
    )
    _, again = await call(
        client,
        "POST",
        REMEMBER,
        {"content": "v2 entirely new", "agentId": "dave", "metadata": {"idempotency_key": "k1"}},
    )
    assert (again["id"], again["content"], again["deduped"]) == (first["id"], "v1", True)
    _, other = await call(
        client, "POST", REMEMBER, {"content": "v1", "agentId": "carol", "idempotencyKey": "k1"}
    )
    assert other["id"] != first["id"]
    _, src = await call(client, "POST", REMEMBER, {"content": "s1", "sourceId": "doc-7"})
    _, src2 = await call(client, "POST", REMEMBER, {"content": "s2", "sourceId": "doc-7"})
    assert src2["id"] == src["id"]


async def test_long_content_is_chunked(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    """TS chunks content over 800 characters on sentence ends; chunks are recallable and a
    repeated idempotency key returns the same chunks."""
    client = await _ts(aiohttp_client, tmp_path)
    sentence = "Step {n}: check the deploy queue and record the result in the ops log."
    content = " ".join(sentence.format(n=n) for n in range(1, 16))
    assert len(content) > 800
    body = {"content": content, "agentId": "bob", "idempotencyKey": "long-1"}
    status, first = await call(client, "POST", REMEMBER, body)
    assert status == 200 and first["chunked"] is True
    assert first["chunk_count"] == len(first["ids"]) >= 2
    _, again = await call(client, "POST", REMEMBER, body)
    assert again["ids"] == first["ids"] and again["deduped"] is True
    _, hits = await call(
        client,
        "POST",
        "/api/memory/recall",
        {"query": "deploy queue", "agentId": "bob", "limit": 50},
    )
    assert {h["id"] for h in hits["results"]} == set(first["ids"])


async def test_recall_limit_truncation_and_order(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """limit clamps to 1..50 (default 10); content is cut to 500 chars with a marker;
    equal texts come back in write order; scores are within 0..1."""
    client = await _ts(aiohttp_client, tmp_path)
    ids = []
    for n in range(12):
        _, body = await call(
            client,
            "POST",
            REMEMBER,
            {"content": "Kestrel note", "agentId": "bob", "project": f"p{n}"},
        )
        ids.append(body["id"])
    recall = "/api/memory/recall"
    _, default = await call(client, "POST", recall, {"query": "kestrel", "agentId": "bob"})
    assert [r["id"] for r in default["results"]] == ids[:10]
    _, one = await call(client, "POST", recall, {"query": "kestrel", "agentId": "bob", "limit": 0})
    assert len(one["results"]) == 1
    _, many = await call(
        client, "POST", recall, {"query": "kestrel", "agentId": "bob", "limit": "500"}
    )
    assert len(many["results"]) == 12
    assert all(0 <= r["score"] <= 1 for r in many["results"])
    await call(
        client,
        "POST",
        REMEMBER,
        {"content": "osprey " + "x" * 700, "agentId": "bob", "structured": {"entities": []}},
    )
    _, hit = await call(client, "POST", recall, {"query": "osprey", "agentId": "bob"})
    item = hit["results"][0]
    assert item["truncated"] is True and item["content_length"] == 707
    assert item["content"].endswith(" [truncated]") and len(item["content"]) == 512


async def test_recall_filters_and_session_dedupe(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Filters (who, tags, project, scope) narrow recall; with a sessionKey rows already
    returned in the session are suppressed unless includeRecalled is set."""
    client = await _ts(aiohttp_client, tmp_path)
    _, a = await call(
        client,
        "POST",
        REMEMBER,
        {"content": "heron one", "who": "x", "tags": ["birds", "ops"], "project": "acme"},
    )
    _, b = await call(client, "POST", REMEMBER, {"content": "heron two", "who": "y"})
    _, c = await call(client, "POST", REMEMBER, {"content": "heron three", "scope": "bench"})
    recall = "/api/memory/recall"

    async def ids(**body: Any) -> list[str]:
        _, result = await call(client, "POST", recall, {"query": "heron", **body})
        return [r["id"] for r in result["results"]]

    assert set(await ids()) == {a["id"], b["id"]}
    assert await ids(who="y") == [b["id"]]
    assert await ids(tags="ops") == [a["id"]]
    assert await ids(project="acme") == [a["id"]]
    assert await ids(scope="bench") == [c["id"]]
    assert set(await ids(sessionKey="s1")) == {a["id"], b["id"]}
    assert await ids(sessionKey="s1") == []
    _, again = await call(
        client, "POST", recall, {"query": "heron", "sessionKey": "s1", "includeRecalled": True}
    )
    assert all(r["already_recalled"] is True for r in again["results"])


async def test_modify_rules(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    """Modify needs a reason, bumps the version, reports conflicts, no-ops and duplicates."""
    client = await _ts(aiohttp_client, tmp_path)
    _, one = await call(client, "POST", REMEMBER, {"content": "alpha fact"})
    _, two = await call(client, "POST", REMEMBER, {"content": "beta fact"})
    modify = "/api/memory/modify"

    async def patch(**fields: Any) -> dict[str, Any]:
        _, body = await call(
            client, "POST", modify, {"patches": [{"id": one["id"], **fields}], "reason": "test"}
        )
        return dict(body["results"][0])

    assert (await patch(pinned=True))["status"] == "updated"
    assert (await patch(pinned=True))["status"] == "no_changes"
    assert (await patch(importance=0.2, if_version=1))["status"] == "version_conflict"
    assert (await patch(content="BETA FACT."))["status"] == "duplicate_content_hash"
    assert (await patch(importance=7))["status"] == "invalid_request"
    status, _ = await call(client, "POST", modify, {"patches": [{"id": "x"}] * 201})
    assert status == 400
    _, row = await call(client, "GET", f"/api/memory/{one['id']}")
    assert (row["version"], row["pinned"]) == (2, 1)
    assert two["id"] != one["id"]


async def test_forget_preview_confirm_and_pinned(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """More than 25 candidates need the preview's confirm token; pinned memories need
    force; already deleted ones are reported."""
    client = await _ts(aiohttp_client, tmp_path)
    for n in range(30):
        await call(client, "POST", REMEMBER, {"content": f"ibis batch {n}", "who": "batch"})
    forget = "/api/memory/forget"
    _, preview = await call(client, "POST", forget, {"who": "batch", "limit": 200})
    assert preview["count"] == 30 and preview["requiresConfirm"] is True
    execute = {"who": "batch", "limit": 200, "mode": "execute", "reason": "cleanup"}
    assert (await call(client, "POST", forget, execute))[0] == 400
    _, done = await call(
        client, "POST", forget, execute | {"confirm_token": preview["confirmToken"]}
    )
    assert done["deleted"] == 30
    _, pinned = await call(client, "POST", REMEMBER, {"content": "keep me", "pinned": True})
    body = {"ids": [pinned["id"]], "mode": "execute", "reason": "r"}
    _, result = await call(client, "POST", forget, body)
    assert result["results"][0]["status"] == "pinned_requires_force"
    _, result = await call(client, "POST", forget, body | {"force": True})
    assert result["results"][0]["status"] == "deleted"
    _, result = await call(client, "POST", forget, body | {"force": True})
    assert result["results"][0]["status"] == "already_deleted"


async def test_patch_and_delete_by_id(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    """PATCH/DELETE /api/memory/:id need a reason and answer with the item result."""
    client = await _ts(aiohttp_client, tmp_path)
    _, mem = await call(client, "POST", REMEMBER, {"content": "gamma fact"})
    path = f"/api/memory/{mem['id']}"
    assert (await call(client, "PATCH", path, {"importance": 0.3}))[0] == 400
    status, body = await call(client, "PATCH", path, {"importance": 0.3, "reason": "r"})
    assert (status, body["status"], body["newVersion"]) == (200, "updated", 2)
    assert (await call(client, "PATCH", "/api/memory/nope", {"pinned": True, "reason": "r"}))[
        0
    ] == 404
    assert (await call(client, "DELETE", path))[0] == 400
    status, body = await call(client, "DELETE", f"{path}?reason=done")
    assert (status, body["status"]) == (200, "deleted")
    assert (await call(client, "GET", path))[0] == 404


async def test_memories_list_and_session_start(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """/api/memories lists newest first with stats; session-start injects what the agent
    may read and a repeat in the same session is a stub; no-hooks skips it."""
    client = await _ts(aiohttp_client, tmp_path)
    _, a = await call(client, "POST", REMEMBER, {"content": "first", "importance": 0.95})
    _, b = await call(
        client, "POST", REMEMBER, {"content": "second", "agentId": "alice", "visibility": "private"}
    )
    _, listing = await call(client, "GET", "/api/memories?limit=10")
    assert [m["id"] for m in listing["memories"]] == [b["id"], a["id"]]
    assert listing["stats"] == {"total": 2, "withEmbeddings": 0, "critical": 1}
    start = {"harness": "codex", "agentId": "bob", "sessionKey": "k"}
    _, first = await call(client, "POST", "/api/hooks/session-start", start)
    assert [m["id"] for m in first["memories"]] == [a["id"]]
    assert "first" in first["inject"]
    _, repeat = await call(client, "POST", "/api/hooks/session-start", start)
    assert repeat == {"inject": "", "memories": []}
    _, skipped = await call(
        client,
        "POST",
        "/api/hooks/session-start",
        {"harness": "codex"},
        headers={"x-signet-no-hooks": "1"},
    )
    assert skipped == {"inject": "", "memories": []}
    async with client.post(
        "/api/hooks/session-start", data="{oops", headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 500 and await resp.json() == {"error": "Hook execution failed"}
