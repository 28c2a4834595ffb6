"""Which of a node's memories another node's reader may see (federation, DESIGN §7).

A remote node contributes only `global`, live memories of its agents that are not
`isolated`: every agent for a `shared` reader, the members of group G (agents whose policy
is `group` G) for a `group` reader. Private and archived memories, and every memory of an
isolated agent (or of an agent the daemon has no row for, which it treats as isolated),
never leave their node. A memory whose owner cannot be read is never contributed.

The owning agent's policy must allow it both in the sidecar's roster and, when given, in
the daemon's `agents` table as it is right now (`live`): the roster is re-read on a timer,
so an agent made isolated a moment ago still looks shared there.
"""

from __future__ import annotations

from collections.abc import Mapping

from signet_cluster.daemon.ownership import MemoryOwner
from signet_cluster.daemon.probe import effective_policy
from signet_cluster.protocol import AgentInfo

# agent id -> (read_policy, policy_group) as the daemon applies them
Policies = Mapping[str, tuple[str, str | None]]


def _readable(policy: str, group: str | None, reader_policy: str, reader_group: str | None) -> bool:
    """Whether an agent with this policy contributes its global memories to such a reader."""
    if policy == "isolated":
        return False
    if reader_policy == "shared":
        return True
    return bool(reader_policy == "group" and reader_group) and (
        policy == "group" and group == reader_group
    )


def live_policies(rows: Mapping[str, tuple[object, object]] | None) -> Policies | None:
    """The policies the daemon applies to these `agents` rows (MemoryOwnership.policies());
    None stays None (no agents table: the roster is all there is)."""
    if rows is None:
        return None
    return {agent: effective_policy(policy, group) for agent, (policy, group) in rows.items()}


def may_contribute(
    owner: MemoryOwner | None,
    roster: Mapping[str, AgentInfo],
    reader_policy: str,
    reader_group: str | None,
    live: Policies | None = None,
) -> bool:
    if owner is None or owner.is_deleted or owner.visibility != "global":
        return False
    agent = roster.get(owner.agent_id)
    if agent is None or not _readable(
        agent.read_policy, agent.policy_group, reader_policy, reader_group
    ):
        return False
    if live is None:
        return True
    # No row: the daemon reads the agent as isolated.
    policy, group = live.get(owner.agent_id, ("isolated", None))
    return _readable(policy, group, reader_policy, reader_group)


def contributing_agents(
    roster: Mapping[str, AgentInfo], reader_policy: str, reader_group: str | None
) -> list[str]:
    """The agents whose memories a node contributes to such a reader (for `missing` lists)."""
    return sorted(
        agent.id
        for agent in roster.values()
        if _readable(agent.read_policy, agent.policy_group, reader_policy, reader_group)
    )
