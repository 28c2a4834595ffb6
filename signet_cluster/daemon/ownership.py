"""Read-only view of a daemon's ``memory/memories.db``: which agent owns which memory.

No daemon API response carries a memory's owning ``agent_id`` (contract §2, "What the API
does NOT expose"), so the co-located sidecar reads the daemon's SQLite file directly. It
opens it with the URI ``mode=ro``: SQLite then never creates, migrates or writes the
file, and the daemon's WAL journal keeps concurrent reads consistent. (As any WAL reader,
SQLite may create the ``-wal``/``-shm`` side files when the daemon is not running; the
daemon uses those files itself, and the database file is never touched.)

Columns are wrapped exactly as the Rust daemon does (``COALESCE(NULLIF(agent_id,''),
'default')``, ``COALESCE(visibility,'global')``), so a row written before migration 043
reads as agent ``default``, visibility ``global``; a database without those columns at
all (releases before 0.76) maps every memory that way.

Every failure raises :class:`OwnershipUnavailable`: callers must then fail closed
(federation for that node is refused, never guessed).

Methods are synchronous and thread-safe; async callers run them via
``asyncio.to_thread``. One connection is kept and reused behind a lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import attrs

# SQLite's default limit on host parameters is 999 on old builds; stay well below it.
_CHUNK = 500
_BUSY_TIMEOUT_S = 2.0


class OwnershipUnavailable(Exception):
    """The daemon's database cannot be read; callers must fail closed."""


@attrs.frozen(kw_only=True)
class MemoryOwner:
    """Who owns a memory and whether other agents may ever see it."""

    id: str
    agent_id: str
    visibility: str  # "global" | "private" | "archived"
    is_deleted: bool


class MemoryOwnership:
    """A reusable read-only connection to one daemon's memories database."""

    def __init__(self, db_path: Path) -> None:
        self._path = Path(db_path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        # What the schema held at `_schema` (SQLite's schema cookie): the columns of
        # `memories` and whether an `agents` table exists. Re-read when the cookie moves,
        # e.g. a daemon upgraded in place past 0.76 adds agent_id/visibility/agents.
        self._schema: int | None = None
        self._columns: frozenset[str] = frozenset()
        self._has_agents = False

    @property
    def db_path(self) -> Path:
        return self._path

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        # Checked first so a missing file gives a clear message (mode=ro would say only
        # "unable to open database file"); mode=ro itself guarantees we never create it.
        if not self._path.is_file():
            raise OwnershipUnavailable(f"daemon database not found: {self._path}")
        uri = f"file:{quote(str(self._path.resolve()))}?mode=ro"
        try:
            # check_same_thread=False: calls arrive from asyncio.to_thread workers; the
            # lock serialises them.
            conn = sqlite3.connect(uri, uri=True, timeout=_BUSY_TIMEOUT_S, check_same_thread=False)
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise OwnershipUnavailable(f"cannot open {self._path} read-only: {exc}") from exc
        self._conn = conn
        return conn

    def _memory_columns(self, conn: sqlite3.Connection) -> frozenset[str]:
        schema = int(conn.execute("PRAGMA schema_version").fetchone()[0])
        if schema != self._schema:
            rows = conn.execute("PRAGMA table_info(memories)").fetchall()
            if not rows:
                raise OwnershipUnavailable(f"{self._path} has no memories table")
            self._columns = frozenset(str(row[1]) for row in rows)
            self._has_agents = (
                conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'agents'"
                ).fetchone()
                is not None
            )
            self._schema = schema
        return self._columns

    def _select_sql(self, columns: frozenset[str], count: int) -> str:
        agent = (
            "COALESCE(NULLIF(agent_id, ''), 'default')" if "agent_id" in columns else "'default'"
        )
        visibility = "COALESCE(visibility, 'global')" if "visibility" in columns else "'global'"
        deleted = "COALESCE(is_deleted, 0)" if "is_deleted" in columns else "0"
        marks = ", ".join("?" * count)
        return f"SELECT id, {agent}, {visibility}, {deleted} FROM memories WHERE id IN ({marks})"

    def lookup(self, ids: Iterable[str]) -> dict[str, MemoryOwner]:
        """Owners of the given memory ids; ids not in the database are left out."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return {}
        with self._lock:
            try:
                return self._lookup_locked(wanted)
            except sqlite3.OperationalError:
                # The daemon may have changed the schema between our look and the query:
                # re-read it once and retry.
                self._schema = None
                try:
                    return self._lookup_locked(wanted)
                except sqlite3.Error as exc:
                    raise OwnershipUnavailable(f"cannot read {self._path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise OwnershipUnavailable(f"cannot read {self._path}: {exc}") from exc

    def _lookup_locked(self, wanted: list[str]) -> dict[str, MemoryOwner]:
        conn = self._connect()
        columns = self._memory_columns(conn)
        found: dict[str, MemoryOwner] = {}
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            for mem_id, agent_id, visibility, deleted in conn.execute(
                self._select_sql(columns, len(chunk)), chunk
            ):
                found[str(mem_id)] = MemoryOwner(
                    id=str(mem_id),
                    agent_id=str(agent_id),
                    visibility=str(visibility),
                    is_deleted=bool(deleted),
                )
        return found

    def policies(self, agent_ids: Iterable[str]) -> dict[str, tuple[object, object]] | None:
        """``(read_policy, policy_group)`` of these agents as the daemon's ``agents`` table
        holds them now (agents without a row are left out); None when the database has no
        such table (releases before 0.76)."""
        wanted = list(dict.fromkeys(agent_ids))
        found: dict[str, tuple[object, object]] = {}
        with self._lock:
            try:
                conn = self._connect()
                self._memory_columns(conn)
                if not self._has_agents:
                    return None
                for start in range(0, len(wanted), _CHUNK):
                    chunk = wanted[start : start + _CHUNK]
                    marks = ", ".join("?" * len(chunk))
                    for agent_id, policy, group in conn.execute(
                        f"SELECT id, read_policy, policy_group FROM agents WHERE id IN ({marks})",
                        chunk,
                    ):
                        found[str(agent_id)] = (policy, group)
            except sqlite3.Error as exc:
                raise OwnershipUnavailable(f"cannot read agents from {self._path}: {exc}") from exc
        return found

    def agents(self) -> list[dict[str, object]]:
        """Rows of the ``agents`` table ordered by name; ``[]`` when the table is absent."""
        with self._lock:
            try:
                conn = self._connect()
                exists = conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'agents'"
                ).fetchone()
                if exists is None:
                    return []
                cursor = conn.execute(
                    "SELECT id, name, read_policy, policy_group, created_at, updated_at"
                    " FROM agents ORDER BY name"
                )
                keys = [str(d[0]) for d in cursor.description]
                return [dict(zip(keys, row, strict=True)) for row in cursor.fetchall()]
            except sqlite3.Error as exc:
                raise OwnershipUnavailable(f"cannot read agents from {self._path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._schema = None

    def __enter__(self) -> MemoryOwnership:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
