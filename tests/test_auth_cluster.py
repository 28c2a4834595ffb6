"""Signed requests across real sidecars: every cluster and admin route refuses unsigned, badly
signed, replayed, stale and wrong-node requests; a stolen heartbeat replayed later is refused;
key rotation keeps the cluster up."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from cli.main import cli
from sidecar import keys
from signet_cluster.clock import ManualClock
from signet_cluster.security.keyring import Keyring, load_keyring_file, new_key, save_keyring
from signet_cluster.security.signing import Signer

from .cluster_helpers import Cluster, Node, free_port, registry_of, wait_for

ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]
BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]
OUTSIDER = "198.51.100.23"  # TEST-NET-2: the peer-address hook pretends a remote caller
PUBLIC = {"/livez", "/readyz", "/api/cluster/openapi.json"}


def cluster_routes(node: Node) -> list[tuple[str, str]]:
    """Every (method, path) the sidecar serves under /api/cluster/, parameters filled in."""
    found: set[tuple[str, str]] = set()
    for route in node.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if not path.startswith("/api/cluster/") or path in PUBLIC or route.method == "HEAD":
            continue
        path = re.sub(r"\{[^}]*\}", "nosuchnode", path)
        methods = ["GET", "POST"] if route.method == "*" else [route.method]
        found.update((m, path) for m in methods)
    return sorted(found)


def stranger() -> Signer:
    wrong = new_key("not-the-cluster-secret-" + "q" * 30, "stolen-id")
    return Signer(lambda: Keyring(keys=(wrong,), primary=wrong.id), "b", wall=time.time)


async def test_every_cluster_route_refuses_unsigned_bad_replayed_and_stale(
    cluster: Cluster,
) -> None:
    """For each /api/cluster/ route: unsigned from another host, signed with a key the
    cluster does not hold, signed then tampered, replayed, and stale requests get 401 with
    the reason, from loopback too; admin routes refuse unsigned loopback callers; none of
    it changes the registry."""
    a = await cluster.add("a", ALICE, coordinator=True)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"a": "alive", "b": "alive"})
    auth = a.app[keys.AUTH]
    routes = cluster_routes(a)
    paths = {p for _m, p in routes}
    assert {"/api/cluster/heartbeat", "/api/cluster/join", "/api/cluster/status"} <= paths
    await cluster.stop_sidecar(b)  # nothing else changes the registry while we probe
    # ... once b is marked down (that change must not land in the middle of the probe).
    await cluster.wait_states(a, {"b": "down"})
    before = registry_of(a).version
    body = b"{}"
    ctype = {"Content-Type": "application/json"}
    for method, path in routes:
        url = a.url + path
        where = f"{method} {path}"
        auth.peer_override = OUTSIDER
        code, answer, headers = await cluster.request(
            method, url, data=body, headers=ctype, signed=False
        )
        assert code == 401 and answer["reason"] == "unsigned", where
        assert headers["WWW-Authenticate"].startswith("Signet-HMAC-SHA256"), where
        auth.peer_override = None

        code, answer, _ = await cluster.request(
            method, url, data=body, headers=ctype, signer=stranger()
        )
        assert code == 401 and answer["reason"] == "unknown_key", where

        signed = cluster.signer.headers(method, a.url.split("//")[1], path, body, ctype)
        code, answer, _ = await cluster.request(
            method, url, data=b'{"x": 1}', headers={**ctype, **signed}, signed=False
        )
        assert code == 401 and answer["reason"] == "bad_signature", where

        code, answer, _ = await cluster.request(
            method, url, data=body, headers={**ctype, **signed}, signed=False
        )
        assert code != 401, (where, answer)
        code, answer, _ = await cluster.request(
            method, url, data=body, headers={**ctype, **signed}, signed=False
        )
        assert code == 401 and answer["reason"] == "replayed", where

        old = Signer(lambda: cluster.keyring, "operator", wall=lambda: time.time() - 120)
        code, answer, _ = await cluster.request(method, url, data=body, headers=ctype, signer=old)
        assert code == 401 and answer["reason"] == "stale", where
        assert "+" not in answer["error"] or "s from this sidecar's clock" in answer["error"]

        code, answer, _ = await cluster.request(method, url, data=body, headers=ctype, signed=False)
        # Unsigned from loopback: admin and sidecar-to-sidecar routes still refuse (the
        # cluster has a key); reads are the local operator's.
        if method not in ("GET", "HEAD"):
            assert code == 401, (where, answer)
        else:
            assert code != 401, (where, answer)
    assert registry_of(a).version == before
    assert auth.refused > 0


async def test_heartbeat_may_only_describe_its_signer(cluster: Cluster) -> None:
    """A heartbeat signed by node b that describes node c (and so claims c's agents) is
    refused with 403 and leaves the registry unchanged."""
    a = await cluster.add("a", ALICE, coordinator=True)
    await wait_for(lambda: _known(a, "a"), what="coordinator self-registration")
    before = registry_of(a).version
    beat = _heartbeat("c", [{"id": "alice", "read_policy": "shared"}])
    code, answer, _ = await cluster.request(
        "POST",
        a.url + "/api/cluster/heartbeat",
        data=json.dumps(beat).encode(),
        headers={"Content-Type": "application/json"},
        signer=cluster.signer_for("b"),
    )
    assert code == 403 and answer["details"]["reason"] == "wrong_node"
    assert "may only speak for itself" in answer["error"]
    assert registry_of(a).version == before and registry_of(a).record("c") is None
    code, _answer, _ = await cluster.request(
        "POST",
        a.url + "/api/cluster/heartbeat",
        data=json.dumps(beat).encode(),
        headers={"Content-Type": "application/json"},
        signer=cluster.signer_for("c"),
    )
    assert code == 200 and registry_of(a).record("c") is not None


async def test_refused_heartbeats_are_counted_by_outcome(cluster: Cluster) -> None:
    """Heartbeats the auth layer refuses (unsigned, or signed with a key the cluster does
    not hold) still count in `signet_cluster_heartbeats_received_total` as `unauthorized`,
    as documented: a node whose key is wrong shows up on the coordinator's dashboard."""
    a = await cluster.add("a", ALICE, coordinator=True)
    registry = a.app[keys.METRICS].registry

    def received(outcome: str) -> float:
        return (
            registry.get_sample_value(
                "signet_cluster_heartbeats_received_total", {"outcome": outcome}
            )
            or 0.0
        )

    beat = json.dumps(_heartbeat("b", [])).encode()
    ctype = {"Content-Type": "application/json"}
    url = a.url + "/api/cluster/heartbeat"
    code, _answer, _ = await cluster.request("POST", url, data=beat, headers=ctype, signed=False)
    assert code == 401
    code, _answer, _ = await cluster.request(
        "POST", url, data=beat, headers=ctype, signer=stranger()
    )
    assert code == 401
    assert received("unauthorized") == 2
    # Other routes' refusals are not heartbeats.
    code, _answer, _ = await cluster.request("POST", a.url + "/api/cluster/join", signed=False)
    assert code == 401 and received("unauthorized") == 2


def _seq(node: Node, node_id: str) -> int:
    record = registry_of(node).record(node_id)
    assert record is not None and record.heartbeat is not None
    return int(record.heartbeat.seq)


async def _known(node: Node, node_id: str) -> bool:
    return registry_of(node).record(node_id) is not None


def _heartbeat(node_id: str, agents: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "protocol": {"min": 1, "max": 1},
        "node_id": node_id,
        "instance_id": "i-" + node_id,
        "url": f"http://127.0.0.1:{free_port()}",
        "sidecar_version": "0.1.0",
        "daemon": {"flavor": "ts", "version": "0.145.7", "healthy": True},
        "agents": agents,
        "seq": 1,
        "sent_at": time.time(),
    }


async def test_stolen_heartbeat_replayed_later_is_refused(cluster: Cluster) -> None:
    """A heartbeat captured on the wire (through a recording relay) is refused when sent
    again at once (nonce seen) and later (stale), and the replays change nothing."""
    captured: list[tuple[str, dict[str, str], bytes]] = []
    relay_port = free_port()
    # The relay forwards to a as a port forward would: a answers to the relay's name too.
    a = await cluster.add(
        "a", ALICE, coordinator=True, auth_host_names=(f"127.0.0.1:{relay_port}",)
    )

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        captured.append((request.raw_path, dict(request.headers), body))
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                a.url + request.raw_path, data=body, headers=dict(request.headers)
            ) as resp,
        ):
            return web.Response(
                status=resp.status, body=await resp.read(), content_type="application/json"
            )

    relay_app = web.Application()
    relay_app.router.add_post("/api/cluster/heartbeat", relay)
    relay_server = TestServer(relay_app, host="127.0.0.1", port=relay_port)
    await relay_server.start_server()
    try:
        relay_url = str(relay_server.make_url("")).rstrip("/")
        b = await cluster.add("b", BOB, coordinators=(relay_url,))
        await cluster.wait_states(a, {"b": "alive"})
        await cluster.stop_sidecar(b)
        path, headers, body = captured[-1]
        seq = _seq(a, "b")
        assert json.loads(body)["node_id"] == "b" and headers["x-signet-cluster-node"] == "b"

        code, answer, _ = await cluster.request(
            "POST", a.url + path, data=body, headers=headers, signed=False
        )
        assert code == 401 and answer["reason"] == "replayed"
        a.app[keys.AUTH].clock = ManualClock(wall=time.time() + a.settings.auth_skew + 5)  # type: ignore[union-attr]
        code, answer, _ = await cluster.request(
            "POST", a.url + path, data=body, headers=headers, signed=False
        )
        assert code == 401 and answer["reason"] == "stale"
        assert _seq(a, "b") == seq
    finally:
        await relay_server.close()


