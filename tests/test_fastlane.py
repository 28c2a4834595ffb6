"""The fast lane (sidecar.pipeline.fastlane): local recalls that do not federate are relayed
by a small protocol in front of aiohttp; every other request, and the connection it came
on, goes to aiohttp. What a client gets must not depend on which of the two answered."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from sidecar.keys import PROXY
from sidecar.memory.routing import decide
from sidecar.pipeline.fastlane import FastLaneServer

from .cluster_helpers import Cluster, Node, wait_for
from .routing_helpers import remember, two_nodes

RECALL = {"query": "deploy checklist", "limit": 5}


def lane(node: Node) -> FastLaneServer:
    assert node.sidecar_server is not None and node.sidecar_server.runner is not None
    server = node.sidecar_server.runner.server
    assert isinstance(server, FastLaneServer)
    return server


def port(node: Node) -> int:
    assert node.settings is not None
    return node.settings.port


def message(method: str, path: str, body: dict[str, Any] | None = None, *extra: str) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *extra]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


async def read_response(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, list[str]], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = int(headers.get("content-length", ["0"])[0])
    return int(lines[0].split(" ")[1]), headers, await reader.readexactly(length)


async def exchange(node: Node, *messages: bytes) -> list[tuple[int, dict[str, list[str]], bytes]]:
    """Send the messages on one keep-alive connection, one after another."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port(node))
    try:
        answers = []
        for data in messages:
            writer.write(data)
            answers.append(await read_response(reader))
        return answers
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_local_recall_answers_the_same_from_the_fast_lane_and_from_aiohttp(
    cluster: Cluster,
) -> None:
    """The same recall, once taken by the fast lane and once handed to aiohttp (a cluster
    header it leaves to the pipeline), gets the same status, hits and headers (but Date)."""
    node = await cluster.add("a")
    await remember(cluster, node.daemon_url, "the deploy checklist lives in the wiki")
    server = lane(node)
    [(code, headers, body)] = await exchange(node, message("POST", "/api/memory/recall", RECALL))
    assert server.served == 1
    [(code2, headers2, body2)] = await exchange(
        node, message("POST", "/api/memory/recall", RECALL, "x-signet-cluster-partial: allow")
    )
    assert server.served == 1 and server.handed_over >= 1
    assert code == code2 == 200
    assert json.loads(body)["results"] == json.loads(body2)["results"]
    for answer, data in ((headers, body), (headers2, body2)):
        # The daemon's timings in the body vary, and with them the length.
        assert answer.pop("content-length") == [str(len(data))]
        answer.pop("date")
    assert headers == headers2
    assert headers["x-signet-cluster-served-by"] == ["a"]
    assert headers["x-signet-cluster-missing"] == ["0/1"]


async def test_a_connection_is_handed_to_aiohttp_at_its_first_other_request(
    cluster: Cluster,
) -> None:
    """On one keep-alive connection: a recall (fast lane), a pass-through GET and another
    recall (both aiohttp, the connection is its own now), then the same pipelined in one
    write: every answer arrives, complete and in order."""
    node = await cluster.add("a")
    await remember(cluster, node.daemon_url, "the deploy checklist lives in the wiki")
    server = lane(node)
    recall = message("POST", "/api/memory/recall", RECALL)
    status = message("GET", "/api/status")
    answers = await exchange(node, recall, status, recall)
    assert [a[0] for a in answers] == [200, 200, 200]
    assert "results" in json.loads(answers[0][2]) and "results" in json.loads(answers[2][2])
    assert server.served == 1
    reader, writer = await asyncio.open_connection("127.0.0.1", port(node))
    writer.write(recall + recall + status + recall)
    pipelined = [await read_response(reader) for _ in range(4)]
    writer.close()
    await writer.wait_closed()
    assert [a[0] for a in pipelined] == [200, 200, 200, 200]
    assert "results" not in json.loads(pipelined[2][2])
    assert json.loads(pipelined[3][2])["results"] == json.loads(pipelined[0][2])["results"]
    assert server.served == 3  # the two before the pass-through


