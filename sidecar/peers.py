"""Every call this sidecar makes to another sidecar goes through PeerClient: one connection
pool, an explicit timeout on every call, and one place to authenticate requests."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import attrs

from signet_cluster.errors import PeerUnreachable

HOP_HEADER = "x-signet-cluster-hop"


@attrs.frozen
class PeerResponse:
    status: int
    body: Any
    headers: dict[str, str]


class PeerClient:
    def __init__(self, session: aiohttp.ClientSession, node_id: str, timeout: float) -> None:
        self.session = session
        self.node_id = node_id
        self.timeout = timeout

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
        headers = {"Content-Type": "application/json", HOP_HEADER: self.node_id}
        url = base_url.rstrip("/") + path
        try:
            async with self.session.request(
                method,
                url,
                data=data,
                headers=headers,
                params=params,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
            ) as resp:
                raw = await resp.read()
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = raw.decode("utf-8", "replace")
                return PeerResponse(resp.status, parsed, dict(resp.headers))
        except TimeoutError:
            raise PeerUnreachable(f"{method} {url} timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise PeerUnreachable(f"{method} {url} failed: {exc or type(exc).__name__}") from None
