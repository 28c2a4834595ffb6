"""Every call this sidecar makes to another sidecar goes through PeerClient: one connection
pool, an explicit timeout on every call, and one place to authenticate requests."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import attrs
from multidict import CIMultiDictProxy
from yarl import URL

from signet_cluster.errors import PeerUnreachable
from signet_cluster.security.signing import AUTH_HEADERS, NONCE_HEADER, RoleSigner, Signer

HOP_HEADER = "x-signet-cluster-hop"
# Headers aiohttp would add on its own; a forwarded request carries only the client's.
# Content-Type too: a signature covers it (signet_cluster.security.signing), so aiohttp must
# not add one the signer did not see.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# The largest answer `call` reads: a heartbeat reply for 1,000 nodes is about 1.6 MB.
MAX_REPLY_BYTES = 64 * 1024 * 1024


@attrs.frozen
class PeerResponse:
    status: int
    body: Any
    headers: dict[str, str]
    # The body as received (decompressed) and the nonce the request was signed with: what
    # a signed reply is checked against (sidecar.security.auth.check_reply).
    raw: bytes = b""
    nonce: str | None = None


@attrs.frozen
class RawResponse:
    """A forwarded request's answer, untouched: status, every header, the body bytes."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class ForwardFailed(PeerUnreachable):
    """A forwarded request got no answer. `connected` is False when the connection could
    not even be opened (so the request was certainly not applied there)."""

    def __init__(self, message: str, *, connected: bool, timed_out: bool) -> None:
        super().__init__(message)
        self.connected = connected
        self.timed_out = timed_out


class PeerClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        node_id: str,
        timeout: float,
        *,
        signer: Signer | None = None,
        ssl_context: Callable[[], ssl.SSLContext | None] | None = None,
        coordinator_signer: RoleSigner | None = None,
        is_coordinator: Callable[[], bool] = lambda: False,
        reply_problem: Callable[[PeerResponse], str | None] = lambda _response: None,
    ) -> None:
        self.session = session
        self.node_id = node_id
        self.timeout = timeout
        self.signer = signer
        self.coordinator_signer = coordinator_signer
        self.is_coordinator = is_coordinator
        # Why a signed reply cannot be trusted, or None (sidecar.security.auth.check_reply).
        self.reply_problem = reply_problem
        # Read per request, so reloaded certificates are used from the next connection on.
        self.ssl_context = ssl_context or (lambda: None)
        self.max_reply_bytes = MAX_REPLY_BYTES

    async def call(
        self,
        method: str,
        base_url: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        params: dict[str, str] | None = None,
    ) -> PeerResponse:
        data = json.dumps(body).encode() if body is not None else b""
        url = URL(base_url.rstrip("/") + path)
        if params:
            url = url.extend_query(params)
        headers = self._headers(
            method, url, data, {"Content-Type": "application/json"}, control=True
        )
        try:
            async with self.session.request(
                method,
                url,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
                ssl=self._ssl(url),
            ) as resp:
                raw = await self._read_capped(resp, f"{method} {url}")
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = raw.decode("utf-8", "replace")
                return PeerResponse(
                    resp.status,
                    parsed,
                    dict(resp.headers),
                    raw=raw,
                    nonce=headers.get(NONCE_HEADER),
                )
        except TimeoutError:
            raise PeerUnreachable(f"{method} {url} timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise PeerUnreachable(f"{method} {url} failed: {exc or type(exc).__name__}") from None

    async def _read_capped(self, resp: aiohttp.ClientResponse, what: str) -> bytes:
        """The body, or PeerUnreachable once it passes max_reply_bytes (a wrong address or a
        broken peer must not make this sidecar hold whatever it sends)."""
        limit = self.max_reply_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > limit:
                raise PeerUnreachable(f"{what} answered with more than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _headers(
        self,
        method: str,
        url: URL,
        body: bytes,
        extra: Mapping[str, str],
        *,
        control: bool = False,
    ) -> dict[str, str]:
        """The headers of every request to a peer: the one place they are built, and where
        every request is signed (method, Host, path and query, the headers the receiver acts on,
        body; signet_cluster.security.signing).
        Signature headers and Host arriving in `extra` (a forwarded client's) are replaced."""
        drop = {*AUTH_HEADERS, "host"}
        headers = {k: v for k, v in extra.items() if k.lower() not in drop}
        headers[HOP_HEADER] = self.node_id
        host = url.host_port_subcomponent or ""
        headers["Host"] = host
        signer: Signer | RoleSigner | None = self.signer
        if control and self.coordinator_signer is not None and self.is_coordinator():
            # A coordinator's own calls (heartbeats, replication, join's tell) prove its
            # role; relayed memory requests stay on the cluster key (cheaper to check).
            signer = self.coordinator_signer
        if signer is not None:
            headers.update(signer.headers(method, host, url.raw_path_qs, body, headers))
        return headers

    def _ssl(self, url: URL) -> ssl.SSLContext | bool:
        """The cluster CA's context for https peers; True (system trust) when none is set."""
        if url.scheme != "https":
            return True
        return self.ssl_context() or True

    async def forward(
        self,
        method: str,
        base_url: str,
        path_qs: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
        timeout: float,
    ) -> RawResponse:
        """Relay one request to another sidecar as bytes (path and query already encoded)
        and return its answer as bytes; raises ForwardFailed when there is none."""
        url = URL(base_url.rstrip("/") + path_qs, encoded=True)
        try:
            async with self.session.request(
                method,
                url,
                data=body,
                headers=self._headers(method, url, body, headers),
                timeout=aiohttp.ClientTimeout(total=timeout),
                ssl=self._ssl(url),
                auto_decompress=False,
                skip_auto_headers=_NO_AUTO_HEADERS,
                allow_redirects=False,
            ) as resp:
                return RawResponse(resp.status, resp.headers, await resp.read())
        except TimeoutError:
            raise ForwardFailed(
                f"{method} {base_url} timed out after {timeout:g}s", connected=True, timed_out=True
            ) from None
        except aiohttp.ClientConnectorError as exc:
            raise ForwardFailed(
                f"cannot connect to {base_url}: {exc.os_error or exc}",
                connected=False,
                timed_out=False,
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise ForwardFailed(
                f"{method} {base_url} failed: {exc or type(exc).__name__}",
                connected=True,
                timed_out=False,
            ) from None
