"""The write spool (hinted handoff): remembers for an owner that cannot be reached are kept
here, durably, until they can be replayed to it in order.

One SQLite file in the sidecar's state directory, WAL with `synchronous=FULL`, so an entry
is on disk (fsync'd) before the client gets its 202. Entries leave the spool only after the
owner accepted them; a crash between the owner's answer and the delete replays the entry,
which the daemon then recognises by its idempotency key (and content hash) — never a
duplicate. Admission is bounded by total bytes and by the age of the oldest entry: past
either bound new writes are refused (503 + Retry-After), accepted ones are never dropped.
Entries an owner refuses for good (a 4xx) move to a dead-letter table shown in `status`.

A full disk must not stop the drain: a reserve file is freed so delivered entries can be
deleted, and new writes are refused until there is space again. A damaged file (found at
start, or before or during a write) is moved aside by `signet_cluster.spool_repair`, which
recovers what is readable and names every acknowledged write it held.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from signet_cluster.spool_repair import (
    ROW_COLUMNS,
    Ledger,
    header_is_sound,
    is_damage,
    move_aside,
    salvage,
    waiting,
    write_report,
)

T = TypeVar("T")
# Disk space set aside beside the spool (spool.db.reserve) and given back when the disk is
# full, so the drain can still delete what it delivered: SQLite needs new pages in its WAL
# even to delete. A delete costs a few pages, and the WAL is checkpointed (then reused from
# its start, in place) every WAL_CHECKPOINT_PAGES pages: it never needs more than ~1 MiB.
RESERVE_BYTES = 2 * 1024 * 1024
WAL_CHECKPOINT_PAGES = 256
# Below this much free space (beside the reserve) the spool refuses new writes.
FREE_MIN = 1024 * 1024

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
    """Admission refused: the spool is at its size or age bound, or its disk is full."""

    def __init__(self, reason: str, retry_after: int, code: str = "spool_full") -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.code = code


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


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    return code == getattr(sqlite3, "SQLITE_FULL", 13) or "disk is full" in str(exc)


def _entry(row: tuple[Any, ...]) -> SpoolEntry:
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


class Spool:
    """Synchronous store; the sidecar calls it from a worker thread.

    Two conditions are tracked for readiness and status: `disk_full` (why the disk holding
    the spool cannot take more, or None) and `damage` (the last damaged file moved aside).
    """

    def __init__(
        self, path: Path, *, max_bytes: int, max_age: float, reserve_bytes: int = RESERVE_BYTES
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.reserve_bytes = reserve_bytes
        self.reserve_path = path.with_name(path.name + ".reserve")
        self.ledger_path = path.with_name(path.name + ".ledger")
        self.disk_full: str | None = None
        self.damage: dict[str, Any] | None = None
        self.damage_count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._ledger: Ledger | None = None
        self._conn = self._open_checked()
        if self._ledger is None:  # (a damaged file found at open has opened a fresh one)
            self._ledger = Ledger(self.ledger_path)
        self._restore_reserve()

    # -- opening, damage -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # Owner-only before SQLite opens it (its -wal/-shm files copy these permissions):
        # the spool holds memory contents and the clients' Authorization headers.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        with contextlib.suppress(OSError):  # someone else's file: leave it as it is
            os.chmod(self.path, 0o600)
        conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            conn.execute("pragma journal_mode=wal")
            # FULL: every commit is fsync'd before it returns — the 202 promise.
            conn.execute("pragma synchronous=full")
            conn.execute(f"pragma wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            conn.executescript(_SCHEMA)
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def _open_checked(self) -> sqlite3.Connection:
        """Open the file, moving it aside first if it is not a sound database."""
        if not header_is_sound(self.path):
            self._quarantine("not an SQLite database (file overwritten?)")
        try:
            conn = self._connect()
            verdict = conn.execute("pragma quick_check").fetchone()
            if verdict is None or verdict[0] != "ok":
                conn.close()
                raise sqlite3.DatabaseError(f"database disk image is malformed: {verdict}")
            return conn
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            self._quarantine(str(exc))
            return self._connect()

    def _quarantine(self, error: str) -> None:
        """Move the damaged file aside and list (and keep) what can still be read."""
        ledger = waiting(self.ledger_path)
        if getattr(self, "_conn", None) is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        damaged = move_aside(self.path)
        recovered = salvage(damaged, sorted(ledger))
        _report, summary = write_report(damaged, error=error, ledger=ledger, recovered=recovered)
        if self._ledger is not None:
            self._ledger.close()
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.ledger_path, Path(str(damaged) + ".ledger"))
        self._ledger = Ledger(self.ledger_path)
        self._conn = self._connect()
        for row in recovered:
            self._conn.execute(
                f"insert into spool ({ROW_COLUMNS}, size) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, len(row[6])),
            )
            self._ledger.added(seq=row[0], key=row[7], agent_id=row[2], owner=row[1], at=row[8])
        self.damage = summary
        self.damage_count += 1

    def _guarded(self, work: Callable[[], T]) -> T:
        """Run `work` (under the lock); a damaged file found meanwhile is moved aside."""
        try:
            return work()
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                self._quarantine(str(exc))
            raise

    # -- disk space --------------------------------------------------------------------------
    def _restore_reserve(self) -> bool:
        """Keep `reserve_bytes` set aside beside the spool: when the disk fills up, freeing
        it lets the drain delete delivered entries (SQLite needs space even to delete).
        Taken back only while FREE_MIN bytes stay free after it (else the spool counts as
        on a full disk), so a drain that just freed it is not starved again."""
        try:
            have = self.reserve_path.stat().st_size
        except FileNotFoundError:
            have = 0
        need = max(0, self.reserve_bytes - have)
        try:
            stat = os.statvfs(self.path.parent)
            free = stat.f_bavail * stat.f_frsize
        except OSError:
            free = need + FREE_MIN  # cannot tell: let the allocation decide
        if free - need < FREE_MIN:
            self.disk_full = f"the disk holding the spool is full ({free} bytes free)"
            return False
        if need:
            try:
                fd = os.open(self.reserve_path, os.O_CREAT | os.O_WRONLY, 0o600)
                try:
                    _allocate(fd, self.reserve_bytes)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(self.reserve_path)
                self.disk_full = f"the disk holding the spool is full ({exc.strerror or exc})"
                return False
        self.disk_full = None
        return True

    def _release_reserve(self, why: str) -> None:
        self.disk_full = f"the disk holding the spool is full ({why})"
        with contextlib.suppress(OSError):
            os.unlink(self.reserve_path)

    def _drain_write(self, work: Callable[[], None]) -> None:
        """A write the drain needs (delete, dead-letter): on a full disk, free the reserve
        and try once more."""
        try:
            self._guarded(work)
        except sqlite3.OperationalError as exc:
            if not is_disk_full(exc):
                raise
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("rollback")
            self._release_reserve(str(exc))
            self._guarded(work)

    def maintain(self) -> None:
        """Called between replay rounds: notice a disk that filled up, and take the reserve
        back once there is space again."""
        with self._lock:
            self._restore_reserve()

    def problem(self) -> str | None:
        """Why the spool cannot accept writes now (for readiness), or None."""
        if self.disk_full is not None:
            return self.disk_full
        return None

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._ledger is not None:
                self._ledger.close()

    # -- the spool ------------------------------------------------------------------------
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
            if not header_is_sound(self.path):
                # Overwritten under us: SQLite would keep appending to its WAL as if nothing
                # happened. Never acknowledge into that file.
                self._quarantine("not an SQLite database any more (file overwritten?)")
            if self.disk_full is not None and not self._restore_reserve():
                raise SpoolFull(
                    f"{self.disk_full}; the spool keeps its remaining space for delivering "
                    "what it holds",
                    retry_after=30,
                    code="spool_disk_full",
                )
            _depth, size, oldest = self._guarded(lambda: self._stats_locked(now))
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
            row = (owner, agent_id, method, path, json.dumps(dict(headers)), body)
            try:
                return self._guarded(lambda: self._insert(row, idempotency_key, now))
            except sqlite3.DatabaseError as exc:
                if is_disk_full(exc):
                    self.disk_full = f"the disk holding the spool is full ({exc})"
                    raise
                if not is_damage(exc):
                    raise
            # The file was damaged and has been replaced by a fresh one: store it there.
            return self._guarded(lambda: self._insert(row, idempotency_key, now))

    def _insert(self, row: tuple[Any, ...], key: str, now: float) -> int:
        conn = self._conn
        conn.execute("begin immediate")
        try:
            cursor = conn.execute(
                "insert into spool (owner, agent_id, method, path, headers, body, idempotency_key,"
                " size, created_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*row, key, len(row[5]), now),
            )
            seq = int(cursor.lastrowid or 0)
            assert self._ledger is not None
            # In the ledger before the commit: every acknowledged write can be named later.
            self._ledger.added(seq=seq, key=key, agent_id=row[1], owner=row[0], at=now)
            conn.execute("commit")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("rollback")
            if isinstance(exc, OSError) and is_disk_full(exc):
                raise sqlite3.OperationalError(f"database or disk is full ({exc})") from exc
            raise
        return seq

    def agents(self) -> list[str]:
        """Agents with writes waiting, in the order their oldest write arrived."""
        with self._lock:
            rows = self._guarded(
                lambda: self._conn.execute(
                    "select agent_id from spool group by agent_id order by min(seq)"
                ).fetchall()
            )
        return [str(r[0]) for r in rows]

    def head(self, agent_id: str) -> SpoolEntry | None:
        """The oldest entry for `agent_id`: replay is strictly in order per agent (an
        agent's writes all go to its one owner, whichever node that is at replay time)."""
        with self._lock:
            row = self._guarded(
                lambda: self._conn.execute(
                    f"select {ROW_COLUMNS} from spool where agent_id = ? order by seq limit 1",
                    (agent_id,),
                ).fetchone()
            )
        return None if row is None else _entry(row)

    def done(self, seq: int) -> None:
        with self._lock:
            self._drain_write(lambda: _run(self._conn, "delete from spool where seq = ?", seq))
            self._forget(seq)

    def _forget(self, seq: int) -> None:
        assert self._ledger is not None
        with contextlib.suppress(OSError):  # the ledger is for diagnosis; never block a drain
            if self._conn.execute("select 1 from spool limit 1").fetchone() is None:
                self._ledger.reset()
            else:
                self._ledger.removed(seq)

    def failed(self, seq: int, error: str) -> None:
        """A try that may work later (owner down again, 5xx): keep it, count it. The count
        is only for status: on a full disk it is not worth the space."""
        with self._lock:
            if self.disk_full is not None:
                return
            try:
                self._guarded(
                    lambda: self._conn.execute(
                        "update spool set attempts = attempts + 1, last_error = ? where seq = ?",
                        (error[:500], seq),
                    )
                )
            except sqlite3.OperationalError as exc:
                if not is_disk_full(exc):
                    raise
                self.disk_full = f"the disk holding the spool is full ({exc})"

    def dead_letter(
        self, entry: SpoolEntry, status: int, error: str, now: float | None = None
    ) -> None:
        """The owner refused the write for good: keep it aside, visible, never silently lost."""
        now = time.time() if now is None else now

        def move() -> None:
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

        with self._lock:
            self._drain_write(move)
            self._forget(entry.seq)

    def dead_letters(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._guarded(
                lambda: self._conn.execute(
                    "select seq, owner, agent_id, path, idempotency_key, created_at, failed_at,"
                    " status, error from dead_letters order by seq"
                ).fetchall()
            )
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

        def read() -> tuple[tuple[int, int, float | None], dict[Any, Any], int]:
            by_owner = dict(
                self._conn.execute("select owner, count(*) from spool group by owner").fetchall()
            )
            dead = int(self._conn.execute("select count(*) from dead_letters").fetchone()[0])
            return self._stats_locked(now), by_owner, dead

        with self._lock:
            (depth, size, oldest), by_owner, dead = self._guarded(read)
        return SpoolStats(
            depth=depth,
            bytes=size,
            oldest_age_s=round(oldest, 3) if oldest is not None else None,
            by_owner={str(k): int(v) for k, v in by_owner.items()},
            dead_letters=dead,
        )


def _run(conn: sqlite3.Connection, sql: str, *params: object) -> None:
    conn.execute(sql, params)


def _allocate(fd: int, size: int) -> None:
    """Really take `size` bytes of disk (a sparse file would take none)."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
    block = b"\0" * (1024 * 1024)
    written = 0
    while written < size:
        written += os.write(fd, block[: min(len(block), size - written)])
