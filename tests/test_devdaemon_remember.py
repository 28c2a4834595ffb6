"""Remember on the ts flavor, detail by detail as the 0.145.7 source does it (the remember
handler of `memory-routes.ts`, `parsePrefixes`, `resolveAgentId`), where the recorded run
does not show it."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from .devdaemon_helpers import GOLDEN_ROSTER, Client, ClientFactory, call, start_daemon

REMEMBER = "/api/memory/remember"
SESSION_HEADER = "x-signet-session-key"


def stored(workspace: Path, mem_id: str) -> dict[str, Any]:
    """The memory's row as the daemon stored it (no API response carries `agent_id`)."""
    uri = f"file:{workspace / 'memory' / 'memories.db'}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM memories WHERE id = ?", [mem_id]).fetchone()
    assert row is not None, mem_id
    return dict(row)


async def remember(client: Client, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
    status, answer = await call(client, "POST", REMEMBER, body, **kw)
    assert status == 200, answer
    assert isinstance(answer, dict)
    return answer


async def test_the_agent_comes_from_agent_id_or_the_session_header_only(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """TS remember takes the agent from the body `agentId`, else from an `agent:<id>:` key
    in the `x-signet-session-key` header. A `sessionKey` in the body is not read there (only
    Rust's remember reads it from the body), so such a write lands on `default`."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts", GOLDEN_ROSTER)
    body_key = await remember(client, {"content": "body key", "sessionKey": "agent:bob:s1"})
    header_key = await remember(
        client, {"content": "header key"}, headers={SESSION_HEADER: "agent:bob:s2"}
    )
    explicit = await remember(
        client,
        {"content": "explicit agent", "agentId": "carol", "sessionKey": "agent:bob:s3"},
        headers={SESSION_HEADER: "agent:bob:s3"},
    )
    owners = [stored(tmp_path, m["id"])["agent_id"] for m in (body_key, header_key, explicit)]
    assert owners == ["default", "bob", "carol"]


async def test_every_dedupe_reports_missing_tags_as_an_empty_string(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """A deduped remember answers `tags: row.tags || ""` whichever check matched: the
    content hash and sourceId as well as the idempotency key (the recording shows the last)."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts", GOLDEN_ROSTER)
    first = await remember(client, {"content": "No tags here", "agentId": "bob"})
    assert first["tags"] is None
    by_hash = await remember(client, {"content": "no tags here!", "agentId": "bob"})
    await remember(client, {"content": "From a doc", "sourceId": "doc-1"})
    by_source = await remember(client, {"content": "Other text", "sourceId": "doc-1"})
    assert (by_hash["deduped"], by_hash["tags"]) == (True, "")
    assert (by_source["deduped"], by_source["tags"]) == (True, "")


async def test_prefixes_set_defaults_the_body_can_override(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """`critical:` pins the memory and makes its importance 1.0, and a leading `[a, B]:`
    gives its tags (lower-cased), each only where the body does not say otherwise
    (`body.importance ?? parsed.importance`, `body.pinned ?? parsed.pinned`, body tags)."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts", GOLDEN_ROSTER)
    plain = await remember(client, {"content": "critical: [Ops, deploy]: rotate the keys"})
    assert (plain["content"], plain["importance"], plain["pinned"], plain["tags"]) == (
        "rotate the keys",
        1.0,
        True,
        "ops,deploy",
    )
    row = stored(tmp_path, plain["id"])
    assert (row["content"], row["pinned"], row["importance"], row["tags"]) == (
        "rotate the keys",
        1,
        1.0,
        "ops,deploy",
    )
    overridden = await remember(
        client,
        {
            "content": "CRITICAL: [ops]: check the backups",
            "importance": 0.4,
            "pinned": False,
            "tags": "mine",
        },
    )
    assert (overridden["importance"], overridden["pinned"], overridden["tags"]) == (
        0.4,
        False,
        "mine",
    )
    assert overridden["content"] == "check the backups"