async def test_a_recall_that_federates_is_left_to_the_pipeline(cluster: Cluster) -> None:
    """bob (shared) lives on b: his recall at b fans out to a, so the fast lane hands it
    over unanswered and the answer carries the cluster block of a federated read."""
    _a, b = await two_nodes(cluster)
    server = lane(b)
    before = server.served
    [(code, _h, body)] = await exchange(
        b, message("POST", "/api/memory/recall", RECALL | {"agentId": "bob"})
    )
    assert code == 200
    assert "cluster" in json.loads(body)
    assert server.served == before


async def test_a_daemon_that_is_down_gets_the_pipelines_503(cluster: Cluster) -> None:
    """The fast lane answers a dead daemon as the pipeline does: 503 daemon_unavailable,
    counted as a daemon error in the metrics."""
    node = await cluster.add("a")
    await cluster.stop_daemon(node)
    [(code, _h, body)] = await exchange(node, message("POST", "/api/memory/recall", RECALL))
    assert code == 503
    assert json.loads(body)["code"] == "daemon_unavailable"
    assert lane(node).served == 1
    [(_c, _h, metrics)] = await exchange(node, message("GET", "/metrics"))
    assert (
        'signet_cluster_proxied_requests_total{outcome="daemon_error",route="recall",'
        'target="local"} 1.0' in metrics.decode()
    )


async def test_shutdown_lets_a_fast_lane_request_finish(cluster: Cluster) -> None:
    """A recall in flight in the fast lane when the sidecar stops still gets its answer
    (the daemon takes 300 ms); an idle fast-lane connection is closed."""
    node = await cluster.add("a", start_daemon=False)
    await cluster.start_daemon(node, latency_ms=300)
    assert node.settings is not None
    await cluster.stop_sidecar(node)
    await cluster.start_sidecar(node, daemon_url=node.daemon_url)
    server = lane(node)
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port(node))
    reader, writer = await asyncio.open_connection("127.0.0.1", port(node))
    writer.write(message("POST", "/api/memory/recall", RECALL))

    async def in_flight() -> bool:
        return any(lane.task is not None for lane in server.fast)

    await wait_for(in_flight, what="the recall to reach the fast lane")
    stopping = asyncio.create_task(cluster.stop_sidecar(node))
    code, _h, _body = await read_response(reader)
    assert code == 200
    assert await idle_reader.read() == b""  # closed by the shutdown
    await stopping
    writer.close()
    idle_writer.close()


async def test_a_local_remember_is_stored_once_and_spooled_when_the_daemon_is_down(
    cluster: Cluster,
) -> None:
    """A remember on the fast lane lands in the daemon (the id it answers is in its
    database); with the daemon stopped the next one is kept in the spool (202), as the
    pipeline does."""
    node = await cluster.add("a")
    server = lane(node)
    [(code, headers, body)] = await exchange(
        node, message("POST", "/api/memory/remember", {"content": "the fast lane remembers"})
    )
    assert code == 200, body
    assert headers["x-signet-cluster-served-by"] == ["a"]
    assert "x-signet-cluster-missing" not in headers
    assert server.served == 1
    [(code, _h, body)] = await exchange(
        node, message("POST", "/api/memory/recall", {"query": "fast lane remembers"})
    )
    assert len(json.loads(body)["results"]) == 1
    await cluster.stop_daemon(node)
    [(code, _h, body)] = await exchange(
        node, message("POST", "/api/memory/remember", {"content": "kept for later"})
    )
    assert code == 202, body
    assert server.served == 3


async def test_cached_routing_follows_the_registry(cluster: Cluster) -> None:
    """Routing decisions are kept per agent (RouteCache) but never outlive the registry
    version they came from: when carol's owner stops, the next decision on a says
    unreachable, as an uncached one does."""
    a, b = await two_nodes(cluster)
    routes = a.app[PROXY].routes
    assert routes.target(a.app, "carol").kind == "remote"
    assert routes.target(a.app, "carol") is routes.target(a.app, "carol")  # kept
    await cluster.stop_sidecar(b)

    async def unreachable() -> bool:
        return routes.target(a.app, "carol").kind == "unreachable"

    await wait_for(unreachable, what="carol's owner to be seen down")
    assert decide(a.app, "carol") == routes.target(a.app, "carol")
