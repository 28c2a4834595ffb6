"""The write spool (hinted handoff): remembers for an owner that cannot be reached are kept
here, durably, until they can be replayed to it in order.

One SQLite file in the sidecar's state directory, WAL with `synchronous=FULL`, so an entry
is on disk (fsync'd) before the client gets its 202. Entries leave the spool only after the
owner accepted them; a crash between the owner's answer and the delete replays the entry,
which the daemon then recognises by its idempotency key (and content hash) — never a
duplicate. Admission is bounded by total bytes and by the age of the oldest entry: past
either bound new writes are refused (503 + Retry-After), accepted ones are never dropped.
Entries an owner refuses for good (a 4xx) move to a dead-letter table shown in `status`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

IDEMPOTENCY_FIELDS = ("idempotencyKey", "idempotency_key")

_SCHEMA = """
create table if not exists spool (
    seq integer primary key autoincrement,
    owner text not null,
    agent_id text not null,
    method text not null,
    path text not null,
    headers text not null,
    body blob not null,
    idempotency_key text not null,
    size integer not null,
    created_at real not null,
    attempts integer not null default 0,
    last_error text
);
create index if not exists spool_agent on spool (agent_id, seq);
create table if not exists dead_letters (
    seq integer primary key,
    owner text not null,
    agent_id text not null,
    path text not null,
    body blob not null,
    idempotency_key text not null,
    created_at real not null,
    failed_at real not null,
    status integer not null,
    error text not null
);
"""


@attrs.frozen(kw_only=True)
class SpoolEntry:
    seq: int
    owner: str
    agent_id: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    idempotency_key: str
    created_at: float
    attempts: int


@attrs.frozen(kw_only=True)
class SpoolStats:
    depth: int
    bytes: int
    oldest_age_s: float | None
    by_owner: dict[str, int]
    dead_letters: int

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class SpoolFull(Exception):
    """Admission refused: the spool is at its size or age bound."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def ensure_idempotency_key(body: dict[str, Any], node_id: str) -> str:
    """The client's idempotency key (body or metadata), or a new one written into the body.

    A key is what makes replay safe: the daemon answers a repeated key with the original
    row (`deduped: true`) instead of storing the memory twice."""
    for field in IDEMPOTENCY_FIELDS:
        value = body.get(field)
        if isinstance(value, str) and value:
            return value
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        for field in IDEMPOTENCY_FIELDS:
            value = metadata.get(field)
            if isinstance(value, str) and value:
                return value
    key = f"signet-cluster:{node_id}:{uuid.uuid4().hex}"
    body["idempotencyKey"] = key
    return key


