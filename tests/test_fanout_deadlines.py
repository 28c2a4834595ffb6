"""Deadlines that fit the daemons and breakers that open on failures, not slowness: the
learned budgets (signet_cluster.latency), the breaker rules (signet_cluster.breaker), how long
a read waits for its contributors (sidecar.federation.legs), the contributor's time-split
windows (sidecar.federation.contribute), and a slow-but-healthy node on dev daemons."""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.federation.contribute import just_after, split_span, window_cap
from sidecar.federation.health import FederationState
from sidecar.federation.legs import LegResult, Outcome, Pending, await_contributions
from signet_cluster.breaker import Breakers
from signet_cluster.explain import cluster_problems
from signet_cluster.latency import MIN_SAMPLES, Latencies

from .cluster_helpers import Cluster, wait_for
from .routing_helpers import BOB, FRANK, client, remember, set_faults, wait_routes


def test_a_node_gets_the_ceiling_until_its_latency_is_known_then_p99_with_headroom() -> None:
    book = Latencies()
    limits = {"ceiling": 2.0, "headroom": 3.0, "grace": 0.05}
    for _ in range(MIN_SAMPLES - 1):
        book.observe("b", 0.010)
    assert book.budget("b", **limits) == 2.0
    book.observe("b", 0.040)
    assert book.high("b") == 0.040
    assert abs(book.budget("b", **limits) - (0.040 * 3 + 0.05)) < 1e-9
    book.observe("b", 5.0)  # a very slow answer: the budget follows, up to the ceiling
    assert book.budget("b", **limits) == 2.0


def test_a_restarted_node_is_learned_again() -> None:
    """A new sidecar instance: its old latencies are dropped, so it gets the ceiling."""
    state = FederationState(breakers=Breakers())
    state.restarted("b", "first")
    for _ in range(MIN_SAMPLES):
        state.latencies.observe("b", 0.010)
    state.restarted("b", "first")
    assert state.latencies.high("b") == 0.010
    state.restarted("b", "second")
    assert state.latencies.high("b") is None


def test_a_breaker_opens_after_failures_in_a_row_and_a_success_resets_it() -> None:
    breakers = Breakers(threshold=3, cooldown=5.0)
    for _ in range(2):
        breakers.record("b", False, 0.0, "answered 500")
    breakers.record("b", True, 0.0)  # a success in between: the count starts again
    for _ in range(2):
        breakers.record("b", False, 1.0, "answered 500")
    assert breakers.admit("b", 1.0) is None and breakers.state("b", 1.0) == "closed"
    breakers.record("b", False, 1.0, "connection refused")
    reason = breakers.admit("b", 2.0)
    assert reason is not None and "connection refused" in reason and "3 failures" in reason
    assert breakers.summary("b", 2.0) | {"last_error": None} == {
        "breaker": "open",
        "failures_in_a_row": 3,
        "last_error": None,
        "opened": 1,
    }
    assert breakers.admit("b", 6.5) is None  # cooled down: this request probes it
    assert breakers.admit("b", 6.5) is not None  # the others still skip it
    breakers.record("b", True, 6.6)
    assert breakers.state("b", 6.6) == "closed"


def _pending(task: asyncio.Task[Outcome], budget: float) -> Pending:
    return Pending(LegResult(node_id="b", role="contributor"), task, budget)


async def test_no_contributor_is_cut_while_the_owner_has_not_answered() -> None:
    """Budget spent long ago, but the owner is still working: the contributor is waited for."""
    owner_done, contributor_done = asyncio.Event(), asyncio.Event()

    async def contributor() -> Outcome:
        await contributor_done.wait()
        return Outcome(hits=[{"id": "m1"}], took_ms=1.0)

    owner = asyncio.create_task(owner_done.wait())
    leg = _pending(asyncio.create_task(contributor()), budget=0.0)
    waiting = asyncio.create_task(await_contributions([leg], owner, 60.0, started=0.0))
    await asyncio.sleep(0)
    contributor_done.set()
    await waiting
    assert (leg.leg.status, leg.leg.hits) == ("ok", [{"id": "m1"}])
    owner_done.set()
    await owner


