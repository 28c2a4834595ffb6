"""mTLS between sidecars with certificates made in the test (trustme): the cluster forms over
TLS, node identity comes from the certificate, unknown certificates are refused, and new
certificate files are used without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from sidecar import keys
from signet_cluster.errors import ConfigError
from signet_cluster.security.tls import TlsManager

from .cluster_helpers import Cluster, Node, registry_of, wait_for

ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]
JSON = {"Content-Type": "application/json"}


ADMIN_OU = "signet-cluster-admin"
# An mTLS-only cluster: no cluster key, no role keys; certificates say who is who.
MTLS_ONLY = {
    "keyring_file": None,
    "admin_public_keys": (),
    "coordinator_public_keys": (),
    "coordinator_key_file": None,
}


def issue(ca: trustme.CA, folder: Path, name: str, ou: str | None = None) -> dict[str, str]:
    """Certificate + key for `name` (CN = node id, valid for 127.0.0.1; subject OU `ou`
    when given: the role), and the CA file."""
    folder.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert("127.0.0.1", "localhost", common_name=name, organization_unit_name=ou)
    paths = {
        "tls_cert_file": str(folder / f"{name}.crt"),
        "tls_key_file": str(folder / f"{name}.key"),
        "tls_ca_file": str(folder / "ca.crt"),
    }
    cert.cert_chain_pems[0].write_to_path(paths["tls_cert_file"])
    cert.private_key_pem.write_to_path(paths["tls_key_file"])
    ca.cert_pem.write_to_path(paths["tls_ca_file"])
    return paths


def client_context(files: dict[str, str] | None, ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    if files is not None:
        ctx.load_cert_chain(files["tls_cert_file"], files["tls_key_file"])
    return ctx


def heartbeat(node_id: str) -> bytes:
    return json.dumps(
        {
            "protocol": {"min": 1, "max": 1},
            "node_id": node_id,
            "instance_id": "i",
            "url": "https://127.0.0.1:1",
            "sidecar_version": "0.1.0",
            "daemon": {"flavor": "ts", "healthy": True},
            "agents": [{"id": "alice", "read_policy": "shared"}],
            "seq": 1,
            "sent_at": time.time(),
        }
    ).encode()


async def mtls_pair(
    cluster: Cluster, tmp_path: Path, **extra: Any
) -> tuple[Node, Node, trustme.CA]:
    ca = trustme.CA()
    settings = {**MTLS_ONLY, **extra}
    a = await cluster.add(
        "a",
        ALICE,
        coordinator=True,
        **issue(ca, tmp_path / "a", "a", "signet-cluster-coordinator"),
        **settings,
    )
    b = await cluster.add(
        "b", [], coordinators=(a.url,), **issue(ca, tmp_path / "b", "b"), **settings
    )
    cluster.ssl_context = client_context(
        issue(ca, tmp_path / "operator", "operator", ADMIN_OU), str(tmp_path / "a" / "ca.crt")
    )
    return a, b, ca


async def test_mtls_cluster_forms_and_identity_comes_from_the_certificate(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two sidecars with only certificates (no shared secret) form a cluster over https; a
    heartbeat sent with b's certificate but describing node c is refused (403); without a
    client certificate, reads from loopback work but a heartbeat is 401; an operator's
    certificate may run admin operations."""
    a, _b, _ca = await mtls_pair(cluster, tmp_path)
    assert a.url.startswith("https://")
    await cluster.wait_states(a, {"a": "alive", "b": "alive"})
    ca_file = str(tmp_path / "a" / "ca.crt")

    cluster.ssl_context = client_context(issue(_ca, tmp_path / "b2", "b"), ca_file)
    code, body, _ = await cluster.request(
        "POST", a.url + "/api/cluster/heartbeat", data=heartbeat("c"), headers=JSON, signed=False
    )
    assert code == 403 and body["details"]["reason"] == "wrong_node"
    assert registry_of(a).record("c") is None

    cluster.ssl_context = client_context(None, ca_file)
    code, body, _ = await cluster.request(
        "POST", a.url + "/api/cluster/heartbeat", data=heartbeat("b"), headers=JSON, signed=False
    )
    assert code == 401 and body["reason"] == "unsigned"
    code, _, _ = await cluster.request("GET", a.url + "/api/cluster/status", signed=False)
    assert code == 200

    cluster.ssl_context = client_context(issue(_ca, tmp_path / "op", "operator", ADMIN_OU), ca_file)
    code, body, _ = await cluster.request(
        "DELETE", a.url + "/api/cluster/peers/nosuch", signed=False
    )
    # Admitted: an unknown node is the handler's 404, not a 401/403.
    assert code == 404 and body["code"] == "not_found", body


