"""The etcd registry backend across real sidecars, dev daemons and a real etcd: no
coordinator anywhere; leases, claims and watches do its job."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from structlog.testing import capture_logs

from sidecar import keys
from sidecar.etcd.admin import set_adoption
from signet_cluster.etcd.client import EtcdClient

from .cluster_helpers import Cluster, Node, free_port, wait_for, write_roster
from .etcd_helpers import (
    ALICE,
    BOB,
    CAROL,
    PREFIX,
    SHARED_X,
    EtcdServer,
    add,
    backend,
    etcd,  # noqa: F401  (fixture)
    etcd_keys,
    etcd_settings,
    has_claim,
    readyz,
    view,
    wait_view,
)
from .routing_helpers import db_rows, remember


async def test_nodes_find_each_other_through_etcd_without_a_coordinator(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """Three sidecars pointed only at etcd list each other alive, route every agent to its
    owner, say their view comes from etcd, and are ready; etcd holds a member record, a
    leased heartbeat and a claim per agent (never one for `default`)."""
    a = await add(cluster, etcd, "a", ALICE)
    b = await add(cluster, etcd, "b", BOB)
    c = await add(cluster, etcd, "c", CAROL)
    expected = {"alice": "a", "bob": "b", "carol": "c"}
    for node in (a, b, c):
        await wait_view(cluster, node, {"a": "alive", "b": "alive", "c": "alive"}, expected)
    status = await cluster.status(b)
    assert status["view"]["source"] == "etcd" and status["view"]["stale"] is False
    assert status["coordinators"] == [] and status["collisions"] == []
    assert status["etcd"]["ok"] is True and status["etcd"]["watch"]["connected"] is True
    assert status["etcd"]["lease_ttl_s"] == 2
    carol = next(n for n in status["nodes"] if n["node_id"] == "c")["agents"]
    assert {x["id"]: x["policy_group"] for x in carol}["carol"] == "ops"
    code, body = await readyz(cluster, a)
    assert code == 200 and "etcd" in body["reason"]
    stored = await etcd_keys(etcd)
    assert {k for k in stored if k.startswith("claims/")} == {
        "claims/alice",
        "claims/bob",
        "claims/carol",
    }
    assert stored["claims/bob"]["node_id"] == "b"
    assert stored["members/a"]["url"] == a.url and stored["nodes/c"]["node_id"] == "c"
    async with aiohttp.ClientSession() as session:
        leased = await EtcdClient(session, [etcd.url], timeout=2).get(PREFIX + "nodes/a")
        member = await EtcdClient(session, [etcd.url], timeout=2).get(PREFIX + "members/a")
    assert leased is not None and leased.lease == backend(a).lease.id  # type: ignore[union-attr]
    assert member is not None and member.lease == 0


async def test_writes_go_to_the_owner_etcd_names(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """Routing uses the etcd view like a coordinator's table: a remember for bob sent to a's
    sidecar is stored by b's daemon (bob's owner) and not by a's."""
    a = await add(cluster, etcd, "a", ALICE)
    b = await add(cluster, etcd, "b", BOB)
    await wait_view(cluster, a, {"a": "alive", "b": "alive"}, {"alice": "a", "bob": "b"})
    await remember(cluster, a.url, "sent to a, for bob", agent="bob")
    query = "SELECT agent_id FROM memories WHERE content = ?"
    assert db_rows(b, query, ("sent to a, for bob",)) == [("bob",)]
    assert db_rows(a, query, ("sent to a, for bob",)) == []


def sidecar_config(tmp: Path, name: str, server: EtcdServer, node: Node, port: int) -> Path:
    config = tmp / f"{name}.toml"
    config.write_text(
        f'node_id = "{name}"\nport = {port}\ndaemon_url = "{node.daemon_url}"\n'
        f'workspace = "{node.workspace}"\nstate_dir = "{node.state_dir}"\n'
        "heartbeat_interval = 0.25\npeer_ttl = 2.0\n"
        f'log_format = "json"\n[registry]\nbackend = "etcd"\n[etcd]\nendpoints = ["{server.url}"]\n'
    )
    return config


