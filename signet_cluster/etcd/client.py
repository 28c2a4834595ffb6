"""An asyncio client for etcd's v3 JSON gateway (etcd >= 3.4), over aiohttp.

The Python etcd clients are unmaintained, so this speaks the gateway directly, as Patroni
does: every RPC is `POST <endpoint>/v3/<service>/<method>` with a JSON body, keys and values
base64-encoded, 64-bit integers as decimal strings, and fields at their default value left
out of answers (a missing `succeeded` means false, a missing `TTL` means 0). Streaming RPCs
(watch) answer one JSON object per line, each wrapped in `{"result": ...}`.

Every call has an explicit timeout. Endpoints are tried in order, starting with the last one
that answered; only an unreachable endpoint (or one that says it cannot serve) moves the call
on to the next. Failures raise `EtcdError`s that say which endpoint failed and how.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, aclosing
from typing import Any

import aiohttp

from signet_cluster.etcd.wire import (
    Compare,
    Delete,
    EtcdError,
    EtcdRequestFailed,
    EtcdUnavailable,
    Get,
    KeyValue,
    Lease,
    LeaseNotFound,
    Op,
    Put,
    RangeResult,
    TxnResult,
    WatchBatch,
    WatchCompacted,
    WatchEvent,
    as_int,
    parse_json,
    prefix_end,
    raise_for_error,
    range_body,
    txn_responses,
    watch_batch,
)

__all__ = [
    "Compare",
    "Delete",
    "EtcdClient",
    "EtcdError",
    "EtcdRequestFailed",
    "EtcdUnavailable",
    "Get",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "Op",
    "Put",
    "RangeResult",
    "TxnResult",
    "WatchBatch",
    "WatchCompacted",
    "WatchEvent",
    "prefix_end",
]

# A watch answer bigger than this is refused rather than buffered without bound (etcd's own
# default request limit is 1.5 MiB; one answer can batch several of them).
MAX_STREAM_MESSAGE = 32 * 1024 * 1024


# -- the client --------------------------------------------------------------------------
class EtcdClient:
    """Calls on one aiohttp session; `endpoints` are http(s)://host:port client URLs."""

    def __init__(
        self, session: aiohttp.ClientSession, endpoints: Sequence[str], *, timeout: float
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self.session = session
        self.endpoints = tuple(e.rstrip("/") for e in endpoints)
        self.timeout = timeout
        self._preferred = 0

    @property
    def endpoint(self) -> str:
        """The endpoint calls start with (the last one that answered)."""
        return self.endpoints[self._preferred]

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._preferred + i) % n for i in range(n)]

    async def call(self, path: str, body: dict[str, Any], *, timeout: float | None = None) -> Any:
        """POST one unary RPC (`path` like "/kv/range"), failing over between endpoints."""
        failures: list[str] = []
        for index in self._order():
            endpoint = self.endpoints[index]
            try:
                answer = await self._post(endpoint, path, body, timeout or self.timeout)
            except EtcdUnavailable as exc:
                failures.append(exc.message)
                continue
            self._preferred = index
            return answer
        raise EtcdUnavailable("etcd unreachable: " + "; ".join(failures))

    async def _post(self, endpoint: str, path: str, body: dict[str, Any], timeout: float) -> Any:
        url = f"{endpoint}/v3{path}"
        try:
            async with self.session.post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError:
            raise EtcdUnavailable(f"{url} timed out after {timeout:g}s") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise EtcdUnavailable(f"{url}: {exc or type(exc).__name__}") from None
        # A streaming RPC called this way answers one `{"result": ...}` line.
        data = parse_json(raw.split(b"\n", 1)[0] if raw.startswith(b'{"result"') else raw, url)
        if isinstance(data, dict) and "result" in data and len(data) == 1:
            data = data["result"]
        raise_for_error(data, url, status)
        return data

    # -- leases --------------------------------------------------------------------------
    async def lease_grant(self, ttl: int) -> Lease:
        data = await self.call("/lease/grant", {"TTL": str(ttl)})
        return Lease(id=as_int(data.get("ID")), ttl=as_int(data.get("TTL")))

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew the lease; returns its TTL. Raises LeaseNotFound when it has expired."""
        data = await self.call("/lease/keepalive", {"ID": str(lease_id)})
        ttl = as_int(data.get("TTL"))
        if ttl <= 0:
            raise LeaseNotFound(f"etcd lease {lease_id:x} not found (expired or revoked)")
        return ttl

    async def lease_revoke(self, lease_id: int) -> bool:
        """Revoke the lease (its keys go with it). False when it was already gone."""
        try:
            await self.call("/lease/revoke", {"ID": str(lease_id)})
        except LeaseNotFound:
            return False
        return True

    async def lease_ttl(self, lease_id: int) -> int:
        """Seconds left on the lease; -1 when it does not exist."""
        data = await self.call("/lease/timetolive", {"ID": str(lease_id)})
        return as_int(data.get("TTL"))

    # -- keys ----------------------------------------------------------------------------
    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write one key (attached to `lease` when given); returns the new revision."""
        data = await self.call("/kv/put", Put(key, value, lease).to_json()["request_put"])
        return as_int(data["header"].get("revision"))

    async def range(self, key: str, *, prefix: bool = False) -> RangeResult:
        return RangeResult.from_json(await self.call("/kv/range", range_body(key, prefix)))

    async def get(self, key: str) -> KeyValue | None:
        result = await self.range(key)
        return result.kvs[0] if result.kvs else None

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete a key (or every key under a prefix); returns how many were deleted."""
        data = await self.call("/kv/deleterange", range_body(key, prefix))
        return as_int(data.get("deleted"))

    async def txn(
        self, compare: Iterable[Compare], success: Iterable[Op], failure: Iterable[Op] = ()
    ) -> TxnResult:
        """All `compare` hold → run `success`, else `failure`, atomically."""
        data = await self.call(
            "/kv/txn",
            {
                "compare": [c.to_json() for c in compare],
                "success": [op.to_json() for op in success],
                "failure": [op.to_json() for op in failure],
            },
        )
        revision = as_int(data["header"].get("revision"))
        return TxnResult(
            succeeded=bool(data.get("succeeded")),
            revision=revision,
            responses=txn_responses(data, revision),
        )

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> tuple[bool, KeyValue]:
        """Write `key` only if it does not exist (compare-and-swap on create revision 0).
        Returns (True, what was written) to the first caller, (False, the existing key)
        to every other: etcd serialises the txns, so all callers agree on the winner."""
        result = await self.txn([Compare.absent(key)], [Put(key, value, lease)], [Get(key)])
        if result.succeeded:
            written = KeyValue(
                key=key,
                value=value,
                create_revision=result.revision,
                mod_revision=result.revision,
                version=1,
                lease=lease,
            )
            return True, written
        found = result.responses[0] if result.responses else None
        if isinstance(found, RangeResult) and found.kvs:
            return False, found.kvs[0]
        # Deleted again between the compare and the read: report it as lost, unknown owner.
        raise EtcdRequestFailed(f"create {key!r}: key vanished during the transaction")

    # -- watch ---------------------------------------------------------------------------
    async def watch(
        self,
        key: str,
        *,
        prefix: bool = False,
        start_revision: int,
        on_disconnect: Callable[[EtcdError], None] | None = None,
        retry_min: float = 0.1,
        retry_max: float = 2.0,
    ) -> AsyncGenerator[WatchBatch, None]:
        """Every change to `key` (or under it) from `start_revision` on, for as long as the
        caller iterates. A broken stream is reopened from the revision after the last event
        seen (backing off from `retry_min` to `retry_max` seconds while etcd is away), so no
        event is lost or repeated; `on_disconnect` hears each break. Raises WatchCompacted
        when etcd no longer has the history to resume from."""
        next_revision = start_revision
        delay = retry_min
        while True:
            error: EtcdError
            try:
                async with aclosing(self._watch_once(key, prefix, next_revision)) as batches:
                    async for batch in batches:
                        next_revision = batch.next_revision
                        delay = retry_min
                        yield batch
                error = EtcdUnavailable("etcd closed the watch stream")
            except (EtcdUnavailable, EtcdRequestFailed) as exc:
                error = exc
            if on_disconnect is not None:
                on_disconnect(error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, retry_max)

    async def _watch_once(
        self, key: str, prefix: bool, start_revision: int
    ) -> AsyncGenerator[WatchBatch, None]:
        """One watch stream: tries the endpoints in order until one opens it, then yields
        until it breaks (raising EtcdUnavailable, never silently ending)."""
        request = {**range_body(key, prefix), "start_revision": str(start_revision)}
        body = {"create_request": request}
        # No total timeout: the stream lives as long as the watch.
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout, sock_connect=self.timeout)
        failures: list[str] = []
        for index in self._order():
            url = f"{self.endpoints[index]}/v3/watch"
            opened = False
            try:
                async with AsyncExitStack() as stack:
                    # Connecting, the response headers and the first answer, together, within
                    # the call timeout (aiohttp's timeouts above would wait for the headers
                    # forever, and a member in trouble may never send them).
                    async with asyncio.timeout(self.timeout):
                        resp = await stack.enter_async_context(
                            self.session.post(url, json=body, timeout=timeout)
                        )
                        lines = await stack.enter_async_context(aclosing(_lines(resp.content, url)))
                        message = await anext(lines, None)
                    if message is None:
                        raise EtcdUnavailable(f"{url} closed the watch before answering")
                    raise_for_error(parse_json(message, url), url, resp.status)
                    opened = True
                    self._preferred = index
                    next_revision = start_revision
                    while message is not None:
                        batch = watch_batch(
                            parse_json(message, url), url, next_revision, self.endpoints[index]
                        )
                        next_revision = batch.next_revision
                        yield batch
                        message = await anext(lines, None)
                    raise EtcdUnavailable(f"{url} closed the watch stream")
            except TimeoutError:
                failure = f"{url} timed out after {self.timeout:g}s"
            except (aiohttp.ClientError, OSError) as exc:
                failure = f"{url}: {exc or type(exc).__name__}"
            except EtcdUnavailable as exc:
                failure = exc.message
            if opened:
                # Resuming must start after the events already delivered: the caller
                # reopens with the right revision instead of trying the next endpoint here.
                raise EtcdUnavailable(failure)
            failures.append(failure)
        raise EtcdUnavailable("etcd watch failed: " + "; ".join(failures))


async def _lines(content: aiohttp.StreamReader, url: str) -> AsyncGenerator[bytes, None]:
    """Newline-delimited messages of any size up to MAX_STREAM_MESSAGE (aiohttp's readline
    stops at 128 KiB, less than one big heartbeat)."""
    buffer = b""
    async for chunk in content.iter_any():
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
        if len(buffer) > MAX_STREAM_MESSAGE:
            raise EtcdRequestFailed(f"{url}: a watch answer exceeds {MAX_STREAM_MESSAGE} bytes")
    if buffer.strip():
        yield buffer
