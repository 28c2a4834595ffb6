"""Safe defaults: no open listener without a key, other hosts cannot read memories unsigned,
admin needs a signature even from loopback, and secrets never show up anywhere."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from cli.main import cli
from sidecar import keys
from sidecar.app import make_app
from signet_cluster.clock import ManualClock
from signet_cluster.errors import ConfigError
from signet_cluster.settings import Settings, load_settings

from .cluster_helpers import TEST_SECRET, Cluster, Node

ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]
OUTSIDER = "198.51.100.23"


def test_non_loopback_bind_without_key_or_mtls_refuses_to_start(tmp_path: Path) -> None:
    """host 0.0.0.0 with neither a secret nor full mTLS is a settings error naming the fix,
    and make_app refuses too (Settings built directly skip validation); with a secret file,
    or with cert + key + CA, it is accepted."""
    with pytest.raises(ConfigError) as info:
        load_settings(env={}, overrides={"host": "0.0.0.0"})
    text = " ".join(info.value.problems)
    assert "reachable from other machines" in text and "signet-cluster keygen" in text
    with pytest.raises(ConfigError, match="reachable from other machines"):
        make_app(Settings(host="0.0.0.0", state_dir=str(tmp_path)))
    secret = tmp_path / "s.key"
    secret.write_text(TEST_SECRET)
    assert load_settings(env={}, overrides={"host": "0.0.0.0", "secret_file": str(secret)})
    tls = {"tls_cert_file": "c.pem", "tls_key_file": "k.pem", "tls_ca_file": "ca.pem"}
    assert load_settings(env={}, overrides={"host": "::", **tls})
    with pytest.raises(ConfigError, match="reachable"):
        load_settings(env={}, overrides={"host": "::", "tls_cert_file": "c", "tls_key_file": "k"})


async def test_serve_on_a_public_address_without_a_key_exits_with_the_reason(
    tmp_path: Path,
) -> None:
    """`signet-cluster serve --host 0.0.0.0` with no key prints why and exits 1 instead of
    listening."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "0",
        "--state-dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("SIGNET_CLUSTER_")},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1, out + err
    assert b"reachable from other machines" in err


async def _memory_requests(node: Node, cluster: Cluster) -> list[dict[str, Any]]:
    _code, body = await cluster.get(node.daemon_url + "/__devdaemon/requests", signed=False)
    return [r for r in body["requests"] if r["path"].startswith(("/api/memory", "/api/status"))]


async def test_another_host_cannot_read_a_memory_unsigned(cluster: Cluster) -> None:
    """Seen from another address (peer-address hook): recall, get-by-id and pass-through
    without a signature get 401 and never reach the daemon, a bearer token does not help
    while the daemon is not in team mode; signed, the same recall returns the memory."""
    a = await cluster.add("a", ALICE, coordinator=True)
    code, saved = await cluster.post(
        a.url + "/api/memory/remember",
        {"content": "alice keeps the launch codes in the blue folder", "agentId": "alice"},
        signed=False,
    )
    assert code == 200, saved
    memory_id = saved["id"]
    recall = {"query": "launch codes", "agentId": "alice"}
    a.app[keys.AUTH].peer_override = OUTSIDER
    before = await _memory_requests(a, cluster)
    attempts = [
        await cluster.post(a.url + "/api/memory/recall", recall, signed=False),
        await cluster.get(a.url + f"/api/memory/{memory_id}?agentId=alice", signed=False),
        await cluster.get(a.url + "/api/status", signed=False),
        await cluster.post(
            a.url + "/api/memory/recall",
            recall,
            signed=False,
            headers={"Authorization": "Bearer forged"},
        ),
        await cluster.get(a.url + "/api/cluster/status", signed=False),
    ]
    for code, body in attempts:
        assert code == 401, body
        assert "launch codes" not in json.dumps(body)
    assert await _memory_requests(a, cluster) == before
    code, body = await cluster.post(a.url + "/api/memory/recall", recall)
    assert code == 200
    assert any("launch codes" in hit["content"] for hit in body["results"])


async def test_bearer_token_is_left_to_a_team_mode_daemon(cluster: Cluster) -> None:
    """With the daemon in team mode, an unsigned request from another host that carries a
    bearer token is passed to the daemon with the token untouched (the daemon judges it);
    without a token it is still 401."""
    t = await cluster.add("t", ALICE, coordinator=True, daemon_auth_mode="team")
    t.app[keys.AUTH].peer_override = OUTSIDER
    code, _ = await cluster.post(
        t.url + "/api/memory/recall", {"query": "x", "agentId": "alice"}, signed=False
    )
    assert code == 401
    code, _ = await cluster.post(
        t.url + "/api/memory/recall",
        {"query": "x", "agentId": "alice"},
        signed=False,
        headers={"Authorization": "Bearer team-token-123"},
    )
    assert code == 200
    seen = await _memory_requests(t, cluster)
    assert seen[-1]["headers"]["authorization"] == "Bearer team-token-123"


