"""Relaying HTTP to the local daemon: one keep-alive connection pool, bytes in and bytes out.

Both the memory API (whole bodies, which it may adapt) and the pass-through catch-all
(streamed bodies) use `DaemonClient`. Headers are copied except the hop-by-hop ones (RFC
9110 §7.6.1) and the cluster's own; bodies are never decoded here, and responses are not
decompressed, so what the daemon sent is what the client gets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from sidecar.membership.peers import RawResponse
from sidecar.memory.h1client import H1Error, H1Pool

SERVED_BY_HEADER = "x-signet-cluster-served-by"
CLUSTER_PREFIX = "x-signet-cluster-"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Recomputed by aiohttp for the outgoing message.
_RECOMPUTED = frozenset({"host", "content-length"})
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding")


class DaemonError(Exception):
    """No answer from the local daemon; `timed_out` tells a timeout from a refusal."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.message = message
        self.timed_out = timed_out


def connection_tokens(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("Connection")
    if not value:
        return set()
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def request_headers(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], *, keep_cluster: bool = False
) -> CIMultiDict[str]:
    """The client's headers minus hop-by-hop, Host/Content-Length and (unless asked) the
    cluster's own `x-signet-cluster-*` headers, duplicates kept in order."""
    drop = connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _RECOMPUTED or lower in drop:
            continue
        if not keep_cluster and lower.startswith(CLUSTER_PREFIX):
            continue
        out.add(name, value)
    return out


def response_headers(headers: CIMultiDictProxy[str], served_by: str) -> CIMultiDict[str]:
    """The daemon's (or owner's) response headers for our client, plus who served it."""
    drop = connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower == "content-length" or lower in drop:
            continue
        out.add(name, value)
    if SERVED_BY_HEADER not in out:
        out[SERVED_BY_HEADER] = served_by
    return out


def to_response(
    raw: RawResponse, served_by: str, extra: Iterable[tuple[str, str]] = ()
) -> web.Response:
    headers = response_headers(raw.headers, served_by)
    for name, value in extra:
        headers[name] = value
    return web.Response(status=raw.status, body=raw.body, headers=headers)


class DaemonClient:
    """The sidecar's connection pools to its own daemon (loopback, keep-alive): a lean
    HTTP/1.1 client for whole requests (`send`), aiohttp for streamed pass-through."""

    def __init__(self, base_url: str, timeout: float, *, limit: int = 128) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=30, ttl_dns_cache=None),
            timeout=self.timeout,
            auto_decompress=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
        )
        # Told when a request gets no answer at all (refused, reset): the daemon may be dead.
        self.on_unreachable: Callable[[str], None] | None = None
        url = URL(self.base_url)
        self.pool = (
            H1Pool(url.host or "127.0.0.1", url.port or 80, limit=limit)
            if url.scheme == "http"
            else None
        )

    def url(self, path_qs: str) -> URL:
        return URL(self.base_url + path_qs, encoded=True)

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        *,
        timeout: float | None = None,
    ) -> RawResponse:
        """One whole request and its whole answer (within `timeout`, default daemon_timeout)."""
        if self.pool is not None:
            seconds = self.timeout.total if timeout is None else timeout
            assert seconds is not None
            try:
                status, got, data = await self.pool.request(
                    method, path_qs, headers.items(), body, seconds
                )
            except H1Error as exc:
                if not exc.timed_out and self.on_unreachable is not None:
                    self.on_unreachable(str(exc))
                raise DaemonError(str(exc), timed_out=exc.timed_out) from None
            return RawResponse(status, got, data)
        limit = self.timeout if timeout is None else aiohttp.ClientTimeout(total=timeout)
        try:
            async with self.session.request(
                method,
                self.url(path_qs),
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=limit,
            ) as resp:
                return RawResponse(resp.status, resp.headers, await resp.read())
        except TimeoutError:
            raise DaemonError(
                f"the local daemon did not answer {method} {path_qs} within {limit.total:g}s",
                timed_out=True,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise DaemonError(
                f"the local daemon at {self.base_url} does not answer: {exc or type(exc).__name__}",
                timed_out=False,
            ) from None

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        await self.session.close()


class Upload:
    """An upload relayed as it arrives; stops once it passes `limit` bytes (`exceeded`)."""

    def __init__(self, stream: aiohttp.StreamReader, limit: int | None) -> None:
        self.stream = stream
        self.limit = limit
        self.seen = 0
        self.exceeded = False

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream.iter_any():
            self.seen += len(chunk)
            if self.limit is not None and self.seen > self.limit:
                self.exceeded = True
                raise OSError("upload over the size limit")
            yield chunk
