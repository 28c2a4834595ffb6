"""Damaged or unusable state: a spool file that is not a sound database is found at start
and before a write, moved aside, replaced by a fresh one, and reported write by write with
what could be recovered; a state directory that cannot be written stops `serve` with one
clear line instead of a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.memory.handoff import SPOOL
from signet_cluster.spool import Spool

from .cluster_helpers import Cluster, free_port, wait_for
from .routing_helpers import client
from .test_spool_handoff import contents, owner_down, remember_bob, spool_depth


def add(spool: Spool, text: str) -> int:
    return spool.add(
        owner="n1",
        agent_id="bob",
        method="POST",
        path="/api/memory/remember",
        headers={"content-type": "application/json"},
        body=json.dumps({"content": text}).encode(),
        idempotency_key="key-" + text,
    )


def overwrite_start(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(os.urandom(4096))


def reports(state: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(state.glob("spool.db.damaged-*.json"))]


def test_an_overwritten_spool_is_moved_aside_and_its_writes_named(tmp_path: Path) -> None:
    """A spool file overwritten with garbage does not stop the start: it is renamed, a fresh
    spool opens, and the report names each acknowledged write (seq, key) as unrecovered."""
    spool = Spool(tmp_path / "spool.db", max_bytes=1 << 20, max_age=3600)
    for text in ("one", "two", "three"):
        add(spool, text)
    spool.close()
    (tmp_path / "spool.db").write_bytes(os.urandom(8192))
    for side in ("spool.db-wal", "spool.db-shm"):
        (tmp_path / side).unlink(missing_ok=True)

    again = Spool(tmp_path / "spool.db", max_bytes=1 << 20, max_age=3600)
    assert again.stats().depth == 0
    assert again.damage is not None and again.damage["unrecovered"] == 3
    (report,) = reports(tmp_path)
    writes = report["writes"]
    assert isinstance(writes, list)
    assert [(w["seq"], w["idempotency_key"], w["recovered"]) for w in writes] == [
        (1, "key-one", False),
        (2, "key-two", False),
        (3, "key-three", False),
    ]
    add(again, "four")  # the fresh spool takes writes
    assert again.stats().depth == 1
    again.close()


def test_what_is_readable_is_recovered(tmp_path: Path) -> None:
    """A spool whose index is damaged (quick_check fails) but whose rows still read: every
    row is copied into the fresh spool, in order, and the report says so."""
    spool = Spool(tmp_path / "spool.db", max_bytes=1 << 20, max_age=3600)
    for text in ("one", "two"):
        add(spool, text)
    spool.close()
    with sqlite3.connect(tmp_path / "spool.db") as conn:
        conn.execute("pragma wal_checkpoint(truncate)")
        root = conn.execute("select rootpage from sqlite_master where name = 'spool_agent'")
        page = root.fetchone()[0]
        size = conn.execute("pragma page_size").fetchone()[0]
    with open(tmp_path / "spool.db", "r+b") as f:
        f.seek((page - 1) * size)
        f.write(b"\xff" * size)

    again = Spool(tmp_path / "spool.db", max_bytes=1 << 20, max_age=3600)
    assert again.damage is not None and again.damage["recovered"] == 2, again.damage
    entry = again.head("bob")
    assert entry is not None and entry.idempotency_key == "key-one"
    again.done(entry.seq)
    nxt = again.head("bob")
    assert nxt is not None and nxt.idempotency_key == "key-two"
    again.close()


async def test_a_spool_overwritten_while_running_stops_taking_writes_into_it(
    cluster: Cluster,
) -> None:
    """The spool file is overwritten under a running sidecar: the next write is not
    acknowledged into it — the file is moved aside first, the write lands in a fresh spool
    and is delivered later; status names the damaged file and the writes it held, and the
    sidecar starts again afterwards."""
    a, b, clock = await owner_down(cluster)
    for i in range(2):
        code, _, _ = await remember_bob(cluster, a, f"Before the damage {i}")
        assert code == 202
    overwrite_start(a.state_dir / "spool.db")
    code, body, _ = await remember_bob(cluster, a, "After the damage")
    assert code == 202, body
    code, status, _ = await client(cluster, "GET", a.url + "/api/cluster/status?local=1")
    damaged = status["local"]["spool"]["damaged"]
    assert damaged is not None and damaged["unrecovered"] + damaged["recovered"] == 2, damaged
    assert await asyncio.to_thread(os.path.exists, damaged["report"])
    code, text, _ = await client(cluster, "GET", a.url + "/metrics")
    assert "signet_cluster_spool_damaged_files_total 1.0" in text

    await cluster.stop_sidecar(a)
    await cluster.start_sidecar(a, clock=clock)  # starts: no "file is not a database"
    await cluster.start_sidecar(b)

    async def delivered() -> bool:
        return "After the damage" in contents(b, "bob") and await spool_depth(cluster, a) == 0

    await wait_for(delivered, timeout=20, what="the write taken after the damage")
    assert a.app[SPOOL].damage is None  # a clean start: nothing new to report


# -- a state directory that cannot be written -------------------------------------------------


def unwritable_dir(tmp_path: Path) -> Path:
    """A directory this process cannot write: read-only mount as root, else mode 0555."""
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() == 0:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(state)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a read-only filesystem here: {done.stderr.strip()}")
    else:
        state.chmod(0o555)
    return state


def test_a_read_only_state_directory_is_one_clear_line(tmp_path: Path) -> None:
    """`serve` with a state directory it cannot write exits non-zero with one line naming
    the directory and the reason, and no traceback."""
    state = unwritable_dir(tmp_path)
    try:
        env = {
            **os.environ,
            "SIGNET_CLUSTER_STATE_DIR": str(state / "sub"),
            "SIGNET_CLUSTER_WORKSPACE": str(tmp_path / "workspace"),
            "SIGNET_CLUSTER_PORT": str(free_port()),
            "SIGNET_CLUSTER_DAEMON_URL": "http://127.0.0.1:1",
            "SIGNET_CLUSTER_LOG_FORMAT": "json",
        }
        done = subprocess.run(
            [sys.executable, "-m", "cli", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(state)], check=False)
    assert done.returncode != 0
    err = done.stderr.strip()
    assert "Traceback" not in err and "Unclosed" not in err, err
    assert err.count("\n") == 0, err
    assert str(state / "sub") in err and "state_dir" in err, err


def test_status_lists_exhaustion_and_damage_as_problems() -> None:
    """`status` (exit 3, the Problems list) names a full connection table, a full spool
    disk and a damaged spool file of the answering sidecar."""
    from signet_cluster.explain import cluster_problems

    status = {
        "node_id": "a",
        "nodes": [],
        "local": {
            "connections": {"exhausted": "connection limit reached: 20 open"},
            "spool": {
                "disk_full": "the disk holding the spool is full (0 bytes free)",
                "damaged": {"unrecovered": 2, "report": "/x/spool.db.damaged-1.json"},
            },
        },
    }
    problems = cluster_problems(status)
    assert any("connection limit reached" in p for p in problems)
    assert any("disk holding the spool is full" in p for p in problems)
    assert any("2 acknowledged writes could not be recovered" in p for p in problems)
    assert cluster_problems({"nodes": [], "local": {"spool": {"disk_full": None}}}) == []
