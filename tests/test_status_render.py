"""How `status` reads for people: problems first, rows within 100 columns, colour only on a
terminal and never with NO_COLOR."""

from __future__ import annotations

import io
from typing import Any

import pytest

from cli.render import render_status, use_colour


def _node(node_id: str, state: str = "alive", agents: int = 2) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "state": state,
        "url": f"http://10.0.0.{len(node_id)}:3860",
        "joined": True,
        "coordinator": node_id == "node-a",
        "daemon": {"flavor": "ts", "version": "0.145.7", "healthy": True},
        "last_seen_age_s": 0.4,
        "agents": [
            {"id": f"agent-{node_id}-{i}", "read_policy": "group", "policy_group": "ops"}
            for i in range(agents)
        ],
    }


def _status(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "view": {"source": "registry"},
        "answered_by": "node-a",
        "ttl_s": 5.0,
        "nodes": nodes,
        "routes": [],
        "collisions": [],
        "coordinators": ["http://10.0.0.6:3860"],
    }


def test_rows_fit_100_columns_and_say_what_was_left_out() -> None:
    """A node with many agents keeps its row within 100 columns; the cut says how many
    agents are not shown (`--json` has them all)."""
    text = render_status(_status([_node("node-a", agents=12), _node("node-b")]))
    assert max(len(line) for line in text.splitlines()) <= 100, text
    row = next(line for line in text.splitlines() if line.startswith("node-a"))
    assert row.rstrip().split()[-1].startswith("+")


def test_problems_come_before_the_node_rows() -> None:
    text = render_status(_status([_node("node-a"), _node("node-b", state="down")]))
    lines = text.splitlines()
    problems = next(i for i, line in enumerate(lines) if line.startswith("Problems"))
    table = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
    assert problems < table and "node node-b is down" in lines[problems + 1]


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_colour(Terminal()) and not use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Terminal())
    body = _status([_node("node-a"), _node("node-b", state="down")])
    assert "\x1b[" in render_status(body, colour=True)
    assert "\x1b[" not in render_status(body)
    # Colour codes do not shift the columns.
    plain = [line for line in render_status(body).splitlines() if line.startswith("node-")]
    assert len({line.index("10.0.0") for line in plain}) == 1