async def test_a_bearer_token_opens_no_page_the_sidecar_serves_itself(cluster: Cluster) -> None:
    """In team mode the bearer exemption is for the daemon to judge the token: routes the
    sidecar answers itself (/metrics, the /cluster page and its files) never reach the
    daemon, so from another host a bearer token opens none of them."""
    t = await cluster.add("t", ALICE, coordinator=True, daemon_auth_mode="team")
    t.app[keys.AUTH].peer_override = OUTSIDER
    forged = {"Authorization": "Bearer anything-at-all"}
    for path in ("/metrics", "/cluster", "/cluster/static/cluster.js"):
        code, body, _ = await cluster.request("GET", t.url + path, headers=forged, signed=False)
        assert code == 401, (path, body)
        code, _body, _ = await cluster.request("GET", t.url + path)
        assert code != 401, path


async def test_team_mode_is_read_from_agent_yaml(cluster: Cluster) -> None:
    """daemon_auth_mode=auto reads `auth.mode` from the workspace's agent.yaml."""
    t = await cluster.add("t", ALICE, coordinator=True)
    assert t.app[keys.AUTH].daemon_mode == "local"
    (t.workspace / "agent.yaml").write_text("auth:\n  mode: team\n")
    t.app[keys.AUTH].reload(force=True)
    assert t.app[keys.AUTH].daemon_mode == "team"


async def test_admin_needs_a_signature_even_from_loopback(cluster: Cluster) -> None:
    """join/remove/adopt/promote unsigned from loopback get 401 naming the fix; signed they
    run; with allow_unsigned_loopback_admin they run unsigned from loopback but still not
    from another host."""
    a = await cluster.add("a", ALICE, coordinator=True)
    b = await cluster.add("b", [])
    for method, path, body in [
        ("POST", "/api/cluster/join", {"address": b.url}),
        ("DELETE", "/api/cluster/peers/b", None),
        ("POST", "/api/cluster/adopt", {"agent_id": "alice", "node_id": "a"}),
        ("POST", "/api/cluster/promote", {"coordinator": False}),
    ]:
        code, answer = await cluster._json(method, a.url + path, body, signed=False)
        assert code == 401 and "allow_unsigned_loopback_admin" in answer["error"], path
    assert a.app[keys.IDENTITY].coordinator
    code, answer = await cluster.post(a.url + "/api/cluster/join", {"address": b.url})
    assert code == 200 and answer["node_id"] == "b"

    await cluster.stop_sidecar(a)
    await cluster.start_sidecar(a, allow_unsigned_loopback_admin=True)
    code, answer = await cluster.delete(a.url + "/api/cluster/peers/b", signed=False)
    assert code == 200 and answer["removed"] is True
    a.app[keys.AUTH].peer_override = OUTSIDER
    code, answer = await cluster.post(a.url + "/api/cluster/join", {"address": b.url}, signed=False)
    assert code == 401


async def test_keyless_loopback_cluster_still_works_and_ignores_signatures(
    cluster: Cluster,
) -> None:
    """Nodes with no key (loopback only) form a cluster unsigned; a CLI that signs anyway is
    judged as unsigned there (reads work) and admin is refused with a reason saying the
    sidecar has no key."""
    keyless = {
        "keyring_file": None,
        "admin_public_keys": (),
        "coordinator_public_keys": (),
        "coordinator_key_file": None,
    }
    a = await cluster.add("a", ALICE, coordinator=True, **keyless)
    b = await cluster.add("b", [], coordinators=(a.url,), **keyless)
    await cluster.wait_states(a, {"a": "alive", "b": "alive"})
    code, _ = await cluster.get(a.url + "/api/cluster/status")
    assert code == 200
    code, answer = await cluster.post(a.url + "/api/cluster/join", {"address": b.url})
    assert code == 401 and answer["reason"] == "no_keyring"


