"""Everything the sidecar does not serve itself passes through to the local daemon with
status, headers and body bytes preserved, large and streaming bodies included."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.test_utils import TestServer

from .cluster_helpers import Cluster, free_port
from .routing_helpers import ALICE, client, remember


async def test_unrelated_paths_are_byte_identical(cluster: Cluster) -> None:
    """Status, Content-Type and body bytes of paths the sidecar does not serve itself
    (features, a memory listing, an unknown path's plain-text 404, a HEAD) equal the
    daemon's own answers. (The agent API is the cluster's: tests/test_agent_api.py.)"""
    a = await cluster.add("a", [ALICE], coordinator=True)
    for n in range(3):
        await remember(cluster, a.daemon_url, f"listing entry {n}")
    for method, path in [
        ("GET", "/api/features"),
        ("GET", "/api/memories?limit=2&offset=1"),
        ("GET", "/no/such/path?x=%2F1"),
        ("POST", "/no/such/path"),
        ("HEAD", "/api/features"),
    ]:
        direct = await client(cluster, method, a.daemon_url + path)
        routed = await client(cluster, method, a.url + path)
        assert routed[0] == direct[0], path
        assert routed[1] == direct[1], path
        assert routed[2].get("Content-Type") == direct[2].get("Content-Type"), path
        assert routed[2]["x-signet-cluster-served-by"] == "a"


async def test_unknown_cluster_paths_stay_json_404(cluster: Cluster) -> None:
    """An unknown /api/cluster/ path is the sidecar's own JSON 404, never the daemon's."""
    a = await cluster.add("a", [], coordinator=True)
    code, body, _ = await client(cluster, "GET", a.url + "/api/cluster/no-such-route")
    assert code == 404 and body["code"] == "not_found"


BIG = 3 * 1024 * 1024


async def _echo_app() -> web.Application:
    """A real upstream with what the dev daemon does not have: a streaming echo, a large
    chunked download, a gzip-encoded answer and an event stream."""

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy", "version": "0.145.7"})

    async def echo(request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response(
            {
                "size": size,
                "sha256": digest.hexdigest(),
                "raw_path": request.raw_path,
                "headers": {k.lower(): v for k, v in request.headers.items()},
            },
            status=207,
            headers={"X-Upstream": "echo", "Set-Cookie": "a=1"},
        )

    async def big(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await out.prepare(request)
        block = bytes(range(256)) * 1024
        for _ in range(BIG // len(block)):
            await out.write(block)
        await out.write_eof()
        return out

    async def gzipped(_request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b"hello " * 1000),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    async def events(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for n in range(3):
            await out.write(f"data: {n}\n\n".encode())
        await out.write_eof()
        return out

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/health", health)
    app.router.add_post("/upload/{tail:.*}", echo)
    app.router.add_get("/big", big)
    app.router.add_get("/gz", gzipped)
    app.router.add_get("/events", events)
    return app


async def _stream(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 65536):
        yield data[start : start + 65536]


async def test_large_and_streaming_bodies_pass_through_both_ways(cluster: Cluster) -> None:
    """A 3 MiB chunked upload reaches the daemon intact (same SHA-256, raw path and query
    kept), a 3 MiB chunked download, a gzip body (not decompressed) and an event stream
    come back byte for byte; hop-by-hop headers are not forwarded; uploads over
    max_upload_bytes get 413."""
    upstream = TestServer(await _echo_app(), host="127.0.0.1", port=free_port())
    await upstream.start_server()
    try:
        daemon_url = str(upstream.make_url("")).rstrip("/")
        a = await cluster.add(
            "a", [], coordinator=True, daemon_url=daemon_url, max_upload_bytes=4 * 1024 * 1024
        )
        session = cluster.session
        assert session is not None
        payload = os.urandom(BIG)
        async with session.post(
            a.url + "/upload/x%2Fy?q=%E2%9C%93&q=2",
            data=_stream(payload),
            headers={"X-Custom": "kept", "Connection": "keep-alive, X-Drop", "X-Drop": "1"},
        ) as resp:
            assert resp.status == 207
            body = await resp.json()
            assert resp.headers["X-Upstream"] == "echo" and resp.headers["Set-Cookie"] == "a=1"
        assert body["size"] == BIG and body["sha256"] == hashlib.sha256(payload).hexdigest()
        assert body["raw_path"] == "/upload/x%2Fy?q=%E2%9C%93&q=2"
        assert body["headers"]["x-custom"] == "kept" and "x-drop" not in body["headers"]

        async with session.get(a.url + "/big") as resp:
            assert resp.status == 200
            downloaded = await resp.read()
        assert len(downloaded) == BIG and downloaded == bytes(range(256)) * 1024 * (BIG // 262144)

        async with session.get(a.url + "/gz", auto_decompress=False) as resp:
            assert resp.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(await resp.read()) == b"hello " * 1000

        async with session.get(a.url + "/events") as resp:
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert await resp.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"

        too_big = os.urandom(5 * 1024 * 1024)
        async with session.post(a.url + "/upload/big", data=_stream(too_big)) as resp:
            assert resp.status == 413
            assert json.loads(await resp.read())["code"] == "body_too_large"
    finally:
        await upstream.close()


async def test_daemon_down_gives_a_clear_503(cluster: Cluster) -> None:
    """With the local daemon gone, memory and pass-through calls get 503 naming it (a
    remember is spooled instead: test_spool_handoff.py)."""
    a = await cluster.add("a", [], coordinator=True)
    await cluster.stop_daemon(a)
    for method, path, body in [
        ("POST", "/api/memory/recall", {"query": "x"}),
        ("GET", "/api/features", None),
    ]:
        code, answer, _ = await client(cluster, method, a.url + path, body)
        assert code == 503 and answer["code"] == "daemon_unavailable", answer
        assert "daemon" in answer["error"]
