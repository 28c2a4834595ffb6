"""The sidecar's own state DB (sqlite-utils): node id, joined peers, coordinators, removals.

All access goes through one dedicated thread, so the event loop never blocks on SQLite and
the connection is only ever used from the thread that opened it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

T = TypeVar("T")

migrations = Migrations("signet-cluster-state")


@migrations()
def m001_initial(db: Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("joined_peers").create({"node_id": str, "url": str, "joined_at": float}, pk="node_id")
    db.table("coordinators").create({"url": str, "added_at": float}, pk="url")
    db.table("removed_nodes").create({"node_id": str, "removed_at": float}, pk="node_id")


class StateStore:
    """Async facade over the state DB; every method runs on the store's own thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-db")
        self._db: Database | None = None

    async def _run(self, fn: Callable[[Database], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[Database], T]) -> T:
        if self._db is None:
            raise RuntimeError("state store is not open")
        return fn(self._db)

    async def open(self) -> None:
        def _open() -> None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path))
            db = Database(conn)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            migrations.apply(db)
            self._db = db

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, _open)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)

    # -- identity ------------------------------------------------------------------------
    async def node_id(self, configured: str | None) -> str:
        """The node's stable id: the configured one, else the stored one, else a new one."""

        def _get(db: Database) -> str:
            rows = list(db.query("select value from meta where key = 'node_id'"))
            if configured:
                if not rows or rows[0]["value"] != configured:
                    db.table("meta").upsert({"key": "node_id", "value": configured}, pk="key")
                return configured
            if rows:
                return str(rows[0]["value"])
            new_id = "node-" + uuid.uuid4().hex[:12]
            db.table("meta").insert({"key": "node_id", "value": new_id}, pk="key")
            return new_id

        return await self._run(_get)

    # -- coordinator side ----------------------------------------------------------------
    async def joined_peers(self) -> list[dict[str, Any]]:
        return await self._run(
            lambda db: list(db.query("select * from joined_peers order by node_id"))
        )

    async def add_joined(self, node_id: str, url: str) -> None:
        def _add(db: Database) -> None:
            with db.atomic():
                db.table("joined_peers").upsert(
                    {"node_id": node_id, "url": url, "joined_at": time.time()}, pk="node_id"
                )
                db.execute("delete from removed_nodes where node_id = ?", [node_id])

        await self._run(_add)

    async def remove_node(self, node_id: str) -> None:
        def _remove(db: Database) -> None:
            with db.atomic():
                db.execute("delete from joined_peers where node_id = ?", [node_id])
                db.table("removed_nodes").upsert(
                    {"node_id": node_id, "removed_at": time.time()}, pk="node_id"
                )

        await self._run(_remove)

    async def removed_nodes(self) -> set[str]:
        rows = await self._run(lambda db: list(db.query("select node_id from removed_nodes")))
        return {str(r["node_id"]) for r in rows}

    async def forget_removal(self, node_id: str) -> None:
        await self._run(
            lambda db: db.execute("delete from removed_nodes where node_id = ?", [node_id])
        )

    # -- member side ---------------------------------------------------------------------
    async def coordinators(self) -> list[str]:
        rows = await self._run(
            lambda db: list(db.query("select url from coordinators order by url"))
        )
        return [str(r["url"]) for r in rows]

    async def update_coordinators(self, add: tuple[str, ...], remove: tuple[str, ...]) -> list[str]:
        def _update(db: Database) -> list[str]:
            with db.atomic():
                for url in add:
                    db.table("coordinators").upsert({"url": url, "added_at": time.time()}, pk="url")
                for url in remove:
                    db.execute("delete from coordinators where url = ?", [url])
            return [str(r["url"]) for r in db.query("select url from coordinators order by url")]

        return await self._run(_update)