def spawn_sidecar(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNET_CLUSTER_")}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )


async def test_lease_expiry_removes_a_dead_node_from_routing(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A sidecar killed with SIGKILL (no chance to revoke its lease) drops out of routing
    once its lease expires: its heartbeat key is gone, the others list it as down (not
    forgotten), and its claim stays, so when it comes back its agent routes to it again."""
    a = await add(cluster, etcd, "a", ALICE)
    b = cluster.nodes["b"] = Node(
        name="b", workspace=tmp_path / "b" / "workspace", state_dir=tmp_path / "b" / "state"
    )
    write_roster(b.workspace, BOB)
    await cluster.start_daemon(b)
    config = sidecar_config(tmp_path, "b", etcd, b, free_port())
    process = spawn_sidecar(config, tmp_path / "b.log")
    try:
        await wait_view(
            cluster, a, {"a": "alive", "b": "alive"}, {"alice": "a", "bob": "b"}, timeout=30
        )
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 10)
        assert "nodes/b" in await etcd_keys(etcd)  # nobody revoked anything
        await wait_view(cluster, a, {"a": "alive", "b": "down"}, {"alice": "a"})
        stored = await etcd_keys(etcd)
        assert "nodes/b" not in stored and "members/b" in stored
        assert stored["claims/bob"]["node_id"] == "b"
        process = spawn_sidecar(config, tmp_path / "b.log")
        await wait_view(
            cluster, a, {"a": "alive", "b": "alive"}, {"alice": "a", "bob": "b"}, timeout=30
        )
    finally:
        if process.poll() is None:
            process.kill()
        await asyncio.to_thread(process.wait, 10)


async def test_first_claim_wins_everywhere_and_adoption_overrides_it(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """Two nodes host agent x: the one that claimed it first owns it on both nodes' views,
    the collision is listed identically on both; an adoption (adoptions/x) moves it on both,
    and clearing the adoption hands it back to the claim."""
    a = await add(cluster, etcd, "a", SHARED_X + ALICE)
    await wait_for(lambda: has_claim(etcd, "x", "a"), what="a's claim of x")
    b = await add(cluster, etcd, "b", SHARED_X + BOB)
    routes = {"x": "a", "alice": "a", "bob": "b"}
    states = {"a": "alive", "b": "alive"}
    for node in (a, b):
        await wait_view(cluster, node, states, routes)
    collisions = [(await cluster.status(n))["collisions"] for n in (a, b)]
    assert (
        collisions[0]
        == collisions[1]
        == [{"agent_id": "x", "winner": "a", "claimants": ["a", "b"], "rule": "first_claim"}]
    )
    await set_adoption(backend(b), "x", "b")
    for node in (a, b):
        await wait_view(cluster, node, states, {**routes, "x": "b"})
    adopted = (await cluster.status(a))["collisions"]
    assert adopted == [{"agent_id": "x", "winner": "b", "claimants": ["a", "b"], "rule": "adopted"}]
    await set_adoption(backend(a), "x", None)
    for node in (a, b):
        await wait_view(cluster, node, states, routes)


async def test_simultaneous_claims_agree_on_one_owner(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """Three nodes that start at once all host agent x: whichever claim etcd serialised
    first owns x, and every node routes x to that same owner."""
    nodes = await asyncio.gather(*(add(cluster, etcd, name, SHARED_X) for name in ("a", "b", "c")))
    await wait_for(lambda: _claimed(etcd, "x"), what="a claim of x")
    owner = (await etcd_keys(etcd))["claims/x"]["node_id"]
    for node in nodes:
        await wait_view(cluster, node, {"a": "alive", "b": "alive", "c": "alive"}, {"x": owner})


async def _claimed(server: EtcdServer, agent: str) -> bool:
    return f"claims/{agent}" in await etcd_keys(server)


async def test_a_lease_revoked_behind_the_nodes_back_is_granted_again(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """When etcd loses a node's lease (revoked by someone else, or expired while etcd was
    away), the node notices at its next renewal, takes a new lease and writes its
    heartbeat again, so the others route to it again."""
    a = await add(cluster, etcd, "a", ALICE)
    b = await add(cluster, etcd, "b", BOB)
    await wait_view(cluster, b, {"a": "alive", "b": "alive"}, {"alice": "a", "bob": "b"})
    old = backend(a).lease
    assert old is not None
    with capture_logs() as logs:
        async with aiohttp.ClientSession() as session:
            assert await EtcdClient(session, [etcd.url], timeout=2).lease_revoke(old.id)

        async def regranted() -> bool:
            lease = backend(a).lease
            return lease is not None and lease.id != old.id and backend(a).registered is not None

        await wait_for(regranted, what="a new lease on a")
        await wait_view(cluster, b, {"a": "alive", "b": "alive"}, {"alice": "a", "bob": "b"})
    assert any(e["event"] == "etcd_lease_lost" for e in logs)
    async with aiohttp.ClientSession() as session:
        stored = await EtcdClient(session, [etcd.url], timeout=2).get(PREFIX + "nodes/a")
    assert stored is not None and stored.lease == backend(a).lease.id  # type: ignore[union-attr]


async def test_routing_survives_an_etcd_restart_and_the_watch_resumes(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """While etcd is down a sidecar keeps routing from its last view, says so in /readyz
    (503 with the reason) and status (etcd error, stale view); once etcd is back it is ready
    again and sees changes made after the restart (its watch reconnected)."""
    a = await add(cluster, etcd, "a", ALICE)
    await add(cluster, etcd, "b", BOB)
    await wait_view(cluster, a, {"a": "alive", "b": "alive"}, {"alice": "a", "bob": "b"})
    await etcd.stop()

    async def not_ready() -> bool:
        code, body = await readyz(cluster, a)
        return code == 503 and "etcd unreachable" in body["reason"]

    await wait_for(not_ready, what="a to report etcd unreachable")
    status = await cluster.status(a)
    assert status["etcd"]["ok"] is False and etcd.url in status["etcd"]["error"]
    assert {r["agent_id"]: r["node_id"] for r in status["routes"]} == {"alice": "a", "bob": "b"}

    async def stale() -> bool:
        return bool((await cluster.status(a))["view"]["stale"])

    await wait_for(stale, what="the view to be reported stale")
    await etcd.start()

    async def ready() -> bool:
        return (await readyz(cluster, a))[0] == 200

    await wait_for(ready, timeout=15, what="a to be ready again")
    await add(cluster, etcd, "c", CAROL)
    await wait_view(
        cluster,
        a,
        {"a": "alive", "b": "alive", "c": "alive"},
        {"alice": "a", "bob": "b", "carol": "c"},
    )


async def test_a_sidecar_started_without_etcd_is_not_ready_until_etcd_answers(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """Start-up does not wait for etcd: the sidecar serves, /readyz is 503 naming the
    unreachable endpoint, and it registers as soon as etcd is up."""
    await etcd.stop()
    a = await add(cluster, etcd, "a", ALICE)

    async def refused() -> bool:
        code, body = await readyz(cluster, a)
        return code == 503 and body["reason"].startswith(
            "etcd has not answered yet: etcd unreachable"
        )

    await wait_for(refused, what="a /readyz naming etcd")
    assert etcd.url in (await readyz(cluster, a))[1]["reason"]
    await etcd.start()
    await wait_view(cluster, a, {"a": "alive"}, {"alice": "a"})
    assert (await readyz(cluster, a))[0] == 200


async def test_remove_forgets_a_dead_node_and_refuses_a_live_one(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """A node that stops cleanly revokes its lease and is down at once (still listed).
    `remove` of it deletes its member record and claims; `remove` of a live node is
    refused (409) and changes nothing; an unknown node is reported as not a member."""
    a = await add(cluster, etcd, "a", ALICE)
    b = await add(cluster, etcd, "b", BOB)
    c = await add(cluster, etcd, "c", CAROL)
    everyone = {"a": "alive", "b": "alive", "c": "alive"}
    await wait_view(cluster, a, everyone, {"alice": "a", "bob": "b", "carol": "c"})
    await cluster.stop_sidecar(b)
    await wait_view(cluster, a, {**everyone, "b": "down"}, {"alice": "a", "carol": "c"})
    before = await etcd_keys(etcd)
    code, body = await cluster.delete(c.url + "/api/cluster/peers/c")
    assert code == 400 and "cannot remove itself" in body["error"]
    code, body = await cluster.delete(a.url + "/api/cluster/peers/c")
    assert code == 409 and body["code"] == "node_alive"
    assert await etcd_keys(etcd) == before
    code, body = await cluster.delete(a.url + "/api/cluster/peers/b")
    assert code == 200 and body["removed"] is True and body["released_agents"] == ["bob"]
    after = await etcd_keys(etcd)
    assert not any(k.endswith("/b") or k == "claims/bob" for k in after)
    await wait_view(cluster, c, {"a": "alive", "c": "alive"}, {"alice": "a", "carol": "c"})
    assert "b" not in (await view(cluster, c))[0]
    code, body = await cluster.delete(a.url + "/api/cluster/peers/zed")
    assert code == 200 and body == {"node": "zed", "removed": False, "known": False}


@pytest.mark.parametrize("value", [b"b", b'{"node_id": "b", "note": "from etcdctl"}'])
async def test_operator_written_adoptions_are_honoured(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
    value: bytes,
) -> None:
    """An adoption written straight into etcd (bare node id, or JSON with extra fields)
    moves the agent; a record that cannot be read is ignored and logged."""
    await add(cluster, etcd, "a", SHARED_X)
    await wait_for(lambda: has_claim(etcd, "x", "a"), what="a's claim of x")
    b = await add(cluster, etcd, "b", SHARED_X)
    await wait_view(cluster, b, {"a": "alive", "b": "alive"}, {"x": "a"})
    with capture_logs() as logs:
        async with aiohttp.ClientSession() as session:
            client = EtcdClient(session, [etcd.url], timeout=2)
            await client.put(PREFIX + "adoptions/x", value)
            await wait_view(cluster, b, {"a": "alive", "b": "alive"}, {"x": "b"})
            await client.put(PREFIX + "adoptions/x", b"not json, not a node id")
            await wait_view(cluster, b, {"a": "alive", "b": "alive"}, {"x": "a"})
    assert any(e["event"] == "etcd_record_unreadable" for e in logs)


async def test_a_watch_that_cannot_resume_reads_everything_again(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """If etcd compacted the history a watch would resume from, the sidecar says so, reads
    the whole prefix again and keeps following changes from there."""
    a = await add(cluster, etcd, "a", ALICE)
    await add(cluster, etcd, "b", BOB)
    await wait_view(cluster, a, {"a": "alive", "b": "alive"}, {"alice": "a", "bob": "b"})
    async with aiohttp.ClientSession() as session:
        client = EtcdClient(session, [etcd.url], timeout=2)
        revision = await client.put("/elsewhere", b"churn")
        await client.call("/kv/compaction", {"revision": str(revision)})
    with capture_logs() as logs:
        backend(a).start_watch(1)  # as if resuming after a long outage

        async def resynced() -> bool:
            return any(e["event"] == "etcd_synced" for e in logs) and backend(a).watch_connected

        await wait_for(resynced, what="a to read everything again")
        await add(cluster, etcd, "c", CAROL)
        await wait_view(
            cluster,
            a,
            {"a": "alive", "b": "alive", "c": "alive"},
            {"alice": "a", "bob": "b", "carol": "c"},
        )
    assert any(e["event"] == "etcd_watch_compacted" for e in logs)


async def test_coordinator_operations_are_refused_clearly(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """`join` and `promote` have no meaning with the registry in etcd: both answer 409 with
    the reason, and the sidecar stays a plain member routing from etcd."""
    a = await add(cluster, etcd, "a", ALICE)
    await wait_view(cluster, a, {"a": "alive"}, {"alice": "a"})
    code, body = await cluster.post(a.url + "/api/cluster/join", {"address": "127.0.0.1:1"})
    assert code == 409 and body["code"] == "registry_backend_etcd" and "join" in body["error"]
    code, body = await cluster.post(a.url + "/api/cluster/promote", {"coordinator": True})
    assert code == 409 and "no coordinators" in body["error"]
    status = await cluster.status(a)
    assert status["coordinator"] is False and status["view"]["source"] == "etcd"


async def test_a_second_sidecar_with_the_same_node_id_waits_instead_of_fighting(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """A sidecar whose node id is already registered by another live sidecar does not
    overwrite it: it is not ready and says why, the first keeps the record, and the second
    takes over once the first has stopped (its lease gone)."""
    first = await add(cluster, etcd, "a", ALICE)
    await wait_view(cluster, first, {"a": "alive"}, {"alice": "a"})
    second = await cluster.add("a2", ALICE, node_id="a", **etcd_settings(etcd))

    async def refused() -> bool:
        code, body = await readyz(cluster, second)
        return code == 503 and "registered by another sidecar" in body["reason"]

    await wait_for(refused, what="the second sidecar to report the conflict")
    assert (await etcd_keys(etcd))["nodes/a"]["instance_id"] == first.app[keys.IDENTITY].instance_id
    await cluster.stop_sidecar(first)

    async def taken_over() -> bool:
        stored = (await etcd_keys(etcd)).get("nodes/a")
        return (
            stored is not None
            and stored["instance_id"] == second.app[keys.IDENTITY].instance_id
            and (await readyz(cluster, second))[0] == 200
        )

    await wait_for(taken_over, what="the second sidecar to register")


async def test_remove_releases_more_claims_than_one_transaction_holds(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """A dead node's 150 claims (more than etcd's 128 operations per transaction) are all
    released by `remove`, even for a node that left only claims behind."""
    a = await add(cluster, etcd, "a", ALICE)
    await wait_view(cluster, a, {"a": "alive"}, {"alice": "a"})
    async with aiohttp.ClientSession() as session:
        client = EtcdClient(session, [etcd.url], timeout=5)
        for i in range(150):
            await client.put(f"{PREFIX}claims/agent{i:03}", b'{"node_id": "ghost"}')

    async def seen() -> bool:
        return len(backend(a).cache.owners("claims")) == 151

    await wait_for(seen, what="a to see the ghost's claims")
    code, body = await cluster.delete(a.url + "/api/cluster/peers/ghost")
    assert code == 200 and body["removed"] is True
    assert body["released_agents"] == [f"agent{i:03}" for i in range(150)]
    assert set(await etcd_keys(etcd)) == {"members/a", "nodes/a", "claims/alice"}


async def test_a_claim_given_back_passes_to_the_other_host(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """Two nodes host x and a claimed it first. When a's daemon no longer has x, a gives the
    claim back (compare-and-swap delete), b claims it and every view routes x to b; neither
    sidecar keeps bookkeeping about x as someone else's agent or as a claim attempt of a."""
    a = await add(cluster, etcd, "a", SHARED_X + ALICE)
    await wait_for(lambda: has_claim(etcd, "x", "a"), what="a's claim of x")
    b = await add(cluster, etcd, "b", SHARED_X + BOB)
    states = {"a": "alive", "b": "alive"}
    await wait_view(cluster, b, states, {"x": "a", "alice": "a", "bob": "b"})
    assert backend(b)._claimed_elsewhere == {"x": "a"}
    with capture_logs() as logs:
        write_roster(a.workspace, ALICE)
        code, _body = await cluster.delete(a.daemon_url + "/api/agents/x", signed=False)
        assert code == 200
        for node in (a, b):
            await wait_view(cluster, node, states, {"x": "b", "alice": "a", "bob": "b"})
    assert any(e["event"] == "agent_claim_released" and e["agent_id"] == "x" for e in logs)
    assert await has_claim(etcd, "x", "b")
    assert "x" not in backend(a).claim_attempts and backend(b)._claimed_elsewhere == {}


