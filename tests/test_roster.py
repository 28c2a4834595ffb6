"""Reading a workspace roster exactly as the daemon's normalizeAgentRosterEntry does."""

from __future__ import annotations

from pathlib import Path

import pytest

from signet_cluster.daemon.roster import (
    RosterEntry,
    discover_agent_dirs,
    normalize_roster_entry,
    read_yaml_roster,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"name": "a", "memory": {"read_policy": "shared"}}, ("shared", None)),
        ({"name": "a", "memory": {"read_policy": "isolated"}}, ("isolated", None)),
        (
            {"name": "a", "memory": {"read_policy": {"type": "group", "group": "ops"}}},
            ("group", "ops"),
        ),
        ({"name": "a", "read_policy": "shared"}, ("shared", None)),
        ({"name": "a", "read_policy": "group", "policy_group": "ops"}, ("group", "ops")),
        (
            {"name": "a", "memory": {"read_policy": "group", "policy_group": "ops"}},
            ("group", "ops"),
        ),
        # the nested form wins over the flat one
        (
            {"name": "a", "memory": {"read_policy": "isolated"}, "read_policy": "shared"},
            ("isolated", None),
        ),
        # a null nested value falls through to the flat key (`??`)
        ({"name": "a", "memory": {"read_policy": None}, "read_policy": "shared"}, ("shared", None)),
        # fail closed: group without a name, unknown values, bad shapes
        ({"name": "a", "read_policy": "group"}, ("isolated", None)),
        ({"name": "a", "memory": {"read_policy": {"type": "group"}}}, ("isolated", None)),
        (
            {"name": "a", "memory": {"read_policy": {"type": "team", "group": "x"}}},
            ("isolated", None),
        ),
        ({"name": "a", "read_policy": "SHARED"}, ("isolated", None)),
        ({"name": "a", "memory": "shared"}, ("isolated", None)),
        ({"name": "a"}, ("isolated", None)),
    ],
)
def test_normalisation(raw: object, expected: tuple[str, str | None]) -> None:
    """Each roster form normalises to the policy the daemon would store."""
    entry = normalize_roster_entry(raw)
    assert entry == RosterEntry(name="a", read_policy=expected[0], policy_group=expected[1])


@pytest.mark.parametrize("raw", [None, "alice", ["alice"], {"name": ""}, {"name": 3}, {}])
def test_entries_without_a_usable_name_are_dropped(raw: object) -> None:
    """Entries that are not mappings with a non-empty string name normalise to None."""
    assert normalize_roster_entry(raw) is None


def test_read_yaml_roster_prefers_agent_yaml(tmp_path: Path) -> None:
    """agent.yaml wins over AGENT.yaml; entries keep file order; bad entries are skipped."""
    (tmp_path / "agent.yaml").write_text(
        "agents:\n  roster:\n"
        "    - name: zed\n      memory: { read_policy: shared }\n"
        "    - bogus\n"
        "    - name: amy\n",
        encoding="utf-8",
    )
    if (tmp_path / "AGENT.yaml").exists():
        pytest.skip("case-insensitive filesystem: both names are one file")
    (tmp_path / "AGENT.yaml").write_text("agents: {roster: [{name: other}]}\n", encoding="utf-8")
    assert [entry.name for entry in read_yaml_roster(tmp_path)] == ["zed", "amy"]


def test_read_yaml_roster_falls_back_to_upper_case(tmp_path: Path) -> None:
    """Without agent.yaml the loader reads AGENT.yaml."""
    (tmp_path / "AGENT.yaml").write_text("agents: {roster: [{name: other}]}\n", encoding="utf-8")
    assert read_yaml_roster(tmp_path) == [
        RosterEntry(name="other", read_policy="isolated", policy_group=None)
    ]


@pytest.mark.parametrize(
    "text",
    [
        "agents: [unclosed\n",
        "- just\n- a list\n",
        "agents: 3\n",
        "agents: {roster: nope}\n",
        "\xff\xfe not utf8",
    ],
)
def test_unreadable_manifests_give_no_roster(tmp_path: Path, text: str) -> None:
    """Invalid YAML, wrong shapes and undecodable files read as an empty roster."""
    (tmp_path / "agent.yaml").write_bytes(text.encode("latin-1"))
    assert read_yaml_roster(tmp_path) == []


def test_missing_manifest_gives_no_roster(tmp_path: Path) -> None:
    """A workspace without a manifest has an empty roster."""
    assert read_yaml_roster(tmp_path / "nowhere") == []


def test_discover_agent_dirs(tmp_path: Path) -> None:
    """agents/<name>/ folders are listed sorted; files are ignored; no folder means []."""
    assert discover_agent_dirs(tmp_path) == []
    for name in ("zoe", "adam", "mid"):
        (tmp_path / "agents" / name).mkdir(parents=True)
    (tmp_path / "agents" / "README.md").write_text("not an agent", encoding="utf-8")
    assert discover_agent_dirs(tmp_path) == ["adam", "mid", "zoe"]
