"""The rules of the modify/forget ownership check (sidecar.memory.owner_checks), one per test,
against a real memories.db: every id is checked (PATCH/DELETE/recover by id check the path
id), unreadable ownership refuses, an unreadable modify/forget body refuses, a TS
forget-by-query is refused, a Rust one is left to the daemon, and a refusal says who and where.

These pin the behaviour that mutation testing (bench/mutation.py) showed no test held."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.memory.owner_checks import refuse_foreign
from signet_cluster.daemon.agent_resolution import RouteKind
from signet_cluster.daemon.ownership import MemoryOwnership

NODE = "node-7"


@pytest.fixture
def ownership(tmp_path: Path) -> MemoryOwnership:
    """alice owns a1 and a2, bob owns b1 and b2."""
    db = tmp_path / "memories.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute(
            "CREATE TABLE memories (id TEXT PRIMARY KEY, content TEXT, is_deleted INTEGER,"
            " agent_id TEXT, visibility TEXT)"
        )
        conn.executemany(
            "INSERT INTO memories VALUES (?, 'x', 0, ?, 'global')",
            [("a1", "alice"), ("a2", "alice"), ("b1", "bob"), ("b2", "bob")],
        )
        conn.commit()
    return MemoryOwnership(db)


async def _check(
    ownership: MemoryOwnership,
    kind: RouteKind,
    body: dict[str, Any] | None = None,
    *,
    agent: str = "alice",
    flavor: str = "ts",
    match_id: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, Any]] | None:
    """Check a request whose body is `body` as JSON (or exactly `raw`)."""
    if raw is None:
        raw = b"" if body is None else json.dumps(body).encode()
    refusal = await refuse_foreign(
        ownership=ownership,
        kind=kind,
        agent=agent,
        flavor=flavor,
        raw=raw,
        match_id=match_id,
        node_id=NODE,
    )
    if refusal is None:
        return None
    assert isinstance(refusal, web.Response) and refusal.text is not None
    return refusal.status, json.loads(refusal.text)


async def test_own_memories_pass(ownership: MemoryOwnership) -> None:
    """Rule: a request that touches only the agent's own memories (or ids the database does
    not know, which the daemon answers itself) goes through."""
    assert await _check(ownership, RouteKind.FORGET, {"ids": ["a1", "a2", "zz"]}) is None
    assert await _check(ownership, RouteKind.MODIFY, {"patches": [{"id": "a2"}]}) is None
    assert await _check(ownership, RouteKind.DELETE_BY_ID, match_id="a1") is None


@pytest.mark.parametrize("ids", [["b1", "a1"], ["a1", "b1"], ["a1", "a2", "b2"]])
async def test_every_id_of_a_multi_id_forget_is_checked(
    ownership: MemoryOwnership, ids: list[str]
) -> None:
    """Rule: one foreign id anywhere in a forget's `ids` refuses the whole request."""
    answer = await _check(ownership, RouteKind.FORGET, {"ids": ids})
    assert answer is not None and answer[0] == 403


@pytest.mark.parametrize("ids", [["b1", "a1"], ["a1", "b1"], ["a1", "a2", "b2"]])
async def test_every_patch_of_a_multi_id_modify_is_checked(
    ownership: MemoryOwnership, ids: list[str]
) -> None:
    """Rule: one foreign id anywhere in a modify's `patches` refuses the whole request."""
    patches = [{"id": i, "content": "new"} for i in ids]
    answer = await _check(ownership, RouteKind.MODIFY, {"patches": patches})
    assert answer is not None and answer[0] == 403


async def test_patch_delete_and_recover_by_id_check_the_path_id(
    ownership: MemoryOwnership,
) -> None:
    """Rule: PATCH/DELETE /api/memory/{id} and recover (issue 14) check the id in the path,
    not the body; their own memory passes."""
    for kind in (RouteKind.PATCH_BY_ID, RouteKind.DELETE_BY_ID, RouteKind.RECOVER):
        answer = await _check(ownership, kind, {"ids": ["a1"]}, match_id="b1")
        assert answer is not None and answer[0] == 403 and answer[1]["ids"] == ["b1"]
        assert await _check(ownership, kind, {"ids": ["b1"]}, match_id="a1") is None


@pytest.mark.parametrize(
    "raw",
    [b'{"ids": ["b1"\xff]}', '{"ids": ["b1"]}'.encode("utf-16"), b'["b1"]', b"{not json"],
)
@pytest.mark.parametrize("kind", [RouteKind.FORGET, RouteKind.MODIFY])
async def test_an_unreadable_modify_or_forget_body_is_refused(
    ownership: MemoryOwnership, kind: RouteKind, raw: bytes
) -> None:
    """Rule (issue 12): a modify or forget body that is not a JSON object in strict UTF-8
    (invalid bytes, UTF-16, an array, not JSON) is refused with 400 `body_unreadable`, for any
    agent and flavor: the daemon would decode it leniently and act on ids nobody checked."""
    for flavor in ("ts", "rust"):
        answer = await _check(ownership, kind, raw=raw, flavor=flavor)
        assert answer is not None
        status, refusal = answer
        assert (status, refusal["code"]) == (400, "body_unreadable")
        assert refusal["error"] == (
            f"the {kind.value} body is not a JSON object in UTF-8, so the sidecar cannot "
            "check which agent and memories it names; nothing was changed"
        )


