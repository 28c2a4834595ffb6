"""Day-2 logs and refusals: what an operator must act on is a warning, said at once, and
refused heartbeats are a problem in status."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from signet_cluster import logconfig
from signet_cluster.security.keyring import Keyring, new_key
from signet_cluster.security.signing import Signer

from .cluster_helpers import Cluster, wait_for


async def test_a_daemon_unreachable_at_start_is_a_warning_at_once(cluster: Cluster) -> None:
    """The first reading of the daemon is logged even when it is down (nothing was logged
    before: the state had not "changed"), as a warning naming the daemon URL."""
    with capture_logs() as logs:
        await cluster.add("a", [], start_daemon=False)
    states = [e for e in logs if e["event"] == "daemon_state"]
    assert states and states[0]["log_level"] == "warning" and states[0]["healthy"] is False
    assert states[0]["url"].startswith("http://127.0.0.1:")


async def test_a_dying_daemon_is_a_warning(cluster: Cluster) -> None:
    a = await cluster.add("a", [])
    with capture_logs() as logs:
        await cluster.stop_daemon(a)

        async def warned() -> bool:
            return any(e["event"] == "daemon_state" and e["log_level"] == "warning" for e in logs)

        await wait_for(warned, what="a daemon_state warning")


async def test_heartbeats_refused_for_a_wrong_key_are_a_problem_in_status(
    cluster: Cluster,
) -> None:
    """A host signing with another key is refused every beat; the coordinator logs that
    once, and status lists it as a problem (exit 3 material) with the count."""
    a = await cluster.add("a", [], coordinator=True)
    other = new_key("another-cluster-secret-that-is-long-enough-0123456789")
    wrong = Signer(lambda: Keyring(keys=(other,), primary=other.id), "rogue", wall=time.time)
    body = json.dumps({"node_id": "rogue"}).encode()
    with capture_logs() as logs:
        for _ in range(3):
            code, _, _ = await cluster.request(
                "POST",
                a.url + "/api/cluster/heartbeat",
                data=body,
                headers={"Content-Type": "application/json"},
                signer=wrong,
            )
            assert code == 401
    assert [e["event"] for e in logs].count("request_refused") == 1
    status = await cluster.status(a)
    (refusal,) = status["refused_heartbeats"]
    assert refusal["sender"] == "rogue" and refusal["count"] == 3
    assert any("heartbeats from rogue refused" in p for p in status["problems"])


def test_journald_gets_a_priority_prefix_per_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stderr connected to journald (JOURNAL_STREAM names its device:inode), every
    line starts with its syslog priority, so `journalctl -p warning` finds warnings."""
    target = tmp_path / "journal"
    with target.open("w") as stream:
        stat = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
        monkeypatch.setattr(sys, "stderr", stream)
        assert logconfig.stderr_is_journal()
        logconfig.configure_logging("info", "json")
        try:
            logging.getLogger("signet_cluster.test").warning("disk_almost_full")
            logging.getLogger("signet_cluster.test").info("fine")
        finally:
            logging.getLogger().handlers[:] = []
    lines = target.read_text().splitlines()
    assert lines[0].startswith("<4>{") and "disk_almost_full" in lines[0]
    assert lines[1].startswith("<6>{")
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not logconfig.stderr_is_journal()


async def test_sighup_says_what_it_reloaded(cluster: Cluster) -> None:
    """SIGHUP logs what is loaded after it (key ids, certificate files), changed or not."""
    from sidecar.runner import reload_on_sighup

    a = await cluster.add("a", [])
    with capture_logs() as logs:
        reload_on_sighup(a.app)
    (event,) = [e for e in logs if e["event"] == "sighup_reloaded"]
    assert event["keyring"]["primary"] == cluster.keyring.primary
    assert event["reloaded"] == ["keyring", "tls"] and "restart" in event["not_reloaded"]
