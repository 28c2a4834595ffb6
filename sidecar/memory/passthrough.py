"""Everything the sidecar does not serve itself goes to the local daemon untouched:
dashboard, config, documents, event streams, unknown paths (the daemon's own 404).

Status, headers (minus hop-by-hop) and body bytes are preserved both ways. Small bodies are
relayed whole; an upload without a known small length and any response that is large or of
unknown length (chunked, server-sent events) are streamed as they arrive, so memory use
stays flat. Uploads are capped at `max_upload_bytes` bytes (413 past it).

A streamed upload holds a connection of the daemon pool for as long as it lasts, so it must
keep moving: no gap longer than `body_timeout`, and after its first `body_timeout` seconds
an average of at least `min_upload_rate` bytes a second (else 408 and the upload is cut).
At most UPLOADS_PER_SOURCE of them from one client address and UPLOADS_TOTAL in all run at
once, leaving the rest of the pool to everyone else (429 / 503 past those).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from sidecar import keys
from sidecar.keys import PROXY
from sidecar.membership.peers import RawResponse
from sidecar.memory.forward import (
    DaemonError,
    request_headers,
    response_headers,
    to_response,
)
from sidecar.memory.owner_checks import daemon_error
from sidecar.memory.proxy import daemon_failure
from sidecar.security.limits import body_incomplete

# Bodies up to this size are read whole (fewer syscalls and no chunked encoding).
_WHOLE = 256 * 1024
# Of the daemon pool's 128 connections (sidecar.memory.forward.DaemonClient).
UPLOADS_TOTAL = 96
UPLOADS_PER_SOURCE = 16


class UploadSlots:
    """Streamed uploads in progress, in total and per client address."""

    def __init__(self, total: int = UPLOADS_TOTAL, per_source: int = UPLOADS_PER_SOURCE) -> None:
        self.total = total
        self.per_source = per_source
        self.by_source: dict[str, int] = {}

    def take(self, source: str) -> str | None:
        """None when a slot was taken; else why not."""
        if sum(self.by_source.values()) >= self.total:
            return f"{self.total} uploads are already being relayed to the daemon"
        if self.by_source.get(source, 0) >= self.per_source:
            return f"this client already has {self.per_source} uploads in progress"
        self.by_source[source] = self.by_source.get(source, 0) + 1
        return None

    def give_back(self, source: str) -> None:
        left = self.by_source.get(source, 1) - 1
        if left > 0:
            self.by_source[source] = left
        else:
            self.by_source.pop(source, None)


UPLOAD_SLOTS = web.AppKey("upload_slots", UploadSlots)


class PacedUpload:
    """An upload relayed as it arrives, cut when it passes `limit` bytes (`exceeded`) or
    falls behind the minimum pace (`too_slow`)."""

    def __init__(
        self, stream: aiohttp.StreamReader, limit: int, *, grace: float, min_rate: int
    ) -> None:
        self.stream = stream
        self.limit = limit
        self.grace = grace
        self.min_rate = min_rate
        self.seen = 0
        self.exceeded = False
        self.too_slow = False

    async def chunks(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        while True:
            # The pace owed so far: `grace` seconds free, then min_rate bytes a second.
            due = start + self.grace + self.seen / self.min_rate
            wait = min(due - loop.time(), self.grace)
            try:
                if wait <= 0:
                    raise TimeoutError
                async with asyncio.timeout(wait):
                    chunk = await self.stream.readany()
            except TimeoutError:
                self.too_slow = True
                raise OSError("upload too slow") from None
            if not chunk:
                return
            self.seen += len(chunk)
            if self.seen > self.limit:
                self.exceeded = True
                raise OSError("upload over the size limit")
            yield chunk


async def passthrough(request: web.Request) -> web.StreamResponse:
    if request.path.startswith("/api/cluster/"):
        # The daemon has no such paths: an unknown cluster route is ours, a JSON 404.
        raise web.HTTPNotFound()
    settings = request.app[keys.SETTINGS]
    limit = settings.max_upload_bytes
    length = request.content_length
    if limit is not None and length is not None and length > limit:
        return daemon_error(
            413,
            f"request body of {length} bytes is over the sidecar's limit of {limit} "
            "(setting max_upload_bytes)",
            code="body_too_large",
        )
    if request.body_exists and request.can_read_body and (length is None or length > _WHOLE):
        return await _streamed_upload(request)
    return await _relay(request, None)


async def _streamed_upload(request: web.Request) -> web.StreamResponse:
    """Relay a large or chunked upload, holding one of the bounded upload slots."""
    settings = request.app[keys.SETTINGS]
    slots = request.app[UPLOAD_SLOTS]
    peer = request.transport.get_extra_info("peername") if request.transport else None
    source = str(peer[0]) if isinstance(peer, tuple | list) and peer else ""
    busy = slots.take(source)
    if busy is not None:
        per_source = busy.startswith("this client")
        response = daemon_error(
            429 if per_source else 503,
            f"{busy}; try again when one finishes",
            code="too_many_uploads",
        )
        response.headers["Retry-After"] = "5"
        response.force_close()  # the unread body must not be taken for the next request
        return response
    try:
        upload = PacedUpload(
            request.content,
            settings.max_upload_bytes,
            grace=settings.body_timeout,
            min_rate=settings.min_upload_rate,
        )
        return await _relay(request, upload)
    finally:
        slots.give_back(source)


async def _relay(request: web.Request, upload: PacedUpload | None) -> web.StreamResponse:
    app = request.app
    settings = app[keys.SETTINGS]
    daemon = app[PROXY].daemon
    node = app[keys.IDENTITY].node_id
    limit = settings.max_upload_bytes
    length = request.content_length
    headers = request_headers(request.headers)
    data: object = None
    if request.body_exists:
        if not request.can_read_body:
            # Already read (and cached) by the auth middleware to check its signature.
            data = await request.read()
        elif length is not None and length <= _WHOLE:
            try:
                async with asyncio.timeout(settings.body_timeout):
                    data = await request.content.readexactly(length) if length else b""
            except TimeoutError:
                return daemon_error(
                    408,
                    f"request body not received within {settings.body_timeout:g}s "
                    "(setting body_timeout)",
                    code="body_timeout",
                )
            except (asyncio.IncompleteReadError, ConnectionResetError):
                return body_incomplete()  # the client hung up halfway: nobody to answer
        elif upload is not None:
            data = upload.chunks()
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=settings.daemon_timeout, sock_read=settings.stream_idle_timeout
    )
    try:
        async with daemon.session.request(
            request.method,
            daemon.url(request.raw_path),
            data=data,
            headers=headers,
            allow_redirects=False,
            timeout=timeout,
        ) as resp:
            size = resp.content_length
            if size is not None and size <= _WHOLE:
                body = await resp.read()
                return to_response(RawResponse(resp.status, resp.headers, body), node)
            return await _stream(request, resp, node)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        if upload is not None and upload.too_slow:
            return daemon_error(
                408,
                f"upload too slow: {upload.seen} bytes; a body passed through must not pause "
                f"for {settings.body_timeout:g}s and must average {settings.min_upload_rate} "
                f"bytes/s after its first {settings.body_timeout:g}s (settings body_timeout, "
                "min_upload_rate)",
                code="body_timeout",
            )
        if upload is not None and upload.exceeded:
            return daemon_error(
                413,
                f"request body is over the sidecar's limit of {limit} bytes "
                "(setting max_upload_bytes)",
                code="body_too_large",
            )
        timed_out = isinstance(exc, TimeoutError)
        what = "did not answer" if timed_out else f"at {daemon.base_url} does not answer ({exc})"
        return daemon_failure(
            DaemonError(
                f"the local daemon {what}: {request.method} {request.path}", timed_out=timed_out
            )
        )


async def _stream(
    request: web.Request, resp: aiohttp.ClientResponse, node: str
) -> web.StreamResponse:
    out = web.StreamResponse(status=resp.status, reason=resp.reason)
    out.headers.extend(response_headers(resp.headers, node))
    if resp.content_length is not None:
        out.content_length = resp.content_length
    await out.prepare(request)
    try:
        async for chunk in resp.content.iter_any():
            await out.write(chunk)
    except (aiohttp.ClientError, OSError, TimeoutError):
        # The status line is gone already: all that is left is to cut the connection, so
        # the client sees a truncated body instead of a complete-looking one.
        if request.transport is not None:
            request.transport.close()
        return out
    await out.write_eof()
    return out


def add_passthrough(app: web.Application) -> None:
    """The catch-all to the daemon. Must be registered LAST in make_app: aiohttp tries it
    only after every more specific route, and any route added after it would be shadowed
    for readers of the code."""
    app[UPLOAD_SLOTS] = UploadSlots()
    app.router.add_route("*", "/{tail:.*}", passthrough)
