"""A damaged write spool: moved aside, what is readable recovered, and a report naming
every acknowledged write that was in it.

The spool keeps a small ledger beside its SQLite file (`spool.db.ledger`, one JSON line
per acknowledged write and one per write that left the spool). SQLite cannot say what a
file overwritten with garbage held; the ledger can. A damaged spool is renamed to
`spool.db.damaged-<UTC time>` (its -wal and -shm files with it), every row still readable
from it is returned for the fresh spool, and `spool.db.damaged-<UTC time>.json` lists each
write the ledger says was waiting, with `recovered` true or false.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROW_COLUMNS = (
    "seq, owner, agent_id, method, path, headers, body, idempotency_key, created_at, attempts"
)
DB_MAGIC = b"SQLite format 3\x00"

# SQLite's words for a file that is not (or no longer) a sound database.
_DAMAGE_CODES = {
    getattr(sqlite3, "SQLITE_CORRUPT", 11),
    getattr(sqlite3, "SQLITE_NOTADB", 26),
}
_DAMAGE_WORDS = ("malformed", "not a database", "disk image")


def is_damage(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _DAMAGE_CODES:
        return True
    text = str(exc).lower()
    return any(word in text for word in _DAMAGE_WORDS)


def header_is_sound(path: Path) -> bool:
    """The file starts as an SQLite database (an empty file is a new one)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(DB_MAGIC))
    except FileNotFoundError:
        return True
    return head in (b"", DB_MAGIC)


class Ledger:
    """Append-only JSON lines: `{"op": "add", seq, key, agent_id, owner, at}` before a
    write is acknowledged (fsync'd), `{"op": "done", seq}` when it left the spool."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)

    def close(self) -> None:
        os.close(self._fd)

    def added(self, *, seq: int, key: str, agent_id: str, owner: str, at: float) -> None:
        line = {"op": "add", "seq": seq, "key": key, "agent_id": agent_id, "owner": owner}
        self._append({**line, "at": at}, sync=True)

    def removed(self, seq: int) -> None:
        # Not synced: a lost "done" line only lists a delivered write as possibly waiting,
        # and a replay of it is deduplicated by its key.
        self._append({"op": "done", "seq": seq}, sync=False)

    def reset(self) -> None:
        """The spool is empty: nothing the ledger says is needed any more."""
        os.ftruncate(self._fd, 0)

    def _append(self, line: dict[str, Any], *, sync: bool) -> None:
        os.write(self._fd, (json.dumps(line) + "\n").encode())
        if sync:
            os.fsync(self._fd)


def waiting(ledger_path: Path) -> dict[int, dict[str, Any]]:
    """The writes the ledger says were acknowledged and had not left the spool."""
    entries: dict[int, dict[str, Any]] = {}
    with contextlib.suppress(FileNotFoundError), open(ledger_path, encoding="utf-8") as f:
        for raw in f:
            try:
                line = json.loads(raw)
                seq = int(line["seq"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash
            if line.get("op") == "add":
                entries[seq] = line
            elif line.get("op") == "done":
                entries.pop(seq, None)
    return entries


def move_aside(path: Path, now: float | None = None) -> Path:
    """Rename the database and its -wal/-shm files; returns the new database path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    for suffix in ("-wal", "-shm"):
        side = Path(str(path) + suffix)
        if side.exists():
            os.replace(side, Path(str(target) + suffix))
    os.replace(path, target)
    return target


def _read_rows(conn: sqlite3.Connection, seqs: list[int]) -> Iterator[tuple[Any, ...]]:
    """Every row readable: all at once if the file allows, else one by one."""
    try:
        yield from conn.execute(f"select {ROW_COLUMNS} from spool order by seq").fetchall()
        return
    except sqlite3.DatabaseError:
        pass
    for seq in seqs:
        try:
            row = conn.execute(f"select {ROW_COLUMNS} from spool where seq = ?", (seq,)).fetchone()
        except sqlite3.DatabaseError:
            continue
        if row is not None:
            yield row


def salvage(damaged: Path, expected: list[int]) -> list[tuple[Any, ...]]:
    """The spool rows still readable in `damaged` (the ledger's seqs tried one by one)."""
    try:
        conn = sqlite3.connect(str(damaged))
    except sqlite3.Error:
        return []
    rows: list[tuple[Any, ...]] = []
    try:
        for row in _read_rows(conn, expected):
            try:
                json.loads(row[5])
                rows.append((*row[:6], bytes(row[6]), *row[7:]))
            except (ValueError, TypeError):
                continue  # a row too damaged to replay faithfully
    except sqlite3.DatabaseError:
        pass
    finally:
        conn.close()
    return rows


def write_report(
    damaged: Path,
    *,
    error: str,
    ledger: dict[int, dict[str, Any]],
    recovered: list[tuple[Any, ...]],
) -> tuple[Path, dict[str, Any]]:
    """The operator's list of what was in the damaged file; returns its path and a summary."""
    found = {int(r[0]): r for r in recovered}
    writes: list[dict[str, Any]] = []
    for seq in sorted(set(ledger) | set(found)):
        known = ledger.get(seq, {})
        row = found.get(seq)
        writes.append(
            {
                "seq": seq,
                "agent_id": row[2] if row else known.get("agent_id"),
                "owner": row[1] if row else known.get("owner"),
                "idempotency_key": row[7] if row else known.get("key"),
                "acknowledged_at": row[8] if row else known.get("at"),
                "recovered": row is not None,
            }
        )
    lost = [w for w in writes if not w["recovered"]]
    report = {
        "damaged_file": str(damaged),
        "error": error,
        "moved_at": time.time(),
        "recovered": len(writes) - len(lost),
        "unrecovered": len(lost),
        "writes": writes,
        "note": "recovered writes were copied into the fresh spool and will be replayed "
        "(their idempotency keys make a replay of one already delivered harmless); "
        "unrecovered ones were acknowledged (202) but cannot be read: ask their clients to "
        "send them again with the same idempotency key",
    }
    path = Path(str(damaged) + ".json")
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.chmod(path, 0o600)
    summary = {
        "damaged_file": str(damaged),
        "report": str(path),
        "error": error,
        "recovered": report["recovered"],
        "unrecovered": report["unrecovered"],
        "unrecovered_keys": [w["idempotency_key"] for w in lost][:50],
    }
    return path, summary