async def test_a_contributor_past_its_budget_and_the_owners_time_is_cut_but_keeps_running() -> None:
    release = asyncio.Event()

    async def contributor() -> Outcome:
        await release.wait()
        return Outcome(took_ms=1.0)

    owner = asyncio.create_task(asyncio.sleep(0))
    await owner
    task = asyncio.create_task(contributor())
    leg = _pending(task, budget=0.0)
    await await_contributions([leg], owner, 0.0, started=0.0)
    assert leg.leg.status == "timeout" and "still running" in (leg.leg.error or "")
    assert not task.done()  # not cancelled: its answer still teaches the latency
    release.set()
    assert (await task).status == "ok"


def test_a_span_is_split_inside_its_hits_creation_times() -> None:
    hits = [{"created_at": f"2026-12-04T10:00:0{n}.000Z"} for n in range(4)]
    assert split_span((None, None), hits) == [
        (None, "2026-12-04T10:00:01.000Z"),
        ("2026-12-04T10:00:01.001Z", None),
    ]
    same = [{"created_at": "2026-12-04T10:00:00.000Z"}] * 3
    assert split_span((None, None), same) is None  # cannot be told apart by time
    assert just_after("2026-12-04T10:00:00.999Z") == "2026-12-04T10:00:01.000Z"
    assert just_after("2026-12-04T10:00:00.000001+00:00") == "2026-12-04T10:00:00.000002+00:00"
    assert just_after("yesterday") is None


def test_the_window_cap_is_the_daemons_top_k(tmp_path: Any) -> None:
    assert window_cap(tmp_path) == 20
    (tmp_path / "agent.yaml").write_text("search:\n  alpha: 0.7\n  top_k: 35\n")
    assert window_cap(tmp_path) == 35
    (tmp_path / "agent.yaml").write_text("search:\n  top_k: 35\n")  # ignored without alpha
    assert window_cap(tmp_path) == 20


async def test_a_slow_healthy_node_is_learned_not_broken(cluster: Cluster) -> None:
    """b answers in 0.3 s, then suddenly in 2 s: the first slow read is cut at b's learned
    budget (timeout, reported), its answer still arrives in the background and is learned,
    and the next read waits for b and gets its memory. b's breaker never opens."""
    a = await cluster.add(
        "a", [BOB], coordinator=True, fanout_ceiling=6.0, breaker_failures=1, daemon_timeout=8.0
    )
    b = await cluster.add("b", [FRANK], coordinators=(a.url,), daemon_timeout=8.0)
    await wait_routes(cluster, a, {"frank": ("remote", "b")})
    franks = await remember(cluster, b.daemon_url, "deploy note of frank", "frank")
    body = {"query": "deploy", "agentId": "bob"}

    async def read_b() -> dict[str, Any]:
        code, answer, _ = await client(cluster, "POST", a.url + "/api/memory/recall", body)
        assert code == 200, answer
        leg = next(n for n in answer["cluster"]["nodes"] if n["node_id"] == "b")
        return leg | {"ids": [hit["id"] for hit in answer["results"]]}

    await set_faults(cluster, b, latency_ms=300)
    for _ in range(6):
        assert (await read_b())["status"] == "ok"
    await set_faults(cluster, b, latency_ms=2000)
    cut = await read_b()
    assert cut["status"] == "timeout" and "not counted as a failure" in cut["error"]

    async def learned() -> bool:
        _, status = await cluster.get(a.url + "/api/cluster/status")
        health = status["federation"]["nodes"]["b"]
        return bool(health["p99_ms"] >= 1500 and health["breaker"] == "closed")

    await wait_for(learned, timeout=15, what="b's slow answer learned")
    after = await read_b()
    assert after["status"] == "ok" and franks in after["ids"]
    _, status = await cluster.get(a.url + "/api/cluster/status")
    assert status["federation"]["nodes"]["b"]["opened"] == 0
    code, text, _ = await client(cluster, "GET", a.url + "/metrics")
    assert code == 200
    assert 'signet_cluster_fanout_breaker_open{node_id="b"} 0.0' in text
    assert 'signet_cluster_fanout_node_budget_seconds{node_id="b"}' in text


def test_an_open_breaker_is_a_problem_in_status() -> None:
    """`status` (and its exit code) lists a contributor the asking sidecar skips."""
    status = {
        "nodes": [],
        "federation": {
            "as_seen_by": "a",
            "nodes": {
                "b": {"breaker": "open", "last_error": "answered 500"},
                "c": {"breaker": "closed", "last_error": None},
            },
        },
    }
    assert cluster_problems(status) == [
        "federated reads through a skip b: circuit breaker open (last error: answered 500)"
    ]