async def test_only_bodies_that_name_ids_must_be_readable(ownership: MemoryOwnership) -> None:
    """Rule: by-id routes take the id from the path, so their body is not read; an empty
    modify/forget body names nothing and is left to the daemon."""
    for kind in (RouteKind.PATCH_BY_ID, RouteKind.DELETE_BY_ID, RouteKind.RECOVER):
        assert await _check(ownership, kind, raw=b"\xff", match_id="a1") is None
    for kind in (RouteKind.FORGET, RouteKind.MODIFY):
        assert await _check(ownership, kind, raw=b"  ") is None


async def test_refusal_names_the_agent_the_foreign_ids_and_the_node(
    ownership: MemoryOwnership,
) -> None:
    """Rule: the 403 body is the daemon's error shape plus `code: not_agent_owner`, the
    acting `agent`, the foreign `ids` (sorted, each once) and this `node`; the message names
    them too and says nothing was changed."""
    answer = await _check(ownership, RouteKind.FORGET, {"ids": ["b2", "a1", "b1", "b2"]})
    assert answer is not None
    status, body = answer
    assert status == 403
    assert body["code"] == "not_agent_owner"
    assert body["agent"] == "alice"
    assert body["ids"] == ["b1", "b2"]
    assert body["node"] == NODE
    assert body["error"] == ("memories b1, b2 do not belong to agent 'alice'; nothing was changed")


async def test_unreadable_ownership_refuses(tmp_path: Path) -> None:
    """Rule: fail closed. When the memories database cannot be read, a modify/forget by id is
    refused with 503 `ownership_unavailable`, never passed to the daemon unchecked."""
    missing = MemoryOwnership(tmp_path / "no-such" / "memories.db")
    for kind, body, match_id in (
        (RouteKind.FORGET, {"ids": ["b1"]}, None),
        (RouteKind.MODIFY, {"patches": [{"id": "b1"}]}, None),
        (RouteKind.DELETE_BY_ID, None, "b1"),
    ):
        answer = await _check(missing, kind, body, match_id=match_id)
        assert answer is not None
        status, refusal = answer
        assert status == 503 and refusal["code"] == "ownership_unavailable"
        assert refusal["error"].startswith(
            "cannot check which agent owns these memories, so nothing was changed: "
        )
        assert "not found" in refusal["error"]


@pytest.mark.parametrize("body", [{"ids": []}, {"query": "old stuff"}, {"ids": "b1"}])
async def test_ts_forget_without_a_list_of_ids_is_refused(
    ownership: MemoryOwnership, body: dict[str, Any]
) -> None:
    """Rule: a TS daemon does not scope forget-by-query to an agent, so a forget without a
    non-empty list of `ids` (empty list, a query, ids that are not a list) is refused with
    400 `agent_scope_requires_ids` instead of forwarded unchecked."""
    answer = await _check(ownership, RouteKind.FORGET, body, flavor="ts")
    assert answer is not None
    status, refusal = answer
    assert status == 400 and refusal["code"] == "agent_scope_requires_ids"
    assert refusal["error"] == (
        "forget for agent 'alice' must list `ids`: this node's daemon (ts) does not scope "
        "forget-by-query to an agent, so the sidecar only forgets ids it can check"
    )


@pytest.mark.parametrize("body", [{"query": "old stuff"}, {"ids": []}])
async def test_rust_forget_by_query_is_left_to_the_daemon(
    ownership: MemoryOwnership, body: dict[str, Any]
) -> None:
    """Rule: the Rust daemon scopes forget-by-query to the body's agent itself, so the
    sidecar passes it through."""
    assert await _check(ownership, RouteKind.FORGET, body, flavor="rust") is None


async def test_rust_forget_by_ids_is_still_checked(ownership: MemoryOwnership) -> None:
    """Rule: forget by ids is checked whatever the flavor (Rust forgets by id unscoped)."""
    answer = await _check(ownership, RouteKind.FORGET, {"ids": ["b1"]}, flavor="rust")
    assert answer is not None and answer[0] == 403


async def test_non_string_ids_are_not_looked_up(ownership: MemoryOwnership) -> None:
    """Rule: only string ids name memories; others are left for the daemon to reject, and a
    foreign string id among them is still refused."""
    assert await _check(ownership, RouteKind.FORGET, {"ids": [5, None]}) is None
    answer = await _check(ownership, RouteKind.FORGET, {"ids": [5, "b1"]})
    assert answer is not None and answer[0] == 403
    patches = [{"id": 5}, "b1", {"content": "x"}, {"id": "b2"}]
    answer = await _check(ownership, RouteKind.MODIFY, {"patches": patches})
    assert answer is not None and answer[1]["ids"] == ["b2"]
