"""Reading a Signet workspace's agent roster from disk.

Shared by the dev daemon (which syncs the roster into its ``agents`` table at start,
like the TypeScript daemon's ``syncAgentRoster``) and by the sidecar's daemon adapter
(which needs a roster when the daemon has no ``/api/agents``: releases before 0.76, or
the Rust daemon, which never reads ``agents.roster[]``).

Normalisation follows ``normalizeAgentRosterEntry`` in the daemon's ``platform/core``:
the nested ``memory.read_policy`` wins over the flat ``read_policy``, and anything that
is not clearly ``shared`` or a named group falls back to ``isolated`` (fail closed).
"""

from __future__ import annotations

import time
from pathlib import Path
from stat import S_ISREG
from typing import Any

import attrs
import yaml

#: The manifest file names the daemon's loader tries, in order.
MANIFEST_NAMES = ("agent.yaml", "AGENT.yaml")


@attrs.frozen(kw_only=True)
class RosterEntry:
    """One normalised ``agents.roster[]`` entry."""

    name: str
    read_policy: str  # "isolated" | "shared" | "group"
    policy_group: str | None


def _normalize_read_policy(read_policy: object, policy_group: object) -> tuple[str, str | None]:
    if read_policy == "shared":
        return "shared", None
    if read_policy == "isolated":
        return "isolated", None
    if isinstance(read_policy, dict):
        group = read_policy.get("group")
        if read_policy.get("type") == "group" and isinstance(group, str):
            return "group", group
    if read_policy == "group" and isinstance(policy_group, str):
        return "group", policy_group
    # Unknown values, and "group" without a group name, never widen access.
    return "isolated", None


def _first_present(primary: dict[str, Any] | None, fallback: dict[str, Any], key: str) -> object:
    # The daemon uses `memory?.key ?? entry.key`: null/missing falls through.
    value = primary.get(key) if primary is not None else None
    return value if value is not None else fallback.get(key)


def normalize_roster_entry(raw: object) -> RosterEntry | None:
    """Normalise one roster entry; ``None`` when it has no usable name."""
    if not isinstance(raw, dict):
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        return None
    memory = raw.get("memory")
    memory_block = memory if isinstance(memory, dict) else None
    read_policy, group = _normalize_read_policy(
        _first_present(memory_block, raw, "read_policy"),
        _first_present(memory_block, raw, "policy_group"),
    )
    return RosterEntry(name=name, read_policy=read_policy, policy_group=group)


def load_manifest(workspace: Path) -> dict[str, Any]:
    """The parsed ``agent.yaml`` (else ``AGENT.yaml``); ``{}`` when missing or invalid.

    Callers only read the result (it may be shared with other callers). The sidecar asks
    every second (auth mode, roster); a real daemon's manifest takes milliseconds to parse,
    so a file unchanged since the last parse is not parsed again."""
    for file_name in MANIFEST_NAMES:
        path = workspace / file_name
        try:
            stat = path.stat()
        except OSError:
            continue
        if not S_ISREG(stat.st_mode):
            continue
        # A file modified within the last second may change again within the same
        # timestamp tick (same size, same mtime): parsed afresh until it has settled.
        settled = time.time() - stat.st_mtime > _SETTLE_S
        key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        cached = _MANIFESTS.get(key) if settled else None
        if cached is not None:
            return cached
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            # An unreadable manifest is treated as "no roster", as the daemon does.
            return {}
        parsed = data if isinstance(data, dict) else {}
        if settled:
            if len(_MANIFESTS) >= _MANIFESTS_KEPT:
                _MANIFESTS.clear()
            _MANIFESTS[key] = parsed
        return parsed
    return {}


# Parsed manifests by file identity and version (a memo of a pure function of the file).
_MANIFESTS: dict[tuple[str, int, int, int, int], dict[str, Any]] = {}
_MANIFESTS_KEPT = 64
_SETTLE_S = 1.0


def read_yaml_roster(workspace: Path) -> list[RosterEntry]:
    """Normalised ``agents.roster[]`` from the workspace manifest, in file order."""
    agents = load_manifest(workspace).get("agents")
    if not isinstance(agents, dict):
        return []
    roster = agents.get("roster")
    if not isinstance(roster, list):
        return []
    entries = (normalize_roster_entry(item) for item in roster)
    return [entry for entry in entries if entry is not None]


def discover_agent_dirs(workspace: Path) -> list[str]:
    """Names of the ``agents/<name>/`` folders (the daemon's ``discoverAgents``), sorted."""
    root = workspace / "agents"
    try:
        return sorted(child.name for child in root.iterdir() if child.is_dir())
    except OSError:
        return []
