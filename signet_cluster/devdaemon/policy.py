"""Read policies: which memories an agent may read (contract §2, ``buildAgentScopeClause``)."""

from __future__ import annotations

import attrs
from sqlite_utils import Database

# Columns wrapped as the Rust daemon does: rows written before migration 043 (empty or
# NULL agent_id / visibility) read as agent `default`, visibility `global`.
AGENT_COL = "COALESCE(NULLIF(m.agent_id, ''), 'default')"
VIS_COL = "COALESCE(m.visibility, 'global')"


@attrs.frozen(kw_only=True)
class ReadScope:
    """The reading agent and the policy its ``agents`` row gives it."""

    agent_id: str
    read_policy: str  # "shared" | "group" | "isolated" (anything else acts as isolated)
    policy_group: str | None


def load_scope(db: Database, agent_id: str) -> ReadScope:
    """The agent's policy; an agent with no row is ``isolated`` (``getAgentScope``)."""
    rows = list(db.query("SELECT read_policy, policy_group FROM agents WHERE id = ?", [agent_id]))
    if not rows:
        return ReadScope(agent_id=agent_id, read_policy="isolated", policy_group=None)
    return ReadScope(
        agent_id=agent_id,
        read_policy=str(rows[0]["read_policy"]),
        policy_group=rows[0]["policy_group"],
    )


def scope_clause(scope: ReadScope) -> tuple[str, list[object]]:
    """SQL (over alias ``m``) limiting rows to what ``scope`` may read."""
    not_archived = f"{VIS_COL} != 'archived'"
    if scope.read_policy == "shared":
        return (
            f"(({VIS_COL} = 'global' OR {AGENT_COL} = ?) AND {not_archived})",
            [scope.agent_id],
        )
    if scope.read_policy == "group" and scope.policy_group is not None:
        return (
            f"((({VIS_COL} = 'global' AND {AGENT_COL} IN"
            " (SELECT id FROM agents WHERE policy_group = ?))"
            f" OR {AGENT_COL} = ?) AND {not_archived})",
            [scope.policy_group, scope.agent_id],
        )
    # isolated, unknown policies and `group` without a group: own memories only.
    return f"({AGENT_COL} = ? AND {not_archived})", [scope.agent_id]
