"""Degradation contract of federated reads: a dead, slow or failing node costs
completeness, never the answer; the `cluster` block says exactly what is missing."""

from __future__ import annotations

from pathlib import Path

from signet_cluster.clock import ManualClock

from .cluster_helpers import Cluster, registry_of, wait_for
from .routing_helpers import BOB, FRANK, client, remember, set_faults, wait_routes

# Generous for a loaded test machine where timing is not what a test is about.
FANOUT = {"fanout_ceiling": 3.0}


def _node_agent(name: str) -> dict[str, object]:
    return {"name": f"{name}-agent", "memory": {"read_policy": "shared"}}


async def test_unreachable_slow_erroring_and_down_nodes_give_partial_results(
    cluster: Cluster,
) -> None:
    """Reader bob on a; b answers, c's daemon is slower than the deadline, d's daemon
    fails, e's sidecar is gone (still in the registry), f is down in the registry. The
    recall is 200 with b's and a's hits, `partial: true`, per-node status ok / timeout /
    error / error / down, the missing agents listed and `x-signet-cluster-missing: 4/6`;
    with partial=deny it is a 503 carrying the same block."""
    clock = ManualClock()
    fast = {"fanout_ceiling": 0.8}
    a = await cluster.add("a", [BOB], coordinator=True, clock=clock, **fast)
    others = {}
    for name in "bcdef":
        others[name] = await cluster.add(name, [_node_agent(name)], coordinators=(a.url,))
    await wait_routes(cluster, a, {f"{n}-agent": ("remote", n) for n in "bcdef"})
    mine = await remember(cluster, a.daemon_url, "deploy note from bob", "bob")
    from_b = await remember(cluster, others["b"].daemon_url, "deploy note on b", "b-agent")
    await remember(cluster, others["c"].daemon_url, "deploy note on c", "c-agent")
    await set_faults(cluster, others["c"], latency_ms=3000)
    await set_faults(cluster, others["d"], fail="error")
    await cluster.stop_sidecar(others["e"])
    await cluster.stop_sidecar(others["f"])
    # f stays silent past the TTL (e too, but e is probed before it expires: see below).
    clock.advance(registry_of(a).ttl + 1)
    await cluster.wait_states(a, {"f": "down", "e": "down", "b": "alive", "c": "alive"})
    # Bring e back into the registry as alive but unreachable: its heartbeats are gone, so
    # re-add it as a fresh sidecar and stop it before the TTL passes again.
    await cluster.start_sidecar(others["e"])
    await cluster.wait_states(a, {"e": "alive"})
    await cluster.stop_sidecar(others["e"])

    body = {"query": "deploy", "agentId": "bob"}
    code, answer, headers = await client(cluster, "POST", a.url + "/api/memory/recall", body)
    assert code == 200, answer
    assert {hit["id"] for hit in answer["results"]} == {mine, from_b}
    block = answer["cluster"]
    statuses = {n["node_id"]: n["status"] for n in block["nodes"]}
    assert statuses == {
        "a": "ok",
        "b": "ok",
        "c": "timeout",
        "d": "error",
        "e": "error",
        "f": "down",
    }
    assert block["partial"] is True
    assert {"c-agent", "d-agent", "e-agent", "f-agent"} <= set(block["missing_agents"])
    assert not {"b-agent", "bob"} & set(block["missing_agents"])
    assert headers["x-signet-cluster-missing"] == "4/6"
    errors = {n["node_id"]: n["error"] for n in block["nodes"]}
    assert "500" in errors["d"] and errors["b"] is None
    code, denied, headers = await client(
        cluster, "POST", a.url + "/api/memory/recall?partial=deny", body
    )
    assert code == 503 and denied["code"] == "partial_denied" and "Retry-After" in headers
    assert {n["node_id"] for n in denied["cluster"]["nodes"]} == set("abcdef")


