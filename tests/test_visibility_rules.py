"""The rules of what a node may contribute to another node's reader
(signet_cluster.daemon.visibility) beyond tests/test_routing_units.py: group readers against
the daemon's live agents table, and readers whose policy reads nothing remote."""

from __future__ import annotations

from signet_cluster.daemon.ownership import MemoryOwner
from signet_cluster.daemon.visibility import contributing_agents, live_policies, may_contribute
from signet_cluster.protocol import AgentInfo

ROSTER = {
    "ops1": AgentInfo(id="ops1", read_policy="group", policy_group="ops"),
    "sh": AgentInfo(id="sh", read_policy="shared"),
}


def _memory(agent: str) -> MemoryOwner:
    return MemoryOwner(id="m", agent_id=agent, visibility="global", is_deleted=False)


def test_live_policies_keep_the_group() -> None:
    """Rule: the daemon's rows read as the policy it applies, a group policy with its
    group; no table stays no table."""
    rows: dict[str, tuple[object, object]] = {
        "ops1": ("group", "ops"),
        "sh": ("shared", "ignored"),
        "odd": ("public", None),
    }
    assert live_policies(rows) == {
        "ops1": ("group", "ops"),
        "sh": ("shared", None),
        "odd": ("isolated", None),
    }
    assert live_policies(None) is None


def test_a_group_member_reaches_its_group_when_the_daemon_agrees() -> None:
    """Rule: a memory of an agent in group G goes to a group-G reader when both the roster
    and the daemon's live table put the agent in G, and not when the table has moved it to
    another group."""
    owner = _memory("ops1")
    same = live_policies({"ops1": ("group", "ops")})
    moved = live_policies({"ops1": ("group", "dev")})
    assert may_contribute(owner, ROSTER, "group", "ops", same) is True
    assert may_contribute(owner, ROSTER, "group", "ops", moved) is False
    assert may_contribute(owner, ROSTER, "shared", None, same) is True


def test_a_reader_that_is_neither_shared_nor_group_gets_nothing() -> None:
    """Rule: only `shared` and `group` readers read other nodes; an isolated reader gets
    nothing even if it carries a group name, and a group reader without a group gets
    nothing."""
    for memory in (_memory("ops1"), _memory("sh")):
        assert may_contribute(memory, ROSTER, "isolated", "ops") is False
        assert may_contribute(memory, ROSTER, "group", None) is False
    assert contributing_agents(ROSTER, "isolated", "ops") == []
    assert contributing_agents(ROSTER, "group", "") == []
