"""The rules of agent resolution (signet_cluster.daemon.agent_resolution): for every route, the
places the daemon reads the agent from and in which order, what an agent-scoped session key
is, and which routes get the ownership check. Written as requests and the agent they act
as, so they hold whatever shape the lookup table takes."""

from __future__ import annotations

from typing import Any

import pytest

from signet_cluster.daemon.agent_resolution import (
    DEFAULT_AGENT,
    EXPAND_PATH,
    Resolved,
    RouteKind,
    daemon_honours_agent,
    resolve_agent,
    session_agent,
)

# Every place any route reads an agent from: (place, name, is the value a session key).
PLACES: list[tuple[str, str, bool]] = [
    ("body", "agentId", False),
    ("body", "agent_id", False),
    ("body", "sessionKey", True),
    ("query", "agentId", False),
    ("query", "agent_id", False),
    ("query", "sessionKey", True),
    ("query", "session_key", True),
    ("header", "x-signet-agent-id", False),
    ("header", "x-signet-session-key", True),
]

# The daemon's reading, route by route, in its order of precedence (contract §3).
READS: dict[RouteKind, list[tuple[str, str]]] = {
    RouteKind.RECALL: [
        ("body", "agentId"),
        ("body", "sessionKey"),
        ("header", "x-signet-session-key"),
    ],
    RouteKind.SEARCH: [
        ("query", "agentId"),
        ("query", "agent_id"),
        ("header", "x-signet-agent-id"),
        ("query", "sessionKey"),
        ("query", "session_key"),
        ("header", "x-signet-session-key"),
    ],
    RouteKind.LEGACY_SEARCH: [],
    RouteKind.GET_BY_ID: [
        ("query", "agentId"),
        ("query", "agent_id"),
        ("header", "x-signet-agent-id"),
        ("header", "x-signet-session-key"),
    ],
    RouteKind.PATCH_BY_ID: [
        ("query", "agentId"),
        ("query", "agent_id"),
        ("header", "x-signet-agent-id"),
        ("header", "x-signet-session-key"),
    ],
    RouteKind.DELETE_BY_ID: [
        ("query", "agentId"),
        ("query", "agent_id"),
        ("header", "x-signet-agent-id"),
        ("header", "x-signet-session-key"),
    ],
    # Issue 14: recover is unscoped on TS; the sidecar reads it like the other by-id routes.
    RouteKind.RECOVER: [
        ("query", "agentId"),
        ("query", "agent_id"),
        ("header", "x-signet-agent-id"),
        ("header", "x-signet-session-key"),
    ],
    RouteKind.REMEMBER: [("body", "agentId"), ("header", "x-signet-session-key")],
    RouteKind.HOOK_REMEMBER: [
        ("body", "agentId"),
        ("header", "x-signet-agent-id"),
        ("header", "x-signet-session-key"),
    ],
    RouteKind.MODIFY: [
        ("body", "agent_id"),
        ("body", "agentId"),
        ("header", "x-signet-agent-id"),
    ],
    RouteKind.FORGET: [
        ("body", "agent_id"),
        ("body", "agentId"),
        ("header", "x-signet-agent-id"),
    ],
    RouteKind.HOOK: [
        ("body", "agentId"),
        ("body", "sessionKey"),
        ("header", "x-signet-session-key"),
    ],
    RouteKind.EXPAND: [("body", "agentId")],
}


def _request(values: dict[tuple[str, str], str]) -> dict[str, Any]:
    parts: dict[str, dict[str, str]] = {"body": {}, "query": {}, "header": {}}
    for (place, name), value in values.items():
        parts[place][name] = value
    return {"body": parts["body"], "query": parts["query"], "headers": parts["header"]}


def _value(place: str, name: str, agent: str) -> str:
    is_session = next(s for p, n, s in PLACES if (p, n) == (place, name))
    return f"agent:{agent}:s1" if is_session else agent


def test_every_route_kind_has_its_rules_here() -> None:
    """Rule: a route kind added to RouteKind gets its agent sources pinned here too."""
    assert set(READS) == set(RouteKind)


@pytest.mark.parametrize("kind", list(READS))
def test_each_place_a_route_reads_names_the_agent(kind: RouteKind) -> None:
    """Rule: each place this route reads names the agent on its own, and the answer says
    which place it was (e.g. query `sessionKey` for search, the agent header for modify,
    body `agent_id` for forget, body `agentId` for expand)."""
    for place, name in READS[kind]:
        resolved = resolve_agent(kind, **_request({(place, name): _value(place, name, "bob")}))
        assert resolved == Resolved("bob", f"{place}.{name}"), (place, name)