class Spool:
    """Synchronous store; the sidecar calls it from a worker thread."""

    def __init__(self, path: Path, *, max_bytes: int, max_age: float) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only before SQLite opens it (its -wal/-shm files copy these permissions):
        # the spool holds memory contents and the clients' Authorization headers.
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        with contextlib.suppress(OSError):  # someone else's file: leave it as it is
            os.chmod(path, 0o600)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("pragma journal_mode=wal")
        # FULL: every commit is fsync'd before it returns — the 202 promise.
        self._conn.execute("pragma synchronous=full")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _stats_locked(self, now: float) -> tuple[int, int, float | None]:
        row = self._conn.execute(
            "select count(*), coalesce(sum(size), 0), min(created_at) from spool"
        ).fetchone()
        oldest = now - row[2] if row[2] is not None else None
        return int(row[0]), int(row[1]), oldest

    def add(
        self,
        *,
        owner: str,
        agent_id: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        idempotency_key: str,
        now: float | None = None,
    ) -> int:
        """Store one write durably; raises SpoolFull past a bound. Returns its sequence."""
        now = time.time() if now is None else now
        with self._lock:
            _depth, size, oldest = self._stats_locked(now)
            if size + len(body) > self.max_bytes:
                raise SpoolFull(
                    f"the write spool is full ({size} of {self.max_bytes} bytes waiting for "
                    "unreachable owners)",
                    retry_after=30,
                )
            if oldest is not None and oldest > self.max_age:
                raise SpoolFull(
                    f"the write spool holds writes {oldest:.0f}s old (limit {self.max_age:.0f}s); "
                    "their owners have been unreachable too long to accept more",
                    retry_after=60,
                )
            cursor = self._conn.execute(
                "insert into spool (owner, agent_id, method, path, headers, body, idempotency_key,"
                " size, created_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    owner,
                    agent_id,
                    method,
                    path,
                    json.dumps(dict(headers)),
                    body,
                    idempotency_key,
                    len(body),
                    now,
                ),
            )
            return int(cursor.lastrowid or 0)

    def agents(self) -> list[str]:
        """Agents with writes waiting, in the order their oldest write arrived."""
        with self._lock:
            rows = self._conn.execute(
                "select agent_id from spool group by agent_id order by min(seq)"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def head(self, agent_id: str) -> SpoolEntry | None:
        """The oldest entry for `agent_id`: replay is strictly in order per agent (an
        agent's writes all go to its one owner, whichever node that is at replay time)."""
        with self._lock:
            row = self._conn.execute(
                "select seq, owner, agent_id, method, path, headers, body, idempotency_key,"
                " created_at, attempts from spool where agent_id = ? order by seq limit 1",
                (agent_id,),
            ).fetchone()
        if row is None:
            return None
        return SpoolEntry(
            seq=row[0],
            owner=row[1],
            agent_id=row[2],
            method=row[3],
            path=row[4],
            headers=json.loads(row[5]),
            body=bytes(row[6]),
            idempotency_key=row[7],
            created_at=row[8],
            attempts=row[9],
        )

    def done(self, seq: int) -> None:
        with self._lock:
            self._conn.execute("delete from spool where seq = ?", (seq,))

    def failed(self, seq: int, error: str) -> None:
        """A try that may work later (owner down again, 5xx): keep it, count it."""
        with self._lock:
            self._conn.execute(
                "update spool set attempts = attempts + 1, last_error = ? where seq = ?",
                (error[:500], seq),
            )

    def dead_letter(
        self, entry: SpoolEntry, status: int, error: str, now: float | None = None
    ) -> None:
        """The owner refused the write for good: keep it aside, visible, never silently lost."""
        now = time.time() if now is None else now
        with self._lock:
            self._conn.execute("begin immediate")
            self._conn.execute(
                "insert or replace into dead_letters (seq, owner, agent_id, path, body,"
                " idempotency_key, created_at, failed_at, status, error)"
                " values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry.seq,
                    entry.owner,
                    entry.agent_id,
                    entry.path,
                    entry.body,
                    entry.idempotency_key,
                    entry.created_at,
                    now,
                    status,
                    error[:500],
                ),
            )
            self._conn.execute("delete from spool where seq = ?", (entry.seq,))
            self._conn.execute("commit")

    def dead_letters(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "select seq, owner, agent_id, path, idempotency_key, created_at, failed_at, status,"
                " error from dead_letters order by seq"
            ).fetchall()
        keys = (
            "seq",
            "owner",
            "agent_id",
            "path",
            "idempotency_key",
            "created_at",
            "failed_at",
            "status",
            "error",
        )
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def stats(self, now: float | None = None) -> SpoolStats:
        now = time.time() if now is None else now
        with self._lock:
            depth, size, oldest = self._stats_locked(now)
            by_owner = dict(
                self._conn.execute("select owner, count(*) from spool group by owner").fetchall()
            )
            dead = int(self._conn.execute("select count(*) from dead_letters").fetchone()[0])
        return SpoolStats(
            depth=depth,
            bytes=size,
            oldest_age_s=round(oldest, 3) if oldest is not None else None,
            by_owner={str(k): int(v) for k, v in by_owner.items()},
            dead_letters=dead,
        )