async def test_a_request_is_not_accepted_again_after_a_restart(cluster: Cluster) -> None:
    """The replay cache lives in memory, so a restart empties it: a request signed before
    the sidecar (re)started is refused as stale instead of being accepted a second time
    within the skew window."""
    a = await cluster.add("a", ALICE, coordinator=True)
    beat = json.dumps(_heartbeat("q", [])).encode()
    host = a.url.split("//")[1]
    ctype = {"Content-Type": "application/json"}
    signed = cluster.signer_for("q").headers("POST", host, "/api/cluster/heartbeat", beat, ctype)
    headers = {**ctype, **signed}
    url = a.url + "/api/cluster/heartbeat"
    code, _answer, _ = await cluster.request("POST", url, data=beat, headers=headers, signed=False)
    assert code == 200
    await cluster.stop_sidecar(a)
    await cluster.start_sidecar(a)
    code, answer, _ = await cluster.request("POST", url, data=beat, headers=headers, signed=False)
    assert code == 401 and answer["reason"] == "signed_before_start", answer
    assert "before this sidecar started" in answer["error"]
    assert registry_of(a).record("q") is None


def _keyring_cli(*args: str) -> str:
    result = CliRunner().invoke(cli, ["keyring", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


async def test_rotation_keeps_the_cluster_up(cluster: Cluster, tmp_path: Path) -> None:
    """Install a new key on every node, make it primary node by node, remove the old one:
    heartbeats are accepted throughout (no refusals, seq keeps rising), and afterwards a
    request signed with the removed key is refused."""
    files = {}
    for name in ("a", "b", "c"):
        files[name] = tmp_path / f"{name}.keyring"
        save_keyring(files[name], cluster.keyring)
    a = await cluster.add("a", ALICE, coordinator=True, keyring_file=str(files["a"]))
    b = await cluster.add("b", BOB, coordinators=(a.url,), keyring_file=str(files["b"]))
    c = await cluster.add("c", [], coordinators=(a.url,), keyring_file=str(files["c"]))
    nodes = {"a": a, "b": b, "c": c}
    await cluster.wait_states(a, {"a": "alive", "b": "alive", "c": "alive"})
    old_id = cluster.keyring.primary
    new_secret = tmp_path / "new.key"
    result = CliRunner().invoke(cli, ["keygen", "--out", str(new_secret)])
    assert result.exit_code == 0 and oct(new_secret.stat().st_mode)[-3:] == "600"

    async def loaded(check: Any) -> None:
        for node in nodes.values():
            auth = node.app[keys.AUTH]

            async def ready(auth: Any = auth) -> bool:
                return bool(check(auth.keyring.current))

            await wait_for(ready, what=f"{node.name} reloads its keyring")

    async def heartbeats_flow() -> None:
        seqs = {n: _seq(a, n) for n in ("b", "c")}

        async def advanced() -> bool:
            return all(_seq(a, n) > s for n, s in seqs.items())

        await wait_for(advanced, what="heartbeats still accepted")

    for name in ("b", "a", "c"):  # any order works
        _keyring_cli(
            "install",
            "--keyring-file",
            str(files[name]),
            "--secret-file",
            str(new_secret),
            "--key-id",
            "k2",
        )
        await heartbeats_flow()
    await loaded(lambda ring: "k2" in ring.ids())
    for name in ("c", "a", "b"):
        _keyring_cli("use", "k2", "--keyring-file", str(files[name]))
        await heartbeats_flow()
    await loaded(lambda ring: ring.primary == "k2")
    cluster.keyring = load_keyring_file(files["a"])
    for name in ("a", "b", "c"):
        out = _keyring_cli("remove", old_id, "--keyring-file", str(files[name]))
        assert "new.key" not in out and new_secret.read_text().strip() not in out
    await loaded(lambda ring: ring.ids() == ["k2"])
    await heartbeats_flow()
    await cluster.wait_states(a, {"a": "alive", "b": "alive", "c": "alive"})
    assert sum(n.app[keys.AUTH].refused for n in nodes.values()) == 0

    old = Keyring(keys=(new_key(cluster_secret(), old_id),), primary=old_id)
    code, answer, _ = await cluster.request(
        "GET", a.url + "/api/cluster/status", signer=Signer(lambda: old, "x", wall=time.time)
    )
    assert code == 401 and answer["reason"] == "unknown_key"
    env = {"SIGNET_CLUSTER_SECRET": "", "SIGNET_CLUSTER_KEYRING_FILE": str(files["a"])}
    result = await asyncio.to_thread(
        CliRunner().invoke,
        cli,
        ["--sidecar", a.url, "keyring", "list", "--live", "--json"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["keyring"]["keys"] == ["k2"]


def cluster_secret() -> str:
    from .cluster_helpers import TEST_SECRET

    return TEST_SECRET
