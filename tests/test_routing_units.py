"""The pure parts of routing: agent resolution per route, per-flavor request adaptation,
what a node may contribute, and the circuit breaker."""

from __future__ import annotations

from typing import Any

import pytest

from signet_cluster.breaker import Breakers
from signet_cluster.daemon.adapt import plan_request, search_as_recall_body
from signet_cluster.daemon.agent_resolution import RouteKind, resolve_agent
from signet_cluster.daemon.ownership import MemoryOwner
from signet_cluster.daemon.visibility import contributing_agents, live_policies, may_contribute
from signet_cluster.protocol import AgentInfo


def _resolve(kind: RouteKind, body: Any = None, query: Any = None, headers: Any = None) -> str:
    return resolve_agent(kind, query=query or {}, headers=headers or {}, body=body).agent_id


def test_resolution_follows_the_daemon_route_by_route() -> None:
    """POST recall ignores the agent header (as the daemon does) but takes a session key;
    GET search reads query and header; the dashboard search is agent-blind; a body session
    key that is not agent-scoped hides the header's; remember reads body then session."""
    header = {"x-signet-agent-id": "bob"}
    assert _resolve(RouteKind.RECALL, {"query": "q"}, headers=header) == "default"
    assert _resolve(RouteKind.RECALL, {"sessionKey": "agent:carol:1"}) == "carol"
    assert _resolve(RouteKind.RECALL, {"agentId": "x", "sessionKey": "agent:carol:1"}) == "x"
    assert (
        _resolve(
            RouteKind.RECALL, {"sessionKey": "plain"}, headers={"x-signet-session-key": "agent:c:1"}
        )
        == "default"
    )
    assert _resolve(RouteKind.SEARCH, query={"agent_id": "q1"}, headers=header) == "q1"
    assert _resolve(RouteKind.SEARCH, headers=header) == "bob"
    assert _resolve(RouteKind.LEGACY_SEARCH, query={"agentId": "x"}, headers=header) == "default"
    assert _resolve(RouteKind.GET_BY_ID, headers={"x-signet-session-key": "agent:d:z"}) == "d"
    assert _resolve(RouteKind.REMEMBER, {"content": "c"}, headers=header) == "default"
    # A body sessionKey does not name a remember's agent; the session-key header does.
    assert _resolve(RouteKind.REMEMBER, {"content": "c", "sessionKey": "agent:b:1"}) == "default"
    assert (
        _resolve(
            RouteKind.REMEMBER, {"content": "c"}, headers={"x-signet-session-key": "agent:b:1"}
        )
        == "b"
    )
    assert _resolve(RouteKind.HOOK_REMEMBER, {"content": "c"}, headers=header) == "bob"
    assert _resolve(RouteKind.MODIFY, {"agent_id": "m", "agentId": "n"}) == "m"
    assert _resolve(RouteKind.RECALL, {"agentId": 5}) == "default"  # not a string: ignored


def _plan(kind: RouteKind, flavor: str, agent: str, body: Any = None, **kw: Any) -> Any:
    return plan_request(
        kind,
        flavor,
        agent,
        method=kw.get("method", "POST"),
        path=kw.get("path", "/p"),
        query=kw.get("query", []),
        headers=kw.get("headers", {}),
        body=body,
        explicit=kw.get("explicit", False),
    )


def test_rust_patch_and_delete_name_a_query_agent_in_the_header() -> None:
    """Rust scopes PATCH/DELETE by id with the agent header, so an agent named in the query
    reaches a local Rust daemon as that header (TS reads the query itself)."""
    for kind in (RouteKind.PATCH_BY_ID, RouteKind.DELETE_BY_ID):
        rust = _plan(kind, "rust", "alice", {"reason": "r"}, query=[("agentId", "alice")])
        assert rust.set_headers.get("x-signet-agent-id") == "alice"
        ts = _plan(kind, "ts", "alice", {"reason": "r"}, query=[("agentId", "alice")])
        assert "x-signet-agent-id" not in ts.set_headers


