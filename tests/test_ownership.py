"""MemoryOwnership: the read-only view of a daemon's memories.db."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from pathlib import Path

import pytest

from signet_cluster.daemon.ownership import MemoryOwner, MemoryOwnership, OwnershipUnavailable

from .devdaemon_helpers import GOLDEN_ROSTER, ClientFactory, call, start_daemon


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_lookup_maps_ids_to_owners_while_the_daemon_runs(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Owners and visibility come from the live daemon's WAL database; unknown ids are left
    out; deleted memories are flagged; the agents table is readable."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts", GOLDEN_ROSTER)
    _, alice = await call(
        client,
        "POST",
        "/api/memory/remember",
        {"content": "a", "agentId": "alice", "visibility": "private"},
    )
    _, plain = await call(client, "POST", "/api/memory/remember", {"content": "b"})
    await call(
        client,
        "POST",
        "/api/memory/forget",
        {"ids": [plain["id"]], "mode": "execute", "reason": "r"},
    )
    with MemoryOwnership(tmp_path / "memory" / "memories.db") as ownership:
        owners = await asyncio.to_thread(ownership.lookup, [alice["id"], plain["id"], "nope"])
        assert owners == {
            alice["id"]: MemoryOwner(
                id=alice["id"], agent_id="alice", visibility="private", is_deleted=False
            ),
            plain["id"]: MemoryOwner(
                id=plain["id"], agent_id="default", visibility="global", is_deleted=True
            ),
        }
        # The daemon keeps writing; the same connection sees the new rows.
        _, later = await call(
            client, "POST", "/api/memory/remember", {"content": "c", "agentId": "bob"}
        )
        assert ownership.lookup([later["id"]])[later["id"]].agent_id == "bob"
        assert [row["id"] for row in ownership.agents()] == [
            "alice",
            "bob",
            "carol",
            "dave",
            "default",
        ]
        assert ownership.lookup([]) == {}


def _legacy_db(path: Path, *, with_agent_columns: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        extra = ", agent_id TEXT, visibility TEXT" if with_agent_columns else ""
        conn.execute(
            f"CREATE TABLE memories (id TEXT PRIMARY KEY, content TEXT, is_deleted INTEGER{extra})"
        )
        if with_agent_columns:
            conn.executemany(
                "INSERT INTO memories VALUES (?, 'x', 0, ?, ?)",
                [("m1", "", None), ("m2", None, "private"), ("m3", "eve", "archived")],
            )
        else:
            conn.execute("INSERT INTO memories VALUES ('m1', 'x', 0)")
        conn.commit()


def test_legacy_database_reads_as_default_global(tmp_path: Path) -> None:
    """A database without agent_id/visibility (before 0.76) maps everything to `default`,
    `global`; empty or NULL columns are wrapped the way the Rust daemon does."""
    old = tmp_path / "old.db"
    _legacy_db(old, with_agent_columns=False)
    with MemoryOwnership(old) as ownership:
        assert ownership.lookup(["m1"])["m1"] == MemoryOwner(
            id="m1", agent_id="default", visibility="global", is_deleted=False
        )
        assert ownership.agents() == []
    mixed = tmp_path / "mixed.db"
    _legacy_db(mixed, with_agent_columns=True)
    with MemoryOwnership(mixed) as ownership:
        owners = ownership.lookup(["m1", "m2", "m3"])
        assert [(o.agent_id, o.visibility) for o in owners.values()] == [
            ("default", "global"),
            ("default", "private"),
            ("eve", "archived"),
        ]


def test_it_never_writes_or_creates_the_file(tmp_path: Path) -> None:
    """The connection is read-only: the file is byte-for-byte unchanged after reads, a
    write through the connection fails, and a missing file is not created."""
    db = tmp_path / "memories.db"
    _legacy_db(db, with_agent_columns=True)
    before = _digest(db)
    with MemoryOwnership(db) as ownership:
        ownership.lookup(["m1", "m2"])
        ownership.agents()
        # The only handle on the connection is private; reaching in proves mode=ro holds.
        with pytest.raises(sqlite3.OperationalError, match=r"readonly|read-only"):
            ownership._connect().execute("DELETE FROM memories")
    assert _digest(db) == before
    missing = tmp_path / "memory" / "memories.db"
    with pytest.raises(OwnershipUnavailable, match="not found"):
        MemoryOwnership(missing).lookup(["m1"])
    assert not missing.exists() and not missing.parent.exists()


def test_unreadable_databases_raise(tmp_path: Path) -> None:
    """A file that is not SQLite, or has no memories table, raises OwnershipUnavailable."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OwnershipUnavailable):
        MemoryOwnership(junk).lookup(["x"])
    with pytest.raises(OwnershipUnavailable):
        MemoryOwnership(junk).agents()
    empty = tmp_path / "empty.db"
    with contextlib.closing(sqlite3.connect(empty)) as conn:
        conn.execute("CREATE TABLE other (x)")
    with pytest.raises(OwnershipUnavailable, match="no memories table"):
        MemoryOwnership(empty).lookup(["x"])


def test_lookup_handles_more_ids_than_one_statement_takes(tmp_path: Path) -> None:
    """Large id lists are split into chunks below SQLite's parameter limit."""
    db = tmp_path / "many.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE memories (id TEXT PRIMARY KEY, agent_id TEXT)")
        conn.executemany(
            "INSERT INTO memories VALUES (?, 'bob')", [(f"m{i}",) for i in range(1500)]
        )
        conn.commit()
    with MemoryOwnership(db) as ownership:
        owners = ownership.lookup(f"m{i}" for i in range(2000))
    assert len(owners) == 1500
    assert {owner.agent_id for owner in owners.values()} == {"bob"}


def test_a_database_upgraded_in_place_is_read_with_its_new_columns(tmp_path: Path) -> None:
    """A daemon before 0.76 upgraded while the sidecar runs adds agent_id, visibility and
    the agents table: the next lookups see them (a private memory reads as private, not as
    the `default`, `global` of the old schema), and the agents' policies become readable."""
    db = tmp_path / "memories.db"
    _legacy_db(db, with_agent_columns=False)
    with MemoryOwnership(db) as ownership:
        assert ownership.lookup(["m1"])["m1"].visibility == "global"
        with contextlib.closing(sqlite3.connect(db)) as conn:  # the daemon's migration
            conn.execute("ALTER TABLE memories ADD COLUMN agent_id TEXT DEFAULT 'default'")
            conn.execute("ALTER TABLE memories ADD COLUMN visibility TEXT DEFAULT 'global'")
            conn.execute(
                "CREATE TABLE agents (id TEXT PRIMARY KEY, name TEXT, read_policy TEXT,"
                " policy_group TEXT, created_at TEXT, updated_at TEXT)"
            )
            conn.execute("INSERT INTO agents VALUES ('alice', 'alice', 'isolated', NULL, 'x', 'x')")
            conn.execute("INSERT INTO memories VALUES ('m2', 'y', 0, 'alice', 'private')")
            conn.commit()
        owner = ownership.lookup(["m2"])["m2"]
        assert (owner.agent_id, owner.visibility) == ("alice", "private")
        assert ownership.policies(["alice", "bob"]) == {"alice": ("isolated", None)}
    with MemoryOwnership(tmp_path / "old.db") as legacy:
        _legacy_db(tmp_path / "old.db", with_agent_columns=False)
        assert legacy.policies(["default"]) is None  # no agents table at all