async def test_a_node_certificate_cannot_change_the_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Roles (issue 12): a CA-issued node certificate (the review's "evil" node) cannot
    promote or demote, remove, adopt, join, or clear a member's coordinators: 403 naming the
    admin credential, and nothing changes. Reads still work."""
    a, b, ca = await mtls_pair(cluster, tmp_path)
    await cluster.wait_states(a, {"a": "alive", "b": "alive"})
    cluster.ssl_context = client_context(
        issue(ca, tmp_path / "evil", "evil"), str(tmp_path / "a" / "ca.crt")
    )
    attempts = [
        ("POST", a.url + "/api/cluster/promote", {"coordinator": False}),
        ("POST", b.url + "/api/cluster/promote", {"coordinator": True}),
        ("DELETE", a.url + "/api/cluster/peers/b", None),
        ("POST", a.url + "/api/cluster/adopt", {"agent_id": "alice", "node_id": "b"}),
        ("POST", a.url + "/api/cluster/join", {"address": b.url}),
        ("POST", b.url + "/api/cluster/coordinators", {"remove": [a.url]}),
    ]
    for method, url, body in attempts:
        data = json.dumps(body).encode() if body is not None else b""
        code, answer, _ = await cluster.request(method, url, data=data, headers=JSON, signed=False)
        assert code == 403 and answer["reason"] == "role", (url, answer)
        assert "admin credential" in answer["error"], answer
    assert a.app[keys.IDENTITY].coordinator and not b.app[keys.IDENTITY].coordinator
    assert b.app[keys.MEMBERSHIP].targets() == [a.url]
    assert registry_of(a).record("b") is not None
    code, _, _ = await cluster.request("GET", a.url + "/api/cluster/status", signed=False)
    assert code == 200


async def test_a_certificate_admits_a_caller_whose_signature_cannot_be_checked(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A CLI set up with both a client certificate and a cluster key, talking to an
    mTLS-only sidecar (no key to check the signature with), is admitted by its certificate
    for admin operations; without a certificate the same signed call is refused saying the
    sidecar has no key."""
    a, _b, _ca = await mtls_pair(cluster, tmp_path)
    code, body, _ = await cluster.request("DELETE", a.url + "/api/cluster/peers/nosuch")
    assert code == 404 and body["code"] == "not_found", body  # admitted
    cluster.ssl_context = client_context(None, str(tmp_path / "a" / "ca.crt"))
    code, body, _ = await cluster.request("DELETE", a.url + "/api/cluster/peers/nosuch")
    assert code == 401 and body["reason"] == "no_keyring"


async def test_unknown_certificate_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    """A client certificate from another CA fails the TLS handshake, and a member that
    trusts another CA cannot heartbeat (its coordinator contact reports the error)."""
    a, _b, _ca = await mtls_pair(cluster, tmp_path)
    other = trustme.CA()
    cluster.ssl_context = client_context(
        issue(other, tmp_path / "evil", "b"), str(tmp_path / "a" / "ca.crt")
    )
    with pytest.raises((aiohttp.ClientError, ConnectionError, ssl.SSLError)):
        await cluster.request(
            "POST",
            a.url + "/api/cluster/heartbeat",
            data=heartbeat("b"),
            headers=JSON,
            signed=False,
        )
    rogue = await cluster.add(
        "rogue",
        [],
        coordinators=(a.url,),
        keyring_file=None,
        **issue(other, tmp_path / "r", "rogue"),
    )

    async def reported() -> bool:
        contact = rogue.app[keys.MEMBERSHIP].contact(a.url)
        return contact.failures > 0 and "certificate" in (contact.error or "").lower()

    await wait_for(reported, what="rogue's heartbeat fails on the certificate")
    assert registry_of(a).record("rogue") is None


async def test_signature_and_certificate_must_name_the_same_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With a key and mTLS together, a request signed as node c over b's certificate is
    refused (403): a member cannot use the shared key to impersonate another."""
    ca = trustme.CA()
    a = await cluster.add("a", ALICE, coordinator=True, **issue(ca, tmp_path / "a", "a"))
    cluster.ssl_context = client_context(
        issue(ca, tmp_path / "b", "b"), str(tmp_path / "a" / "ca.crt")
    )
    code, body, _ = await cluster.request(
        "POST",
        a.url + "/api/cluster/heartbeat",
        data=heartbeat("c"),
        headers=JSON,
        signer=cluster.signer_for("c"),
    )
    assert code == 403 and body["reason"] == "wrong_node"
    code, body, _ = await cluster.request(
        "POST",
        a.url + "/api/cluster/heartbeat",
        data=heartbeat("b"),
        headers=JSON,
        signer=cluster.signer_for("b"),
    )
    assert code == 200, body


async def fresh_get(ctx: ssl.SSLContext | None, url: str) -> tuple[int, int]:
    """GET on a new connection (pooled ones keep their old handshake): status and the
    serial number of the certificate the server presented."""
    from cryptography import x509
    from yarl import URL

    target = URL(url)
    _reader, writer = await asyncio.open_connection(
        target.host, target.port, ssl=ctx, server_hostname=target.host
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(url, ssl=ctx or True) as resp,
    ):
        return resp.status, int(x509.load_der_x509_certificate(der).serial_number)


async def test_certificates_reload_without_restart(cluster: Cluster, tmp_path: Path) -> None:
    """Replacing the certificate files of a running sidecar: new connections get the new
    certificate; after moving to a new CA, a client certificate of the old CA is refused
    and one of the new CA accepted (no restart)."""
    a, _b, ca = await mtls_pair(cluster, tmp_path)
    status_url = a.url + "/api/cluster/status"
    _, first = await fresh_get(cluster.ssl_context, status_url)
    issue(ca, tmp_path / "a", "a")  # same paths, new certificate

    async def rotated() -> bool:
        return (await fresh_get(cluster.ssl_context, status_url))[1] != first

    await wait_for(rotated, what="the new server certificate is served")

    new_ca = trustme.CA()
    old_client = cluster.ssl_context
    issue(new_ca, tmp_path / "a", "a")
    new_client = client_context(
        issue(new_ca, tmp_path / "op2", "operator"), str(tmp_path / "a" / "ca.crt")
    )

    async def new_ca_trusted() -> bool:
        try:
            return (await fresh_get(new_client, status_url))[0] == 200
        except (aiohttp.ClientError, ssl.SSLError):
            return False

    await wait_for(new_ca_trusted, what="the new CA is used")
    with pytest.raises((aiohttp.ClientError, ConnectionError, ssl.SSLError)):
        await fresh_get(old_client, status_url)


def test_a_broken_certificate_file_is_reported_once_and_the_old_one_kept(tmp_path: Path) -> None:
    """A certificate file replaced by something unreadable fails the reload with the reason
    once (the sidecar logs it), keeps serving with the certificates it had, and is not
    re-read (nor re-reported) every second until the file changes again; a good file then
    loads."""
    ca = trustme.CA()
    files = issue(ca, tmp_path, "a")
    tls = TlsManager(files["tls_cert_file"], files["tls_key_file"], files["tls_ca_file"])
    tls.load()
    context = tls.client_context
    Path(files["tls_cert_file"]).write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="cannot load certificate files"):
        tls.reload_if_changed()
    assert tls.client_context is context
    assert tls.reload_if_changed() is False
    issue(ca, tmp_path, "a")
    assert tls.reload_if_changed() is True and tls.client_context is not context