async def test_an_etcd_started_afresh_is_read_again_and_filled_again(
    cluster: Cluster,
    etcd: EtcdServer,  # noqa: F811
) -> None:
    """etcd wiped and started empty on the same address (a lost volume, a re-created
    cluster): its revisions start over, so resuming the watch would wait for revisions that
    come much later. The sidecars notice their lease is gone, read everything again, and
    write their records and claims anew, so a node that joins afterwards is seen as well."""
    a = await add(cluster, etcd, "a", ALICE)
    b = await add(cluster, etcd, "b", BOB)
    async with aiohttp.ClientSession() as session:
        client = EtcdClient(session, [etcd.url], timeout=2)
        for i in range(30):  # a history well ahead of what the empty etcd will write
            await client.put(f"/elsewhere/{i}", b"x")
    both = {"a": "alive", "b": "alive"}
    await wait_view(cluster, a, both, {"alice": "a", "bob": "b"})
    await etcd.stop()
    shutil.rmtree(etcd.data_dir)
    await etcd.start()
    await wait_for(lambda: has_claim(etcd, "alice", "a"), what="a to claim alice again")
    await wait_for(lambda: has_claim(etcd, "bob", "b"), what="b to claim bob again")
    await add(cluster, etcd, "c", CAROL)
    everyone = {"a": "alive", "b": "alive", "c": "alive"}
    for node in (a, b):
        await wait_view(cluster, node, everyone, {"alice": "a", "bob": "b", "carol": "c"})
    assert set(await etcd_keys(etcd)) == {
        *(f"{kind}/{n}" for kind in ("members", "nodes") for n in "abc"),
        "claims/alice",
        "claims/bob",
        "claims/carol",
    }
