"""Operator commands as a user runs them (real `python -m cli` processes against real
sidecars): `status --watch`, `explain`, `join --wait`, exit codes, and help everywhere."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import sys

import click
from click.testing import CliRunner

from cli.main import cli
from signet_cluster.clock import ManualClock

from .cluster_helpers import Cluster, Node, free_port

ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]
BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]
CAROL = [{"name": "carol", "memory": {"read_policy": {"type": "group", "group": "ops"}}}]


async def run_cli(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


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


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((prefix + name, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, prefix + name + " "))
    return found


def test_every_command_has_help() -> None:
    """Every command (and subcommand) has a help text, and `--help` on it exits 0 and shows it."""
    runner = CliRunner()
    commands = _commands(cli)
    assert {"status", "join", "remove", "explain", "serve"} <= {name for name, _ in commands}
    for name, command in commands:
        assert (command.help or "").strip(), f"{name} has no help text"
        result = runner.invoke(cli, [*name.split(), "--help"], env={**os.environ})
        assert result.exit_code == 0, (name, result.output)
        first = (command.help or "").strip().splitlines()[0][:30]
        assert first in " ".join(result.output.split()), name
