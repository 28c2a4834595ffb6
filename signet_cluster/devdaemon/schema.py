"""The dev daemon's SQLite schema: the columns of the real one that a sidecar can observe.

Two migration sets mirror the daemon's history: ``base`` is the pre-0.76 memories table
(what the ts-legacy flavor runs), ``multi_agent`` is migration 043 (agents table,
``memories.agent_id`` and ``visibility``) plus the agent-scoped idempotency key. Opening a
legacy database with a multi-agent flavor upgrades it in place, as the daemon does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from signet_cluster.daemon.roster import RosterEntry

from .config import DevDaemonConfig
from .util import Clock

base = Migrations("signet-devdaemon-base")
multi_agent = Migrations("signet-devdaemon-multi-agent")


@base()
def m001_memories(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE IF NOT EXISTS memories (
            id TEXT PRIMARY KEY,
            content TEXT NOT NULL,
            type TEXT NOT NULL DEFAULT 'fact',
            tags TEXT,
            pinned INTEGER NOT NULL DEFAULT 0,
            importance REAL NOT NULL DEFAULT 0.5,
            confidence REAL NOT NULL DEFAULT 1.0,
            who TEXT,
            project TEXT,
            scope TEXT,
            source_type TEXT DEFAULT 'manual',
            source_id TEXT,
            session_id TEXT,
            content_hash TEXT,
            is_deleted INTEGER NOT NULL DEFAULT 0,
            deleted_at TEXT,
            version INTEGER NOT NULL DEFAULT 1,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            updated_by TEXT,
            access_count INTEGER NOT NULL DEFAULT 0,
            last_accessed TEXT,
            extraction_status TEXT DEFAULT 'none',
            embedding_model TEXT
        )
        """
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_memories_content_hash ON memories(content_hash)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_memories_created_at ON memories(created_at)")
    # External-content FTS5 index kept in step by triggers: the daemon's keyword recall.
    db.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS memories_fts"
        " USING fts5(content, content='memories', content_rowid='rowid')"
    )
    db.execute(
        """CREATE TRIGGER IF NOT EXISTS memories_fts_ai AFTER INSERT ON memories BEGIN
             INSERT INTO memories_fts(rowid, content) VALUES (new.rowid, new.content);
           END"""
    )
    db.execute(
        """CREATE TRIGGER IF NOT EXISTS memories_fts_ad AFTER DELETE ON memories BEGIN
             INSERT INTO memories_fts(memories_fts, rowid, content)
             VALUES ('delete', old.rowid, old.content);
           END"""
    )
    db.execute(
        """CREATE TRIGGER IF NOT EXISTS memories_fts_au AFTER UPDATE OF content ON memories BEGIN
             INSERT INTO memories_fts(memories_fts, rowid, content)
             VALUES ('delete', old.rowid, old.content);
             INSERT INTO memories_fts(rowid, content) VALUES (new.rowid, new.content);
           END"""
    )


@base()
def m002_entities(db: Database) -> None:
    # A small knowledge store: entities named in `structured` remember payloads.
    db.execute(
        """CREATE TABLE IF NOT EXISTS entities (
             id TEXT PRIMARY KEY, name TEXT NOT NULL, canonical_name TEXT NOT NULL,
             entity_type TEXT NOT NULL DEFAULT 'extracted', agent_id TEXT NOT NULL DEFAULT
             'default', description TEXT, mentions INTEGER NOT NULL DEFAULT 0,
             created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"""
    )
    db.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_entities_agent_name"
        " ON entities(agent_id, canonical_name)"
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS entity_aspects (
             id TEXT PRIMARY KEY, entity_id TEXT NOT NULL, name TEXT NOT NULL,
             canonical_name TEXT NOT NULL, weight REAL NOT NULL DEFAULT 0.5,
             UNIQUE(entity_id, canonical_name))"""
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS entity_attributes (
             id TEXT PRIMARY KEY, aspect_id TEXT NOT NULL, memory_id TEXT, kind TEXT NOT NULL,
             content TEXT NOT NULL, importance REAL NOT NULL, confidence REAL NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE IF NOT EXISTS memory_entity_mentions (
             memory_id TEXT NOT NULL, entity_id TEXT NOT NULL, PRIMARY KEY (memory_id,
             entity_id))"""
    )


def _add_missing_columns(db: Database, columns: dict[str, str]) -> None:
    present = {row["name"] for row in db.query("PRAGMA table_info(memories)")}
    for name, ddl in columns.items():
        if name not in present:
            db.execute(f"ALTER TABLE memories ADD COLUMN {name} {ddl}")


@multi_agent()
def m043_agents_table(db: Database) -> None:
    """Migration 043: agents with read policies; memories get an owner and a visibility."""
    db.execute(
        """CREATE TABLE IF NOT EXISTS agents (
             id TEXT PRIMARY KEY, name TEXT, read_policy TEXT NOT NULL DEFAULT 'isolated',
             policy_group TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"""
    )
    _add_missing_columns(
        db, {"agent_id": "TEXT DEFAULT 'default'", "visibility": "TEXT DEFAULT 'global'"}
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_memories_agent_id ON memories(agent_id)")
    db.execute(
        "CREATE INDEX IF NOT EXISTS idx_memories_agent_visibility ON memories(agent_id, visibility)"
    )


@multi_agent()
def m072_idempotency_and_paths(db: Database) -> None:
    _add_missing_columns(
        db,
        {"idempotency_key": "TEXT", "source_path": "TEXT", "runtime_path": "TEXT"},
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_memories_idempotency ON memories(idempotency_key)")


def open_database(config: DevDaemonConfig, clock: Clock) -> Database:
    """Open (creating if needed) the workspace database in WAL mode and migrate it."""
    config.db_path.parent.mkdir(parents=True, exist_ok=True)
    # One connection for the daemon's lifetime. check_same_thread stays on: every query
    # runs on the event loop thread (see store.py for why).
    conn = sqlite3.connect(str(config.db_path), timeout=5.0)
    db = Database(conn)
    db.enable_wal()
    db.execute("PRAGMA synchronous = NORMAL")
    base.apply(db)
    if config.has_agents:
        multi_agent.apply(db)
        # The migration seeds the implicit `default` agent as `shared`.
        now = clock.now()
        db.execute(
            "INSERT OR IGNORE INTO agents (id, name, read_policy, policy_group, created_at,"
            " updated_at) VALUES ('default', 'default', 'shared', NULL, ?, ?)",
            [now, now],
        )
    return db


def sync_roster(db: Database, roster: Iterable[RosterEntry], clock: Clock) -> None:
    """The TS daemon's ``syncAgentRoster``: upsert name/policy/group, overwriting."""
    now = clock.now()  # one stamp for the whole sync, as the daemon does
    with db.atomic():
        for entry in roster:
            db.execute(
                """INSERT INTO agents (id, name, read_policy, policy_group, created_at,
                   updated_at) VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET name = excluded.name,
                     read_policy = excluded.read_policy,
                     policy_group = excluded.policy_group""",
                [entry.name, entry.name, entry.read_policy, entry.policy_group, now, now],
            )
