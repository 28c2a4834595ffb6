"""Everything the sidecar does not serve itself goes to the local daemon untouched:
dashboard, config, documents, event streams, unknown paths (the daemon's own 404).

Status, headers (minus hop-by-hop) and body bytes are preserved both ways. Small bodies are
relayed whole; an upload without a known small length and any response that is large or of
unknown length (chunked, server-sent events) are streamed as they arrive, so memory use
stays flat. Uploads are capped at `max_upload_bytes` bytes (413 past it).
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from sidecar import keys
from sidecar.keys import PROXY
from sidecar.membership.peers import RawResponse
from sidecar.memory.forward import (
    DaemonError,
    Upload,
    request_headers,
    response_headers,
    to_response,
)
from sidecar.memory.owner_checks import daemon_error
from sidecar.memory.proxy import daemon_failure

# Bodies up to this size are read whole (fewer syscalls and no chunked encoding).
_WHOLE = 256 * 1024


async def passthrough(request: web.Request) -> web.StreamResponse:
    if request.path.startswith("/api/cluster/"):
        # The daemon has no such paths: an unknown cluster route is ours, a JSON 404.
        raise web.HTTPNotFound()
    app = request.app
    settings = app[keys.SETTINGS]
    daemon = app[PROXY].daemon
    node = app[keys.IDENTITY].node_id
    limit = settings.max_upload_bytes
    length = request.content_length
    if limit is not None and length is not None and length > limit:
        return daemon_error(
            413,
            f"request body of {length} bytes is over the sidecar's limit of {limit} "
            "(setting max_upload_bytes)",
            code="body_too_large",
        )
    headers = request_headers(request.headers)
    upload: Upload | None = None
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
        else:
            upload = Upload(request.content, limit)
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
    app.router.add_route("*", "/{tail:.*}", passthrough)
