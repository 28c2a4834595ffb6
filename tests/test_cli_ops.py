"""Operator commands as a user runs them (real `python -m cli` processes against real
sidecars): `status --watch`, `explain`, `join --wait`, exit codes, and help everywhere."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from aiohttp import web
from click.testing import CliRunner

from cli.main import cli
from cli.render import render_explanation, render_status
from cli.status_watch import fit
from signet_cluster.clock import ManualClock

from .cluster_helpers import Cluster, Node, free_port
from .etcd_helpers import EtcdServer, etcd  # noqa: F401  (fixture)
from .test_cli import run_cli

ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]
BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]
CAROL = [{"name": "carol", "memory": {"read_policy": {"type": "group", "group": "ops"}}}]


async def three(cluster: Cluster, clock: ManualClock | None = None) -> tuple[Node, Node, Node]:
    a = await cluster.add("a", ALICE, coordinator=True, clock=clock)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    c = await cluster.add("c", CAROL, coordinators=(a.url,))
    await cluster.wait_states(a, {"a": "alive", "b": "alive", "c": "alive"})
    return a, b, c


async def test_explain_owner_readers_and_misses(cluster: Cluster) -> None:
    """`explain` names the owner, policy, route and readers (exit 0); its JSON has the
    documented keys; an unknown agent exits 1; with the owner down it says why reads miss
    and exits 3."""
    clock = ManualClock()
    a, b, c = await three(cluster, clock)
    code, out, err = await run_cli("--sidecar", b.url, "explain", "bob")
    assert code == 0, err
    assert out.startswith(f"bob: owned by b ({b.url}), alive")
    assert "policy:    shared" in out and f"route:     bob → b {b.url}" in out
    assert "Nothing makes a read miss right now." in out

    code, out, _ = await run_cli("--sidecar", a.url, "explain", "carol", "--json")
    assert code == 0
    body = json.loads(out)
    assert set(body) >= {
        "agent_id",
        "known",
        "ok",
        "owner",
        "owner_url",
        "owner_state",
        "owner_daemon",
        "last_heartbeat_age_s",
        "read_policy",
        "policy_group",
        "route",
        "collision",
        "readers",
        "reads",
        "misses",
        "notes",
    }
    assert body["owner"] == "c" and body["policy_group"] == "ops" and body["ok"] is True
    assert {(r["agent_id"], r["node_id"]) for r in body["readers"]} >= {
        ("carol", "c"),
        ("bob", "b"),
    }

    code, out, _ = await run_cli("--sidecar", a.url, "explain", "nobody")
    assert code == 1 and "not known to the cluster" in out

    await cluster.stop_sidecar(c)
    assert a.settings is not None
    clock.advance(a.settings.ttl + 0.5)
    await cluster.wait_states(a, {"c": "down", "a": "alive"})
    code, out, _ = await run_cli("--sidecar", a.url, "explain", "carol")
    assert code == 3
    assert "route:     none" in out and "node c is down" in out
    # bob (shared) reads carol's global memories from c: that is missing now.
    code, out, _ = await run_cli("--sidecar", a.url, "explain", "bob")
    assert code == 3 and "carol, default are missing from bob's reads" in out


async def test_status_watch_frames_json_lines_and_exit_code(cluster: Cluster) -> None:
    """`status --watch --count N` draws N frames (piped: separated, no escape codes) and
    exits with the last frame's code; with --json it prints one document per line; an
    unreachable sidecar is shown in the frame and ends with exit 4."""
    a, _b, _c = await three(cluster)
    code, out, err = await run_cli(
        "--sidecar", a.url, "status", "--watch", "--interval", "0.1", "--count", "3"
    )
    assert code == 0, err
    assert out.count("signet-cluster status  ") == 3 and "\x1b[" not in out
    assert out.count("Healthy: every node alive") == 3

    code, out, _ = await run_cli(
        "--sidecar", a.url, "status", "-w", "--json", "--interval", "0.1", "--count", "2"
    )
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    assert all(len(json.loads(line)["nodes"]) == 3 for line in lines)

    nowhere = f"http://127.0.0.1:{free_port()}"
    code, out, _ = await run_cli(
        "--sidecar", nowhere, "--timeout", "1", "status", "-w", "--interval", "0.1", "--count", "2"
    )
    assert code == 4
    assert out.count(f"error: cannot reach the sidecar at {nowhere}") == 2


async def test_status_watch_stops_cleanly_on_ctrl_c(cluster: Cluster) -> None:
    """Ctrl-C (SIGINT) during `status --watch` exits 0 with no traceback, leaving the last frame."""
    a = await cluster.add("a", ALICE, coordinator=True)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "--sidecar",
        a.url,
        "status",
        "--watch",
        "--interval",
        "0.2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    seen = b""
    while b"Healthy" not in seen:
        chunk = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert chunk, "watch ended before its first frame"
        seen += chunk
    proc.send_signal(signal.SIGINT)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    assert b"Traceback" not in err and b"Aborted" not in err


async def test_status_watch_redraws_in_place_on_a_terminal(cluster: Cluster) -> None:
    """On a terminal, the first frame clears the screen and later frames go back to the top
    and overwrite (no scrolling output); Ctrl-C still exits 0."""
    a = await cluster.add("a", ALICE, coordinator=True)
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "--sidecar",
        a.url,
        "status",
        "--watch",
        "--interval",
        "0.1",
        stdout=slave,
        stderr=asyncio.subprocess.DEVNULL,
    )
    os.close(slave)
    screen = b""
    try:
        while screen.count(b"Healthy") < 3:
            chunk = await asyncio.wait_for(asyncio.to_thread(os.read, master, 65536), 30)
            assert chunk, "the watch closed its terminal"
            screen += chunk
    finally:
        proc.send_signal(signal.SIGINT)
        await asyncio.wait_for(proc.wait(), 30)
        os.close(master)
    assert proc.returncode == 0
    assert screen.startswith(b"\x1b[2J\x1b[H") and screen.count(b"\x1b[2J") == 1
    assert screen.count(b"\x1b[H") >= 3 and b"\x1b[J" in screen


async def test_join_wait_shows_progress_until_the_node_is_alive(cluster: Cluster) -> None:
    """`join --wait` returns once the new node heartbeats, with progress on stderr and the
    result alone on stdout."""
    a = await cluster.add("a", ALICE, coordinator=True)
    b = await cluster.add("b", BOB)
    code, out, err = await run_cli("--sidecar", a.url, "join", "--wait", b.url)
    assert code == 0, err
    assert out.strip() == f"b ({b.url}) joined."
    assert "waiting for b to heartbeat to the coordinators" in err and "alive (" in err


def test_bad_global_options_are_usage_errors() -> None:
    """A --sidecar that is not an http(s) URL and a --timeout that is not positive are usage
    errors (exit 2, the option named), not "cannot reach" (4) or a silent no-timeout; a
    stray SIGNET_CLUSTER_SIDECAR does not break commands that never call a sidecar."""
    runner = CliRunner()
    result = runner.invoke(cli, ["--sidecar", "hostA:3860", "status"])
    assert result.exit_code == 2
    assert "--sidecar" in result.stderr and "did you mean http://hostA:3860" in result.stderr
    result = runner.invoke(cli, ["--sidecar", "http://127.0.0.1:1,ftp://x", "routes"])
    assert result.exit_code == 2 and "'ftp://x' is not an http(s) URL" in result.stderr
    for timeout in ("0", "-1"):
        result = runner.invoke(cli, ["--timeout", timeout, "status"])
        assert result.exit_code == 2 and "--timeout" in result.stderr
    result = runner.invoke(cli, ["check-config"], env={"SIGNET_CLUSTER_SIDECAR": "nonsense"})
    assert result.exit_code == 0, result.output


def test_watch_only_options_need_watch() -> None:
    """--interval and --count without --watch are refused (exit 2) instead of ignored."""
    runner = CliRunner()
    for extra in (["--count", "2"], ["--interval", "1"]):
        result = runner.invoke(cli, ["status", *extra])
        assert result.exit_code == 2 and "needs --watch" in result.stderr, extra


async def test_something_else_on_the_port_is_named(aiohttp_server: Any) -> None:
    """Pointed at a server that is not a sidecar (e.g. the daemon's port), the one-line error
    names the URL that answered and asks whether it is a sidecar (exit 1)."""
    app = web.Application()
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}"
    code, _out, err = await run_cli("--sidecar", url, "status")
    assert code == 1
    assert err.strip() == (
        f"Error: {url}/api/cluster/status answered HTTP 404: 404: Not Found; "
        "is --sidecar a signet-cluster sidecar?"
    )


def test_watch_frames_are_cut_to_the_terminal() -> None:
    """A frame taller than the terminal (wrapped lines counted) is cut with a note, so going
    back to the top overwrites the frame and nothing scrolls; a frame that fits is whole."""
    frame = "\n".join(f"line {i}" for i in range(30))
    assert fit(frame, os.terminal_size((80, 40))) == frame.split("\n")
    cut = fit(frame, os.terminal_size((80, 10)))
    assert len(cut) == 9 and cut[:8] == [f"line {i}" for i in range(8)]
    assert cut[-1].startswith("... 22 more line(s)")
    wide = "\n".join(["x" * 100] * 5)  # each line takes 2 rows at 80 columns
    assert len(fit(wide, os.terminal_size((80, 8)))) == 4  # 3 lines (6 rows) + the note


def test_status_shows_spooled_writes_and_dead_letters() -> None:
    """`status` names the nodes holding writes for an unreachable owner (with the oldest
    one's age) and writes an owner refused for good; with empty spools it says nothing."""
    node: dict[str, Any] = {"node_id": "n1", "state": "alive", "url": "u", "agents": []}
    body: dict[str, Any] = {"nodes": [node], "routes": [], "collisions": [], "coordinators": []}
    assert "Spooled" not in render_status(body, now=1000.0)
    node["spool"] = {"depth": 3, "bytes": 900, "oldest_at": 970.0, "dead_letters": 1}
    text = render_status(body, now=1000.0)
    assert "Spooled writes:\n  n1: 3 write(s) waiting for their owner, oldest 30s old; " in text
    assert "1 refused by their owner for good" in text


def test_explain_does_not_vouch_for_a_down_owners_daemon() -> None:
    """With the owner down, its daemon's last reported health is not shown as current."""
    text = render_explanation(
        {
            "agent_id": "carol",
            "known": True,
            "owner": "n2",
            "owner_url": "http://n2:3860",
            "owner_state": "down",
            "owner_daemon": {"flavor": "ts", "version": "0.145.7", "healthy": True},
            "last_heartbeat_age_s": 9.0,
        }
    )
    assert "daemon:    ts 0.145.7, health unknown (last report is stale)" in text


async def test_demo_refuses_bad_flavors_and_a_taken_port() -> None:
    """`demo --flavors` with an unknown flavor is a usage error (2); a first port another
    process listens on stops the demo before it starts anything (1), instead of probing and
    seeding whatever answers there."""
    code, _out, err = await run_cli("demo", "--flavors", "ts,python")
    assert code == 2 and "unknown flavor(s) python" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = await run_cli("demo", "--port", str(port), "--exit-when-ready")
    assert code == 1 and out == ""
    assert f"port(s) {port} already in use" in err


async def test_adopt_clear_with_the_etcd_backend(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """With the etcd backend the adopt answer names no owner: `adopt --clear` says the first
    claim decides again, not that the agent is unroutable (exit 0 both ways)."""
    settings = {
        "registry_backend": "etcd",
        "etcd_endpoints": (etcd.url,),
        "heartbeat_interval": 0.25,
        "peer_ttl": 2.0,
    }
    a = await cluster.add("a", BOB, **settings)
    code, out, err = await run_cli("--sidecar", a.url, "adopt", "bob", "a", "--yes")
    assert code == 0, err
    assert out.strip() == "bob: owned by a cluster-wide (claimed by a)."
    code, out, err = await run_cli("--sidecar", a.url, "adopt", "bob", "--clear", "--yes")
    assert code == 0, err
    assert out.strip() == "bob: override cleared; the first claim decides again."


def test_keyring_names_a_settings_file_it_cannot_read(tmp_path: Path) -> None:
    """`keyring list --config FILE` with a missing FILE says so, rather than asking which
    keyring; a readable file without `keyring_file` still asks (exit 1 both)."""
    runner = CliRunner()
    missing = tmp_path / "nope.toml"
    result = runner.invoke(cli, ["keyring", "list", "--config", str(missing)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: config file {missing} does not exist"
    present = tmp_path / "c.toml"
    present.write_text("port = 3861\n")
    result = runner.invoke(cli, ["keyring", "list", "--config", str(present)])
    assert result.exit_code == 1 and "which keyring?" in result.stderr


async def test_an_answer_that_is_not_a_status_is_not_a_healthy_cluster(
    aiohttp_server: Any,
) -> None:
    """A server answering 200 with some other JSON at the status path is an error (exit 1,
    one line), never an empty cluster reported `Healthy` (exit 0), nor a traceback, for
    `status`, `status --watch` and `explain`."""
    bodies = iter([{}, [], {}, {"ok": True}])

    async def not_a_status(_request: web.Request) -> web.Response:
        return web.json_response(next(bodies))

    app = web.Application()
    app.router.add_get("/api/cluster/status", not_a_status)
    server = await aiohttp_server(app)
    url = f"http://127.0.0.1:{server.port}"
    for args in (
        ["status"],
        ["status", "--json"],
        ["explain", "bob"],
    ):
        code, out, err = await run_cli("--sidecar", url, *args)
        assert code == 1, (args, out)
        assert err.strip() == (
            f"Error: {url}/api/cluster/status did not answer with a cluster status; "
            "is --sidecar a signet-cluster sidecar?"
        ), args
    code, out, _ = await run_cli("--sidecar", url, "status", "--watch", "--count", "1")
    assert code == 1 and "did not answer with a cluster status" in out