async def test_secrets_never_appear_in_logs_status_errors_or_check_config(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With a secret file configured: logs of a run with refused requests, status, the
    keyring route, error bodies and `check-config` name key ids and paths only."""
    secret_file = tmp_path / "cluster.key"
    secret_file.write_text(TEST_SECRET + "\n")
    with structlog.testing.capture_logs() as logs:
        a = await cluster.add(
            "a", ALICE, coordinator=True, keyring_file=None, secret_file=str(secret_file)
        )
        outputs = [
            await cluster.get(a.url + "/api/cluster/status"),
            await cluster.get(a.url + "/api/cluster/keyring"),
            await cluster.post(a.url + "/api/cluster/join", {"address": "nowhere"}, signed=False),
            await cluster.post(a.url + "/api/cluster/heartbeat", {"node_id": "operator"}),
        ]
        a.app[keys.AUTH].reload(force=True)
    assert outputs[1][0] == 200 and outputs[1][1]["keyring"]["keys"] == [cluster.keyring.primary]
    result = CliRunner().invoke(
        cli, ["check-config", "--json"], env={"SIGNET_CLUSTER_SECRET_FILE": str(secret_file)}
    )
    assert result.exit_code == 0 and str(secret_file) in result.output
    texts = [json.dumps(o) for o in outputs] + [repr(logs), result.output, repr(a.settings)]
    texts.append(repr(a.app[keys.AUTH].keyring.current))
    for text in texts:
        assert TEST_SECRET not in text


async def test_signed_pass_through_reaches_the_daemon_with_its_body(cluster: Cluster) -> None:
    """A signed request from another host to a pass-through path (the auth middleware reads
    its body to check the signature) reaches the daemon with the body intact."""
    a = await cluster.add("a", ALICE, coordinator=True)
    a.app[keys.AUTH].peer_override = OUTSIDER
    code, _ = await cluster.post(a.url + "/api/documents", {"title": "signed upload"})
    assert code != 500
    _code, log = await cluster.get(a.daemon_url + "/__devdaemon/requests", signed=False)
    sent = [r for r in log["requests"] if r["path"] == "/api/documents"]
    assert sent and sent[-1]["body"] == {"title": "signed upload"}


async def test_hop_requests_must_be_signed_even_from_loopback(cluster: Cluster) -> None:
    """A request marked as a hop between sidecars (x-signet-cluster-hop) is refused unsigned,
    even from loopback, once the cluster has a key: a local process cannot pose as a peer
    sidecar to skip routing. Signed, the same hop is served."""
    a = await cluster.add("a", ALICE, coordinator=True)
    hop = {"x-signet-cluster-hop": "b"}
    body = {"query": "anything", "agentId": "alice"}
    code, answer = await cluster.post(a.url + "/api/memory/recall", body, signed=False, headers=hop)
    assert code == 401 and answer["reason"] == "unsigned"
    code, _ = await cluster.post(
        a.url + "/api/memory/recall", body, headers=hop, signer=cluster.signer_for("b")
    )
    assert code == 200


async def test_metrics_token_opens_metrics_and_nothing_else(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With metrics_token_file set, a remote scrape with the bearer token gets /metrics; the
    same token opens no other route, and a wrong token is refused."""
    token_file = tmp_path / "metrics.token"
    token_file.write_text("prometheus-scrape-token-0123456789\n")
    a = await cluster.add("a", [], coordinator=True, metrics_token_file=str(token_file))
    a.app[keys.AUTH].peer_override = "192.0.2.10"
    good = {"Authorization": "Bearer prometheus-scrape-token-0123456789"}
    code, _body, _ = await cluster.request("GET", a.url + "/metrics", headers=good, signed=False)
    assert code == 200
    code, _body, _ = await cluster.request(
        "GET", a.url + "/api/cluster/status", headers=good, signed=False
    )
    assert code == 401
    bad = {"Authorization": "Bearer prometheus-scrape-token-wrong-000"}
    code, _body, _ = await cluster.request("GET", a.url + "/metrics", headers=bad, signed=False)
    assert code == 401


async def test_an_unchecked_bearer_token_gets_nothing_while_the_owner_is_down(
    cluster: Cluster,
) -> None:
    """Only the owner's daemon can judge a bearer token. With the owner down, a remote
    caller holding any token gets 503 `token_unverified` for a federated read (not the other
    nodes' global memories) and its remember is not spooled on the token's word."""
    clock = ManualClock()
    bob = [{"name": "bob", "memory": {"read_policy": "shared"}}]
    carol = [{"name": "carol", "memory": {"read_policy": "shared"}}]
    a = await cluster.add("a", carol, coordinator=True, clock=clock, daemon_auth_mode="team")
    b = await cluster.add("b", bob, coordinators=(a.url,), daemon_auth_mode="team")
    await cluster.wait_states(a, {"b": "alive"})
    code, _ = await cluster.post(
        a.url + "/api/memory/remember",
        {"content": "Carol's global note about the staging keys", "agentId": "carol"},
    )
    assert code == 200
    await cluster.stop_sidecar(b)
    clock.advance(a.settings.ttl + 1)  # type: ignore[union-attr]
    await cluster.wait_states(a, {"b": "down"})

    a.app[keys.AUTH].peer_override = OUTSIDER
    forged = {"Authorization": "Bearer forged"}
    code, body = await cluster.post(
        a.url + "/api/memory/recall",
        {"query": "staging", "agentId": "bob"},
        signed=False,
        headers=forged,
    )
    assert code == 503 and body["code"] == "token_unverified", body
    assert "staging keys" not in json.dumps(body)
    code, body = await cluster.post(
        a.url + "/api/memory/remember",
        {"content": "written on a forged token", "agentId": "bob"},
        signed=False,
        headers=forged,
    )
    assert code == 503 and body["code"] == "owner_unreachable", body
