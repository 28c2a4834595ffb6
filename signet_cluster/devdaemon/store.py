"""Row-level access to the dev daemon's database: memories and agents.

Every query runs synchronously on the event loop thread over one connection. That is a
deliberate choice for a stand-in used by latency benchmarks: the data sets are small,
each statement takes microseconds, and a thread hop per query (``asyncio.to_thread``)
would add more latency noise than the query itself. Slowness and hangs are simulated
explicitly by the fault hooks instead.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlite_utils import Database

from .config import DevDaemonConfig
from .util import Clock

AGENT_FIELDS = "id, name, read_policy, policy_group, created_at, updated_at"

Row = dict[str, Any]


class Store:
    """The database plus the clock and flavor facts every query needs."""

    def __init__(self, db: Database, config: DevDaemonConfig, clock: Clock) -> None:
        self.db = db
        self.config = config
        self.clock = clock
        self._memory_columns = frozenset(
            str(row["name"]) for row in db.query("PRAGMA table_info(memories)")
        )

    def has_column(self, name: str) -> bool:
        return name in self._memory_columns

    def one(self, sql: str, params: list[Any] | None = None) -> Row | None:
        for row in self.db.query(sql, params or []):
            return row
        return None

    def all(self, sql: str, params: list[Any] | None = None) -> list[Row]:
        return list(self.db.query(sql, params or []))

    # -- memories --------------------------------------------------------------------

    def get_memory(self, mem_id: str) -> Row | None:
        return self.one("SELECT * FROM memories WHERE id = ?", [mem_id])

    def insert_memory(self, fields: dict[str, Any]) -> str:
        """Insert one memory row; columns the flavor's schema lacks are dropped."""
        row = {key: value for key, value in fields.items() if key in self._memory_columns}
        row.setdefault("id", str(uuid.uuid4()))
        names = ", ".join(row)
        marks = ", ".join("?" * len(row))
        self.db.execute(f"INSERT INTO memories ({names}) VALUES ({marks})", list(row.values()))
        return str(row["id"])

    def update_memory(self, mem_id: str, changes: dict[str, Any]) -> None:
        sets = ", ".join(f"{name} = ?" for name in changes)
        self.db.execute(f"UPDATE memories SET {sets} WHERE id = ?", [*changes.values(), mem_id])

    def owner_of(self, row: Row) -> str:
        """The owning agent, wrapped like the Rust daemon (legacy rows are `default`)."""
        agent = row.get("agent_id")
        return str(agent) if agent else "default"

    # -- agents ----------------------------------------------------------------------

    def list_agents(self) -> list[Row]:
        return self.all(f"SELECT {AGENT_FIELDS} FROM agents ORDER BY name")

    def agent_by_name(self, name: str) -> Row | None:
        return self.one(f"SELECT {AGENT_FIELDS} FROM agents WHERE name = ?", [name])

    def agent_by_id(self, agent_id: str) -> Row | None:
        return self.one(f"SELECT {AGENT_FIELDS} FROM agents WHERE id = ?", [agent_id])

    def create_agent(self, name: str, read_policy: str, policy_group: str | None) -> Row:
        """Insert an agent (``id = name``); raises ``sqlite3.IntegrityError`` on duplicates."""
        now = self.clock.now()
        self.db.execute(
            f"INSERT INTO agents ({AGENT_FIELDS}) VALUES (?, ?, ?, ?, ?, ?)",
            [name, name, read_policy, policy_group, now, now],
        )
        created = self.agent_by_id(name)
        assert created is not None  # just inserted on this connection
        return created

    def delete_agent(self, agent_id: str, *, purge: bool) -> None:
        """Archive (or purge) the agent's memories, then drop its row, atomically."""
        with self.db.atomic():
            if purge:
                self.db.execute("DELETE FROM memories WHERE agent_id = ?", [agent_id])
            else:
                self.db.execute(
                    "UPDATE memories SET visibility = 'archived' WHERE agent_id = ?", [agent_id]
                )
            self.db.execute("DELETE FROM agents WHERE id = ?", [agent_id])

    def ensure_agent_registered(self, agent_id: str) -> None:
        """TS ``ensureAgentRegistered``: a new agent is ``shared``; a known one is touched."""
        now = self.clock.now()
        self.db.execute(
            f"INSERT INTO agents ({AGENT_FIELDS}) VALUES (?, ?, 'shared', NULL, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET updated_at = excluded.updated_at",
            [agent_id, agent_id, now, now],
        )
