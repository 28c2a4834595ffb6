"""The OpenAPI description of /api/cluster/*: served, in sync with the router, and fuzzed
(schemathesis) against a real sidecar without a single 5xx."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation.modes import GenerationMode

from sidecar import keys
from sidecar.ops.openapi import OPENAPI_PATH, build_document
from signet_cluster.security.keyring import Keyring
from signet_cluster.security.signing import Signer

from .cluster_helpers import Cluster, Node

ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]
BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]
URL_FIELDS = {"url", "address", "add", "remove", "coordinators"}


def router_operations(node: Node) -> set[tuple[str, str]]:
    found = set()
    for route in node.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if path.startswith("/api/cluster/") and route.method not in ("HEAD", "*"):
            found.add((route.method.lower(), path))
    return found


async def test_document_is_served_and_describes_every_cluster_route(cluster: Cluster) -> None:
    """GET /api/cluster/openapi.json is public (even from another host) and describes
    exactly the /api/cluster/ routes the sidecar serves: a new route without a description,
    or a description of a route that is gone, fails here."""
    a = await cluster.add("a", ALICE, coordinator=True)
    a.app[keys.AUTH].peer_override = "198.51.100.9"
    code, served = await cluster.get(a.url + OPENAPI_PATH, signed=False)
    assert code == 200 and served["openapi"].startswith("3.1")
    described = {(m, p) for p, ops in served["paths"].items() for m in ops}
    assert described == router_operations(a)
    assert served == build_document()
    heartbeat = served["components"]["schemas"]["Heartbeat"]
    assert {"node_id", "agents", "seq"} <= set(heartbeat["required"])
    assert heartbeat["additionalProperties"] is True


def _harmless(value: Any, peer: str, key: str | None = None) -> Any:
    """Point every URL-bearing field at the test's own second sidecar, so fuzzed messages
    never make the sidecar contact another machine (or resolve a name)."""
    if key in URL_FIELDS:
        if isinstance(value, str):
            return peer
        if isinstance(value, list):
            return [peer if isinstance(v, str) else v for v in value]
    if isinstance(value, dict):
        return {k: _harmless(v, peer, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_harmless(v, peer) for v in value]
    return value


def fuzz(base_url: str, peer: str, keyring: Keyring, examples: int) -> tuple[int, list[str]]:
    """Run every operation's positive and negative cases, signed, in this (worker) thread.
    Returns (requests sent, descriptions of 5xx answers)."""
    schema = schemathesis.openapi.from_dict(build_document())
    signer = Signer(lambda: keyring, "fuzzer", wall=time.time)
    host = base_url.split("//", 1)[1]
    failures: list[str] = []
    sent = 0
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @settings(
                    max_examples=examples,
                    database=None,
                    deadline=None,
                    suppress_health_check=list(HealthCheck),
                )
                @given(operation.as_strategy(generation_mode=mode))
                def check(case: Any) -> None:
                    nonlocal sent
                    kwargs = case.as_transport_kwargs(base_url=base_url)
                    if "json" in kwargs:
                        kwargs["json"] = _harmless(kwargs["json"], peer)
                    kwargs.pop("cookies", None)
                    prepared = requests.Request(**kwargs).prepare()
                    body = prepared.body or b""
                    if isinstance(body, str):
                        body = body.encode()
                    prepared.headers["Host"] = host
                    prepared.headers.update(
                        signer.headers(
                            prepared.method or "GET",
                            host,
                            prepared.path_url,
                            body,
                            dict(prepared.headers),
                        )
                    )
                    response = session.send(prepared, timeout=10)
                    sent += 1
                    if response.status_code >= 500:
                        failures.append(
                            f"{case.operation.label} -> {response.status_code}: "
                            f"{response.text[:200]} (request {kwargs})"
                        )

                try:
                    check()
                except Unsatisfiable:
                    # No parameters and no body: there is nothing to make invalid.
                    assert mode is GenerationMode.NEGATIVE and not operation.body
    return sent, failures


async def test_fuzzing_the_cluster_api_finds_no_server_error(cluster: Cluster) -> None:
    """Schemathesis-generated valid and invalid requests (signed, so they reach the
    handlers) for every described operation of a live coordinator never get a 5xx, and
    the sidecar still answers afterwards."""
    a = await cluster.add("a", ALICE, coordinator=True)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"a": "alive", "b": "alive"})
    sent, failures = await asyncio.to_thread(fuzz, a.url, b.url, cluster.keyring, 25)
    assert sent > 300
    assert failures == []
    code, _ = await cluster.get(a.url + "/livez", signed=False)
    assert code == 200