@pytest.mark.parametrize("kind", list(READS))
def test_places_a_route_does_not_read_are_ignored(kind: RouteKind) -> None:
    """Rule: an agent named anywhere the daemon does not read it on this route leaves the
    request acting as `default` (the sidecar must route where the daemon will act)."""
    ignored = {(p, n): _value(p, n, "eve") for p, n, _s in PLACES if (p, n) not in READS[kind]}
    assert resolve_agent(kind, **_request(ignored)) == Resolved(DEFAULT_AGENT, "default")


@pytest.mark.parametrize("kind", list(READS))
def test_the_first_place_in_the_daemons_order_wins(kind: RouteKind) -> None:
    """Rule: when several places name an agent, the daemon's order decides; a later one is
    only read when all earlier ones are absent."""
    reads = READS[kind]
    for start in range(len(reads)):
        values = {(p, n): _value(p, n, f"agent{i}") for i, (p, n) in enumerate(reads) if i >= start}
        place, name = reads[start]
        assert resolve_agent(kind, **_request(values)) == Resolved(
            f"agent{start}", f"{place}.{name}"
        )


@pytest.mark.parametrize(
    ("key", "agent"),
    [
        ("agent:bob:x", "bob"),
        ("agent:bob:x:y:z", "bob"),
        ("agent:bob:", "bob"),
        ("agent:bob", "bob"),
        ("agent: bob :x", "bob"),
        ("foo:bob:x", None),
        ("Agent:bob:x", None),
        ("agent::x", None),
        ("agent", None),
        ("bob", None),
        ("", None),
        (None, None),
        (7, None),
    ],
)
def test_an_agent_scoped_session_key(key: object, agent: str | None) -> None:
    """Rule: only an `agent:<id>:<rest>` key names an agent (`<rest>` may itself contain
    colons); any other prefix, an empty id or a non-string names none."""
    assert session_agent(key) == agent


def test_a_session_key_of_another_shape_acts_as_default() -> None:
    """Rule: `foo:bob:x` is not agent-scoped, so a recall with it acts as `default`, and it
    hides a later session key (the daemon reads one session key)."""
    assert resolve_agent(
        RouteKind.RECALL, query={}, headers={}, body={"sessionKey": "foo:bob:x"}
    ) == Resolved(DEFAULT_AGENT, "default")
    assert resolve_agent(
        RouteKind.RECALL,
        query={},
        headers={"x-signet-session-key": "agent:carol:1"},
        body={"sessionKey": "foo:bob:x"},
    ) == Resolved(DEFAULT_AGENT, "default")
    assert resolve_agent(
        RouteKind.SEARCH,
        query={"sessionKey": "agent:carol:x:y"},
        headers={"x-signet-session-key": "agent:dave:1"},
        body=None,
    ) == Resolved("carol", "query.sessionKey")


def test_blank_and_non_string_values_are_absent() -> None:
    """Rule: an empty, blank or non-string value is not an agent; the next place is read.
    Values are trimmed."""
    resolved = resolve_agent(
        RouteKind.MODIFY,
        query={},
        headers={"x-signet-agent-id": "  carol "},
        body={"agent_id": "   ", "agentId": 5},
    )
    assert resolved == Resolved("carol", "header.x-signet-agent-id")
    assert resolve_agent(RouteKind.EXPAND, query={}, headers={}, body=None) == Resolved(
        DEFAULT_AGENT, "default"
    )


def test_which_routes_are_ownership_checked_and_which_fan_out() -> None:
    """Rule: modify, forget, PATCH and DELETE by id and recover (issue 14) have their ids
    checked against the acting agent; reads, remembers and hooks do not (nothing existing is touched). Recall
    and both searches, and only they, are the list reads federation fans out."""
    checked = {k for k in READS if k.checks_ownership}
    assert checked == {
        RouteKind.MODIFY,
        RouteKind.FORGET,
        RouteKind.PATCH_BY_ID,
        RouteKind.DELETE_BY_ID,
        RouteKind.RECOVER,
    }
    lists = {k for k in READS if k.is_list_read}
    assert lists == {RouteKind.RECALL, RouteKind.SEARCH, RouteKind.LEGACY_SEARCH}


@pytest.mark.parametrize("flavor", ["ts", "legacy", "rust"])
def test_only_ts_expand_ignores_the_agent_it_names(flavor: str) -> None:
    """Rule (contract section 3): a TS or legacy daemon's POST /api/knowledge/expand acts as
    the token's agent whatever the body names; /api/knowledge/expand/session, every other
    route, and every route on Rust act as the agent named."""
    assert daemon_honours_agent(RouteKind.EXPAND, EXPAND_PATH, flavor) is (flavor == "rust")
    assert EXPAND_PATH == "/api/knowledge/expand"
    assert daemon_honours_agent(RouteKind.EXPAND, EXPAND_PATH + "/session", flavor) is True
    for kind in RouteKind:
        if kind is not RouteKind.EXPAND:
            assert daemon_honours_agent(kind, EXPAND_PATH, flavor) is True
            assert daemon_honours_agent(kind, "/api/memory/recall", flavor) is True
