"""The lean HTTP/1.1 client the sidecar uses for memory calls to its daemon, against real
TCP servers that answer with exact bytes: body framings, keep-alive reuse, an idle
connection the server closed, timeouts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from sidecar.memory.h1client import H1Error, H1Pool

Reply = Callable[[bytes], bytes | None]


class RawServer:
    """Answers each request (read up to its blank line plus Content-Length body) with the
    bytes `reply(request)` gives; None means: close the connection without answering."""

    def __init__(self, reply: Reply, *, close_after: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self.reply(request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.close_after or b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def pools() -> AsyncIterator[list[H1Pool]]:
    made: list[H1Pool] = []
    yield made
    for pool in made:
        pool.close()


def _pool(made: list[H1Pool], port: int) -> H1Pool:
    pool = H1Pool("127.0.0.1", port)
    made.append(pool)
    return pool


async def test_body_framings(pools: list[H1Pool]) -> None:
    """Content-Length, chunked (with an extension and a trailer), close-delimited, and no
    body for HEAD and 204; headers come back in order, duplicates kept."""
    answers = {
        b"/len": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\nhello",
        b"/chunked": b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"/head": b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
        b"/empty": b"HTTP/1.1 204 No Content\r\n\r\n",
        b"/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
    }

    def reply(request: bytes) -> bytes:
        target = request.split(b" ")[1]
        return answers[target]

    server = RawServer(reply)
    async with server as port:
        pool = _pool(pools, port)
        status, headers, body = await pool.request("GET", "/len", [], None, 2)
        assert (status, body, headers.getall("Set-Cookie")) == (200, b"hello", ["a", "b"])
        assert (await pool.request("POST", "/chunked", [], b"{}", 2))[::2] == (201, b"wikipedia")
        assert (await pool.request("HEAD", "/head", [], None, 2))[::2] == (200, b"")
        assert (await pool.request("DELETE", "/empty", [], None, 2))[::2] == (204, b"")
        assert (await pool.request("GET", "/close", [], None, 2))[::2] == (200, b"until the end")
    # The first four shared one keep-alive connection; close-delimited ended it.
    assert server.connections == 1


async def test_request_bytes_and_headers(pools: list[H1Pool]) -> None:
    """The request line, Host, the caller's headers (minus hop-by-hop ones it must not
    pass) and an exact Content-Length go out."""
    server = RawServer(lambda _r: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    async with server as port:
        pool = _pool(pools, port)
        headers = [("X-Signet-Agent-Id", "bob"), ("Connection", "close"), ("Host", "evil")]
        await pool.request("POST", "/api/memory/recall?x=%2F", headers, b'{"q":1}', 2)
    sent = server.requests[0]
    assert sent.startswith(b"POST /api/memory/recall?x=%2F HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"X-Signet-Agent-Id: bob\r\n" in sent and b"Content-Length: 7\r\n" in sent
    assert b"evil" not in sent and b"Connection" not in sent and sent.endswith(b'{"q":1}')


async def test_a_connection_the_server_closed_while_idle_is_replaced(
    pools: list[H1Pool],
) -> None:
    """The daemon drops kept connections after answering: the next request goes out again
    on a fresh connection and succeeds."""
    server = RawServer(
        lambda _r: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close_after=True
    )
    async with server as port:
        pool = _pool(pools, port)
        for _ in range(3):
            assert (await pool.request("POST", "/x", [], b"1", 2))[::2] == (200, b"ok")
    assert server.connections == 3


async def test_timeouts_and_failures_are_reported(pools: list[H1Pool]) -> None:
    """No answer within the timeout, a connection dropped mid-answer and a refused
    connection each raise H1Error (timeout flagged)."""
    hang = RawServer(lambda _r: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")
    async with hang as port:
        pool = _pool(pools, port)
        with pytest.raises(H1Error) as caught:
            await pool.request("GET", "/", [], None, 0.2)
        assert caught.value.timed_out
    dropped = RawServer(lambda _r: None)
    async with dropped as port:
        with pytest.raises(H1Error) as caught:
            await _pool(pools, port).request("GET", "/", [], None, 2)
        assert not caught.value.timed_out
    with pytest.raises(H1Error, match="cannot connect"):
        await _pool(pools, port).request("GET", "/", [], None, 2)


async def test_interim_answers_are_skipped_and_expect_is_not_sent(pools: list[H1Pool]) -> None:
    """A daemon that answers `100 Continue` (as it does to a client's `Expect:
    100-continue`) before the real answer: the caller gets the real answer, and the next
    request on that kept connection gets its own, not the previous one's. The client's
    Expect header is not passed on (the body goes out whole)."""

    def reply(request: bytes) -> bytes:
        name = request.split(b" ")[1].lstrip(b"/")
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(name), name)
        return b"HTTP/1.1 100 Continue\r\n\r\n" + answer

    server = RawServer(reply)
    async with server as port:
        pool = _pool(pools, port)
        expect = [("Expect", "100-continue")]
        assert (await pool.request("POST", "/first", expect, b"{}", 2))[::2] == (200, b"first")
        assert (await pool.request("POST", "/second", [], b"{}", 2))[::2] == (200, b"second")
    assert server.connections == 1
    assert all(b"expect" not in r.lower() for r in server.requests)


async def test_the_wait_for_a_free_connection_counts_against_the_timeout(
    pools: list[H1Pool],
) -> None:
    """With every connection slot taken by a request the daemon does not answer, another
    request fails with a timeout after its own timeout, not after the blocking one's."""

    hanging = asyncio.Event()

    def reply(request: bytes) -> bytes:
        # /hang gets nothing back (the connection stays open); anything else an answer.
        if b" /hang " in request:
            hanging.set()
            return b""
        return b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"

    server = RawServer(reply)
    async with server as port:
        pool = H1Pool("127.0.0.1", port, limit=1)
        pools.append(pool)
        blocking = asyncio.create_task(pool.request("GET", "/hang", [], None, 30))
        await asyncio.wait_for(hanging.wait(), 5)
        with pytest.raises(H1Error) as caught:
            await asyncio.wait_for(pool.request("GET", "/quick", [], None, 0.2), 5)
        assert caught.value.timed_out
        blocking.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await blocking