def test_adaptation_per_flavor() -> None:
    """Filter names, patch shapes, Rust's agent scoping and session rule, search→recall."""
    plan = _plan(RouteKind.RECALL, "rust", "bob", {"query": "q", "importance_min": 0.3})
    assert plan.body == {
        "query": "q",
        "importance_min": 0.3,
        "importanceMin": 0.3,
        "agentId": "bob",
    }
    plan = _plan(RouteKind.RECALL, "ts", "default", {"query": "q", "importanceMin": 0.3})
    assert plan.body["importance_min"] == 0.3 and "agentId" not in plan.body
    unchanged = _plan(RouteKind.RECALL, "ts", "default", {"query": "q"})
    assert not unchanged.changed
    flat = {"patches": [{"id": "m1", "content": "c", "reason": "r", "if_version": 2}]}
    plan = _plan(RouteKind.MODIFY, "rust", "bob", flat)
    assert plan.body == {
        "patches": [{"id": "m1", "patch": {"content": "c"}, "if_version": 2}],
        "reason": "r",
        "agentId": "bob",
    }
    plan = _plan(
        RouteKind.MODIFY, "ts", "bob", {"patches": [{"id": "m1", "patch": {"content": "c"}}]}
    )
    assert plan.body["patches"] == [{"id": "m1", "content": "c"}]
    plan = _plan(
        RouteKind.REMEMBER,
        "rust",
        "bob",
        {"content": "x"},
        headers={"x-signet-session-key": "agent:bob:s"},
    )
    assert plan.session_for == "bob" and plan.body["sessionKey"] == "agent:bob:s"
    assert _plan(RouteKind.REMEMBER, "rust", "default", {"content": "x"}).session_for is None
    assert (
        _plan(
            RouteKind.REMEMBER, "rust", "default", {"content": "x", "visibility": "private"}
        ).session_for
        == "default"
    )
    plan = _plan(
        RouteKind.SEARCH,
        "rust",
        "bob",
        None,
        method="GET",
        query=[("q", "tea"), ("limit", "3"), ("pinned", "1")],
    )
    assert (plan.method, plan.path) == ("POST", "/api/memory/recall")
    assert plan.body == {"agentId": "bob", "query": "tea", "limit": 3, "pinned": True}
    # The same conversion serves fan-out; a number that does not parse is no filter (as TS).
    assert search_as_recall_body({"q": "x", "importance_min": "0.5", "limit": "many"}) == {
        "query": "x",
        "importanceMin": 0.5,
    }
    plan = _plan(RouteKind.GET_BY_ID, "ts", "bob", None, method="GET", explicit=True)
    assert plan.query == [("agentId", "bob")]


ROSTER = {
    "iso": AgentInfo(id="iso", read_policy="isolated"),
    "sh": AgentInfo(id="sh", read_policy="shared"),
    "g1": AgentInfo(id="g1", read_policy="group", policy_group="ops"),
    "g2": AgentInfo(id="g2", read_policy="group", policy_group="dev"),
}


@pytest.mark.parametrize(
    ("agent", "visibility", "deleted", "policy", "group", "allowed"),
    [
        ("sh", "global", False, "shared", None, True),
        ("sh", "private", False, "shared", None, False),
        ("sh", "archived", False, "shared", None, False),
        ("sh", "global", True, "shared", None, False),
        ("iso", "global", False, "shared", None, False),
        ("ghost", "global", False, "shared", None, False),  # no row: isolated
        ("g1", "global", False, "group", "ops", True),
        ("g2", "global", False, "group", "ops", False),
        ("sh", "global", False, "group", "ops", False),
        ("g1", "global", False, "isolated", None, False),
    ],
)
def test_what_may_leave_a_node(
    agent: str, visibility: str, deleted: bool, policy: str, group: str | None, allowed: bool
) -> None:
    """Only live global memories of non-isolated agents, filtered by the reader's policy."""
    owner = MemoryOwner(id="m", agent_id=agent, visibility=visibility, is_deleted=deleted)
    assert may_contribute(owner, ROSTER, policy, group) is allowed
    assert may_contribute(None, ROSTER, "shared", None) is False


def test_the_daemons_agents_table_as_of_now_can_only_narrow_it() -> None:
    """With the daemon's current policies given, a memory leaves only when both they and
    the roster allow it: an agent isolated (or without a row) in the table stays home even
    if the roster still says shared; no table at all (legacy) leaves the roster to decide."""
    owner = MemoryOwner(id="m", agent_id="sh", visibility="global", is_deleted=False)
    iso = MemoryOwner(id="m", agent_id="iso", visibility="global", is_deleted=False)
    cases: list[tuple[MemoryOwner, dict[str, tuple[object, object]] | None, bool]] = [
        (owner, {"sh": ("isolated", None)}, False),
        (owner, {"sh": ("group", None)}, False),  # group without a group: isolated
        (owner, {}, False),  # no row
        (owner, {"sh": ("shared", None)}, True),
        (owner, None, True),
        (iso, {"iso": ("shared", None)}, False),  # the roster still says isolated
    ]
    for memory, rows, allowed in cases:
        assert may_contribute(memory, ROSTER, "shared", None, live_policies(rows)) is allowed


def test_contributing_agents() -> None:
    """The agents a node's contribution covers (listed as missing when it fails)."""
    assert contributing_agents(ROSTER, "shared", None) == ["g1", "g2", "sh"]
    assert contributing_agents(ROSTER, "group", "ops") == ["g1"]


def test_breaker_opens_skips_and_probes() -> None:
    """Open after `threshold` failures; skipped during the cooldown; then exactly one probe
    at a time; success closes it, failure opens it again."""
    breakers = Breakers(threshold=2, cooldown=10)
    breakers.record("n", False, 0)
    assert breakers.admit("n", 0) is None
    breakers.record("n", False, 1)
    assert breakers.admit("n", 5) is not None and breakers.state("n", 5) == "open"
    assert breakers.admit("n", 11) is None  # the probe
    assert breakers.admit("n", 11) is not None  # others wait for it
    breakers.record("n", False, 11)
    assert breakers.admit("n", 12) is not None
    assert breakers.admit("n", 22) is None
    breakers.record("n", True, 22)
    assert breakers.state("n", 22) == "closed" and breakers.admit("n", 22) is None
