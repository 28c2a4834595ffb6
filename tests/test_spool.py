"""The write spool: durable, ordered per owner, bounded by size and age, nothing dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from signet_cluster.spool import Spool, SpoolFull, ensure_idempotency_key


def add(spool: Spool, owner: str, text: str, now: float = 1000.0) -> int:
    return spool.add(
        owner=owner,
        agent_id="agent-" + owner,
        method="POST",
        path="/api/memory/remember",
        headers={"content-type": "application/json"},
        body=text.encode(),
        idempotency_key="k-" + text,
        now=now,
    )


def test_entries_survive_reopen_and_replay_in_order(tmp_path: Path) -> None:
    """What was added is on disk: a new Spool on the same file sees it, oldest first per owner."""
    spool = Spool(tmp_path / "spool.db", max_bytes=10_000, max_age=3600)
    for text in ("one", "two", "three"):
        add(spool, "n1", text)
    add(spool, "n2", "other")
    spool.close()
    again = Spool(tmp_path / "spool.db", max_bytes=10_000, max_age=3600)
    assert again.agents() == ["agent-n1", "agent-n2"]
    seen = []
    while (entry := again.head("agent-n1")) is not None:
        seen.append(entry.body.decode())
        again.done(entry.seq)
    assert seen == ["one", "two", "three"]
    assert again.stats(now=1000.0).depth == 1
    again.close()


def test_size_bound_refuses_new_writes_and_keeps_old_ones(tmp_path: Path) -> None:
    """Past max_bytes a new write is refused with a retry hint; what is stored stays."""
    spool = Spool(tmp_path / "spool.db", max_bytes=10, max_age=3600)
    add(spool, "n1", "12345")
    with pytest.raises(SpoolFull) as info:
        add(spool, "n1", "1234567")
    assert info.value.retry_after > 0 and "full" in info.value.reason
    assert spool.stats(now=1000.0).depth == 1
    spool.close()


def test_age_bound_refuses_new_writes(tmp_path: Path) -> None:
    """When the oldest entry is older than max_age, admission stops (no silent drop)."""
    spool = Spool(tmp_path / "spool.db", max_bytes=10_000, max_age=60)
    add(spool, "n1", "old", now=1000.0)
    with pytest.raises(SpoolFull, match="too long"):
        add(spool, "n1", "new", now=1061.0)
    assert spool.stats(now=1061.0).oldest_age_s == 61.0
    spool.close()


def test_dead_letters_are_kept_and_counted(tmp_path: Path) -> None:
    """A write the owner refuses for good leaves the queue but stays visible."""
    spool = Spool(tmp_path / "spool.db", max_bytes=10_000, max_age=3600)
    add(spool, "n1", "bad")
    add(spool, "n1", "good")
    head = spool.head("agent-n1")
    assert head is not None
    spool.dead_letter(head, 400, "content is required")
    assert spool.head("agent-n1").body == b"good"  # type: ignore[union-attr]
    stats = spool.stats()
    assert (stats.depth, stats.dead_letters) == (1, 1)
    assert spool.dead_letters()[0]["error"] == "content is required"
    spool.close()


def test_idempotency_key_is_kept_or_added() -> None:
    """A client's key (top level or in metadata) is used as is; otherwise one is added."""
    assert ensure_idempotency_key({"idempotencyKey": "mine"}, "n1") == "mine"
    assert ensure_idempotency_key({"metadata": {"idempotency_key": "meta"}}, "n1") == "meta"
    body: dict[str, object] = {"content": "x"}
    key = ensure_idempotency_key(body, "n1")
    assert key.startswith("signet-cluster:n1:") and body["idempotencyKey"] == key


def test_the_spool_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """The spool holds memory contents and clients' Authorization headers: the file and
    SQLite's WAL beside it are created owner-only (0600), and an existing file with looser
    permissions is tightened when the spool opens it."""
    loose = tmp_path / "old" / "spool.db"
    loose.parent.mkdir()
    loose.touch(mode=0o644)
    loose.chmod(0o644)
    for path in (tmp_path / "new" / "spool.db", loose):
        spool = Spool(path, max_bytes=10_000, max_age=3600)
        add(spool, "n1", "secret")
        for made in (path, path.with_name(path.name + "-wal")):
            assert made.stat().st_mode & 0o777 == 0o600, made
        spool.close()
