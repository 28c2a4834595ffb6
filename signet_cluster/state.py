"""The sidecar's own state DB (sqlite-utils): node id, joined peers, coordinators, removals,
adoptions and agent claims.

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
from typing import TypeVar

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from signet_cluster.admin import AdminState, Adoption, Claim, NodeDecision, merge

T = TypeVar("T")

migrations = Migrations("signet-cluster-state")


@migrations()
def m001_initial(db: Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    # Coordinator side: operator decisions (see signet_cluster.admin), newest per key wins.
    db.table("admin_nodes").create(
        {"node_id": str, "url": str, "state": str, "at": float}, pk="node_id"
    )
    db.table("admin_adoptions").create(
        {"agent_id": str, "node_id": str, "at": float}, pk="agent_id"
    )
    # Member side: coordinators this node was told about (join) or learned from replies.
    db.table("coordinators").create({"url": str, "added_at": float}, pk="url")


@migrations()
def m002_claims(db: Database) -> None:
    # Coordinator side: when each node was first seen claiming each agent (the owner is the
    # earliest; signet_cluster.registry). `since` NULL records a release.
    db.table("agent_claims").create(
        {"agent_id": str, "node_id": str, "since": float, "at": float},
        pk=("agent_id", "node_id"),
    )


def _admin_state(db: Database) -> AdminState:
    nodes = tuple(
        NodeDecision(node_id=r["node_id"], url=r["url"], state=r["state"], at=r["at"])
        for r in db.query("select * from admin_nodes order by node_id")
    )
    adoptions = tuple(
        Adoption(agent_id=r["agent_id"], node_id=r["node_id"], at=r["at"])
        for r in db.query("select * from admin_adoptions order by agent_id")
    )
    claims = tuple(
        Claim(agent_id=r["agent_id"], node_id=r["node_id"], since=r["since"], at=r["at"])
        for r in db.query("select * from agent_claims order by agent_id, node_id")
    )
    return AdminState(nodes=nodes, adoptions=adoptions, claims=claims)


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
    async def node_id(self, configured: str | None, new: str | None = None) -> str:
        """The node's stable id: the configured one, else the stored one, else `new` (kept
        from then on), else a random one."""

        def _get(db: Database) -> str:
            rows = list(db.query("select value from meta where key = 'node_id'"))
            if configured:
                if not rows or rows[0]["value"] != configured:
                    db.table("meta").upsert({"key": "node_id", "value": configured}, pk="key")
                return configured
            if rows:
                return str(rows[0]["value"])
            new_id = new or "node-" + uuid.uuid4().hex[:12]
            db.table("meta").insert({"key": "node_id", "value": new_id}, pk="key")
            return new_id

        return await self._run(_get)

    async def meta(self, key: str) -> str | None:
        rows = await self._run(
            lambda db: list(db.query("select value from meta where key = ?", [key]))
        )
        return str(rows[0]["value"]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(lambda db: db.table("meta").upsert({"key": key, "value": value}, pk="key"))

    # -- coordinator side ----------------------------------------------------------------
    async def admin_state(self) -> AdminState:
        def _read(db: Database) -> AdminState:
            return _admin_state(db)

        return await self._run(_read)

    async def merge_admin(self, incoming: AdminState) -> tuple[AdminState, bool]:
        """Merge `incoming` (last writer wins); returns the new state and whether it changed."""

        def _merge(db: Database) -> tuple[AdminState, bool]:
            with db.atomic():
                current = _admin_state(db)
                merged = merge(current, incoming)
                if merged == current:
                    return current, False
                for node in merged.nodes:
                    db.table("admin_nodes").upsert(
                        {
                            "node_id": node.node_id,
                            "url": node.url,
                            "state": node.state,
                            "at": node.at,
                        },
                        pk="node_id",
                    )
                for adoption in merged.adoptions:
                    db.table("admin_adoptions").upsert(
                        {
                            "agent_id": adoption.agent_id,
                            "node_id": adoption.node_id,
                            "at": adoption.at,
                        },
                        pk="agent_id",
                    )
                previous = set(current.claims)
                for claim in merged.claims:
                    if claim in previous:
                        continue
                    db.table("agent_claims").upsert(
                        {
                            "agent_id": claim.agent_id,
                            "node_id": claim.node_id,
                            "since": claim.since,
                            "at": claim.at,
                        },
                        pk=("agent_id", "node_id"),
                    )
            return merged, True

        return await self._run(_merge)

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