async def test_a_failing_node_is_skipped_then_probed_back(cluster: Cluster) -> None:
    """After `breaker_failures` failed contributions in a row, b is skipped (status
    `skipped`) without being asked; once the cooldown has passed one request probes it
    and, b having recovered, it is asked again."""
    clock = ManualClock()
    a = await cluster.add(
        "a",
        [BOB],
        coordinator=True,
        clock=clock,
        breaker_failures=2,
        breaker_cooldown=30,
        **FANOUT,
    )
    b = await cluster.add("b", [FRANK], coordinators=(a.url,))
    await wait_routes(cluster, a, {"frank": ("remote", "b")})
    await set_faults(cluster, b, fail="error")
    body = {"query": "anything", "agentId": "bob"}

    async def b_status() -> str:
        _, answer, _ = await client(cluster, "POST", a.url + "/api/memory/recall", body)
        return next(n["status"] for n in answer["cluster"]["nodes"] if n["node_id"] == "b")

    assert [await b_status(), await b_status()] == ["error", "error"]
    assert await b_status() == "skipped"
    await set_faults(cluster, b, fail="none")
    assert await b_status() == "skipped"  # still cooling down
    clock.advance(31)
    advanced = clock.monotonic()

    async def fresh() -> bool:
        # Both nodes heartbeated since the jump (an expiry in between is undone by then).
        records = [registry_of(a).record(n) for n in ("a", "b")]
        return all(r.state == "alive" and r.last_seen >= advanced for r in records)

    await wait_for(fresh, what="heartbeats after the clock jump")
    assert await b_status() == "ok"
    assert await b_status() == "ok"


async def test_owner_down_still_answers_with_what_the_others_hold(cluster: Cluster) -> None:
    """bob's node b is down: bob's recall through a is 200 with a's contribution (frank's
    global memory), `partial: true`, the owner b `down`, and bob among the missing."""
    clock = ManualClock()
    a = await cluster.add("a", [FRANK], coordinator=True, clock=clock, **FANOUT)
    b = await cluster.add("b", [BOB], coordinators=(a.url,))
    await wait_routes(cluster, a, {"bob": ("remote", "b")})
    franks = await remember(cluster, a.daemon_url, "deploy frank global", "frank")
    await cluster.stop_sidecar(b)
    clock.advance(registry_of(a).ttl + 1)
    await wait_routes(cluster, a, {"bob": ("unreachable", "b")})
    code, answer, headers = await client(
        cluster, "POST", a.url + "/api/memory/recall", {"query": "deploy", "agentId": "bob"}
    )
    assert code == 200, answer
    assert [hit["id"] for hit in answer["results"]] == [franks], answer
    assert answer["query"] == "deploy"
    block = answer["cluster"]
    assert block["partial"] is True and "bob" in block["missing_agents"]
    assert {n["node_id"]: (n["role"], n["status"]) for n in block["nodes"]} == {
        "b": ("owner", "down"),
        "a": ("contributor", "ok"),
    }
    assert headers["x-signet-cluster-missing"] == "1/2"


async def test_unreadable_ownership_contributes_nothing(cluster: Cluster, tmp_path: Path) -> None:
    """A node whose sidecar cannot read its daemon's memories.db (here: pointed at an empty
    workspace) fails closed: it contributes nothing and is reported as `error`, naming the
    database, while its daemon holds a matching global memory."""
    a = await cluster.add("a", [BOB], coordinator=True, **FANOUT)
    b = await cluster.add("b", [FRANK], coordinators=(a.url,), workspace=str(tmp_path / "empty"))
    await cluster.wait_states(a, {"a": "alive", "b": "alive"})
    await remember(cluster, b.daemon_url, "deploy note on b")
    code, answer, _ = await client(
        cluster, "POST", a.url + "/api/memory/recall", {"query": "deploy", "agentId": "bob"}
    )
    assert code == 200 and answer["results"] == []
    node_b = next(n for n in answer["cluster"]["nodes"] if n["node_id"] == "b")
    assert node_b["status"] == "error" and "memories.db" in node_b["error"]


async def test_contribute_endpoint_validates_its_input(cluster: Cluster) -> None:
    """The internal endpoint refuses an isolated reader, a missing query and a bad limit
    with one readable line each (400)."""
    a = await cluster.add("a", [], coordinator=True)
    code, body = await cluster.post(
        a.url + "/api/cluster/contribute",
        {"reader": {"agent_id": "x", "read_policy": "isolated"}, "recall": {}, "limit": 99},
        signer=cluster.signer_for("b"),  # a sidecar's call
    )
    assert code == 400
    text = " ".join(body["details"])
    assert "isolated" in text and "recall.query" in text and "limit" in text
