"""A small HTTP/1.1 client for the one hot path: memory-API calls to the local daemon.

Why not aiohttp's client here: a proxied recall costs the sidecar about 160 µs less CPU with
this client (bench/proxy.py), and the sidecar's own added latency is what the product
promises to keep small. It does only what that path needs: whole request bodies (already in
memory), keep-alive connections to one loopback address, responses with Content-Length,
chunked or close-delimited bodies, an explicit timeout on every exchange. Streaming and
everything else stays on aiohttp (`sidecar/memory/passthrough.py`).

A kept connection the daemon closed while idle is noticed on reuse: when it fails before a
single response byte arrived, the request is sent once more on a fresh connection (the
daemon did not read it: an idle close happens between requests).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import cast

from multidict import CIMultiDict, CIMultiDictProxy

# Host and framing are ours; Expect too: the body goes out whole, never waits for a 100.
_SKIP = frozenset({"host", "content-length", "transfer-encoding", "connection", "expect"})
_NO_BODY_STATUS = frozenset({204, 304})


class H1Error(Exception):
    """No complete answer from the daemon (`timed_out` tells a timeout from a failure)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class _Conn(asyncio.Protocol):
    """One connection; parses one response at a time into (status, headers, body)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, CIMultiDictProxy[str], bytes]] | None = None
        self.head_request = False
        self.keep_alive = True
        self.got_bytes = False
        self._reset()

    def _reset(self) -> None:
        self.mode = "head"  # head | length | chunked | close
        self.status = 0
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.body = bytearray()
        self.remaining = 0
        self.pos = 0

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.buf += data
        if self.waiter is None or self.waiter.done():
            return
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(H1Error(f"unreadable response from the daemon: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.mode == "close":
                self._finish()
            else:
                self._fail(H1Error(f"the daemon closed the connection: {exc or 'EOF'}"))

    # -- parsing -----------------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        self.keep_alive = False
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def _finish(self, whole: bytes | None = None) -> None:
        assert self.waiter is not None
        body = bytes(self.body) if whole is None else whole
        result = (self.status, CIMultiDictProxy(self.headers), body)
        self._reset()
        self.waiter.set_result(result)

    def _parse(self) -> None:
        if self.mode == "head":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).decode("utf-8", "surrogateescape").split("\r\n")
            del self.buf[: end + 4]
            version, status = lines[0].split(" ", 2)[:2]
            self.status = int(status)
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers.add(name.strip(), value.strip())
            connection = self.headers.get("Connection", "").lower()
            if "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection):
                self.keep_alive = False
            if 100 <= self.status < 200:
                # An interim answer (100 Continue, 103 Early Hints): the real one follows on
                # the same connection. Taking it for the answer would hand that one to the
                # next request sent on this connection.
                if self.status == 101:
                    raise ValueError("the daemon switched protocols")
                self._reset()
                self._parse()
                return
            if self.head_request or self.status in _NO_BODY_STATUS:
                self._finish()
                return
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self.mode = "chunked"
            elif "Content-Length" in self.headers:
                self.mode, self.remaining = "length", int(self.headers["Content-Length"])
            else:
                self.mode, self.keep_alive = "close", False
        if self.mode == "length":
            if not self.body and len(self.buf) >= self.remaining:
                # The whole body is here (the usual case): one copy, not two.
                whole = bytes(self.buf[: self.remaining])
                del self.buf[: self.remaining]
                self.remaining = 0
                self._finish(whole)
                return
            take = min(self.remaining, len(self.buf))
            self.body += self.buf[:take]
            del self.buf[:take]
            self.remaining -= take
            if self.remaining == 0:
                self._finish()
        elif self.mode == "chunked":
            self._chunks()
        elif self.mode == "close":
            self.body += self.buf
            self.buf.clear()

    def _chunks(self) -> None:
        while True:
            line_end = self.buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(self.buf[:line_end]).split(b";", 1)[0].strip(), 16)
            if size == 0:
                trailer_end = self.buf.find(b"\r\n\r\n", line_end)
                if self.buf[line_end : line_end + 4] == b"\r\n\r\n" or trailer_end >= 0:
                    stop = line_end + 4 if trailer_end < 0 else trailer_end + 4
                    del self.buf[:stop]
                    self._finish()
                return
            if len(self.buf) < line_end + 2 + size + 2:
                return
            self.body += self.buf[line_end + 2 : line_end + 2 + size]
            del self.buf[: line_end + 2 + size + 2]


class H1Pool:
    """Keep-alive connections to one host:port; at most `limit` requests in flight."""

    def __init__(self, host: str, port: int, *, limit: int = 128, keep: int = 32) -> None:
        self.host, self.port = host, port
        self.host_header = f"{host}:{port}"
        self.idle: deque[_Conn] = deque()
        self.keep = keep
        self.slots = asyncio.Semaphore(limit)

    def _message(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes | None
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _SKIP]
        if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
            lines.append(f"Content-Length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        return head + body if body else head

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(_Conn, self.host, self.port)
        except OSError as exc:
            raise H1Error(f"cannot connect to the daemon at {self.host_header}: {exc}") from None
        return conn

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        body: bytes | None,
        timeout: float,
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        message = self._message(method, target, headers, body)
        try:
            # The wait for a free slot counts too: the caller's deadline is for the answer.
            async with asyncio.timeout(timeout), self.slots:
                return await self._exchange(method, message)
        except TimeoutError:
            raise H1Error(
                f"the daemon did not answer {method} {target} within {timeout:g}s",
                timed_out=True,
            ) from None

    async def _exchange(
        self, method: str, message: bytes
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        for attempt in (0, 1):
            conn = None
            while self.idle and conn is None:
                candidate = self.idle.pop()
                conn = None if candidate.closed else candidate
            reused = conn is not None
            if conn is None:
                conn = await self._connect()
            conn.got_bytes = False
            conn.head_request = method == "HEAD"
            conn.waiter = asyncio.get_running_loop().create_future()
            assert conn.transport is not None
            try:
                conn.transport.write(message)
                result = await conn.waiter
            except H1Error:
                conn.keep_alive = False
                if reused and not conn.got_bytes and attempt == 0:
                    continue  # an idle connection the daemon had closed: once more, fresh
                raise
            except BaseException:
                # Cancelled or timed out mid-exchange: the connection's state is unknown.
                conn.keep_alive = False
                conn.transport.close()
                raise
            finally:
                conn.waiter = None
            if conn.keep_alive and not conn.closed and len(self.idle) < self.keep:
                self.idle.append(conn)
            else:
                conn.transport.close()
            return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None:
                conn.transport.close()
