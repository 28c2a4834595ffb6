"""The federation invariant as a property, on dev daemons: with fewer matching memories than
`limit`, a federated recall returns exactly the set the read policies allow, whatever the
rosters, memories, policies, reader and entry sidecar.

One three-node cluster serves every example; each example adds its own agents (fresh names,
created through the daemons' `POST /api/agents`, so the sidecars learn them from the
roster) and memories (under a fresh query word), so examples never see each other's data.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .cluster_helpers import Cluster, Node, wait_for
from .routing_helpers import client, remember, routes_of

NODES = ("a", "b", "c")
POLICIES = ("isolated", "shared", "group:g1", "group:g2")
_names = itertools.count()

# Per node: 1-3 agents, each with a policy and 0-3 memories (global or private).
agent_spec = st.tuples(
    st.sampled_from(POLICIES), st.lists(st.sampled_from(("global", "private")), max_size=3)
)
layout = st.fixed_dictionaries(
    {node: st.lists(agent_spec, min_size=1, max_size=3) for node in NODES}
)
defaults = st.fixed_dictionaries({node: st.integers(0, 2) for node in NODES})


def oracle(
    reader: str,
    agents: dict[str, tuple[str, str, str | None]],
    memories: dict[str, tuple[str, str, str]],
) -> set[str]:
    """What `reader` may see (agents: id -> node, policy, group; memories: id -> node,
    agent, visibility). The owner's daemon applies its own rule to its own memories; other
    nodes contribute the global memories of agents the reader's policy reaches."""
    home, policy, group = agents[reader]
    out = set()
    for memory_id, (node, agent, visibility) in memories.items():
        if agent == reader:
            out.add(memory_id)
            continue
        if policy == "isolated" or visibility != "global":
            continue
        _, agent_policy, agent_group = agents.get(agent, (node, "shared", None))  # default
        if policy == "shared":
            if node == home or agent_policy != "isolated":
                out.add(memory_id)
        elif agent_policy == "group" and agent_group == group:
            out.add(memory_id)
    return out


async def three_nodes(cluster: Cluster) -> dict[str, Node]:
    if cluster.nodes:
        return dict(cluster.nodes)
    fanout = {"fanout_ceiling": 5.0, "daemon_timeout": 5.0}
    first = await cluster.add("a", [], coordinator=True, **fanout)
    for name in NODES[1:]:
        await cluster.add(name, [], coordinators=(first.url,), **fanout)
    return dict(cluster.nodes)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(layout=layout, defaults=defaults, data=st.data())
async def test_a_federated_recall_returns_exactly_what_the_policies_allow(
    cluster: Cluster,
    layout: dict[str, list[tuple[str, list[str]]]],
    defaults: dict[str, int],
    data: st.DataObject,
) -> None:
    nodes = await three_nodes(cluster)
    token = "p" + uuid.uuid4().hex[:12]
    agents: dict[str, tuple[str, str, str | None]] = {}
    memories: dict[str, tuple[str, str, str]] = {}
    for node_name, specs in layout.items():
        node = nodes[node_name]
        for policy_spec, visibilities in specs:
            agent = f"ag{next(_names)}"
            policy, _, group = policy_spec.partition(":")
            body: dict[str, Any] = {"name": agent, "read_policy": policy}
            if group:
                body["policy_group"] = group
            code, answer, _ = await client(cluster, "POST", node.daemon_url + "/api/agents", body)
            assert code == 201, answer
            agents[agent] = (node_name, policy, group or None)
            for n, visibility in enumerate(visibilities):
                memory_id = await remember(
                    cluster,
                    node.daemon_url,
                    f"{token} {agent} {visibility} {n}",
                    agent,
                    visibility=visibility,
                )
                memories[memory_id] = (node_name, agent, visibility)
        for n in range(defaults[node_name]):
            memory_id = await remember(cluster, node.daemon_url, f"{token} default {node_name} {n}")
            memories[memory_id] = (node_name, "default", "global")

    reader = data.draw(st.sampled_from(sorted(agents)), label="reader")
    entry = nodes[data.draw(st.sampled_from(NODES), label="entry")]

    async def learned() -> bool:
        routes = await routes_of(cluster, entry)
        return all(
            agent in routes and routes[agent]["owner"]["node_id"] == home
            for agent, (home, _, _) in agents.items()
        )

    await wait_for(learned, timeout=20, what="the example's agents routed")
    assert len(memories) < 50
    code, answer, _ = await client(
        cluster,
        "POST",
        entry.url + "/api/memory/recall",
        {"query": token, "agentId": reader, "limit": 50},
    )
    assert code == 200, answer
    got = {hit["id"] for hit in answer["results"]}
    want = oracle(reader, agents, memories)
    assert got == want, (reader, agents[reader], sorted(got ^ want), answer.get("cluster"))
    block = answer.get("cluster")
    assert block is None or block["partial"] is False, block
