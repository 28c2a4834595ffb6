"""Which of a node's memories another node's reader may see (federation, DESIGN §7).

A remote node contributes only `global`, live memories of its agents that are not
`isolated`: every agent for a `shared` reader, the members of group G (agents whose policy
is `group` G) for a `group` reader. Private and archived memories, and every memory of an
isolated agent (or of an agent the daemon has no row for, which it treats as isolated),
never leave their node. A memory whose owner cannot be read is never contributed.
"""

from __future__ import annotations

from collections.abc import Mapping

from .ownership import MemoryOwner
from .protocol import AgentInfo


def may_contribute(
    owner: MemoryOwner | None,
    roster: Mapping[str, AgentInfo],
    reader_policy: str,
    reader_group: str | None,
) -> bool:
    if owner is None or owner.is_deleted or owner.visibility != "global":
        return False
    agent = roster.get(owner.agent_id)
    if agent is None or agent.read_policy == "isolated":
        return False
    if reader_policy == "shared":
        return True
    if reader_policy == "group" and reader_group:
        return agent.read_policy == "group" and agent.policy_group == reader_group
    return False


def contributing_agents(
    roster: Mapping[str, AgentInfo], reader_policy: str, reader_group: str | None
) -> list[str]:
    """The agents whose memories a node contributes to such a reader (for `missing` lists)."""
    out = []
    for agent in roster.values():
        if agent.read_policy == "isolated":
            continue
        if reader_policy == "shared" or (
            reader_policy == "group"
            and agent.read_policy == "group"
            and agent.policy_group == reader_group
        ):
            out.append(agent.id)
    return sorted(out)
