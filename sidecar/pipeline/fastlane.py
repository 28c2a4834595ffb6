"""The fast lane: local recalls and remembers relayed without aiohttp's web layer.

A local remember, or a local recall that does not federate (the agent lives here and reads
alone: `default`, an isolated reader, or any reader of a one-node cluster) is, for the
sidecar, one request in and the daemon's answer out. Through aiohttp's server, middlewares and response objects that
costs about 0.17 ms of CPU per request more than the relay itself (bench/proxy.py), on the
cores the daemon needs. So each new connection starts in the fast lane, a small asyncio
protocol that reads HTTP/1.1 requests itself and serves the ones it can answer exactly as
the full pipeline would; the first request it cannot (any other route, a signed or hop
request, a client that is not on loopback, TLS, a chunked or incomplete body, a read that
federates, anything unusual in the head) is handed, with the connection and every byte not
yet consumed, to aiohttp for good. Nothing is sent to the daemon before that decision, so a
handed-over request is served from its first byte by the ordinary pipeline.

What a served request gets is what `sidecar.pipeline.routes.handle` gives: the same daemon
call (`serve_on_daemon`: flavor plan, Rust session keys, header filter), the same response
headers (the daemon's minus hop-by-hop, `x-signet-cluster-served-by`, for a recall
`x-signet-cluster-missing: 0/1`, Date and Server as aiohttp sets them), the same 503/504
when the daemon fails (a remember is spooled instead, 202), and the same metrics. Admission is `sidecar.security.auth.admits_loopback_unsigned`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from http import HTTPStatus
from typing import Any, cast

import structlog
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar import keys
from sidecar.federation.fanout import MISSING_HEADER
from sidecar.federation.legs import contributors
from sidecar.keys import PROXY
from sidecar.membership.peers import RawResponse
from sidecar.memory.forward import (
    HOP_BY_HOP,
    SERVED_BY_HEADER,
    DaemonError,
    connection_tokens,
)
from sidecar.memory.handoff import spool_write
from sidecar.memory.proxy import daemon_failure, parse_object, serve_on_daemon
from sidecar.memory.routing import current_view
from sidecar.security.auth import admits_loopback_unsigned, is_loopback
from sidecar.security.limits import CONNECTIONS, MAX_HEADERS
from signet_cluster.daemon.agent_resolution import RouteKind, resolve_agent
from signet_cluster.spool import ensure_idempotency_key

log = structlog.get_logger("signet_cluster.http")

# (method, path) → kind: the routes the fast lane may serve.
FAST_ROUTES = {
    (b"POST", b"/api/memory/recall"): RouteKind.RECALL,
    (b"POST", b"/api/memory/remember"): RouteKind.REMEMBER,
    (b"POST", b"/api/memory/save"): RouteKind.REMEMBER,
}
_CLUSTER_PREFIX = "x-signet-cluster-"
# Request headers that change how the message is framed or answered: aiohttp handles them.
_HANDOVER_HEADERS = frozenset({"transfer-encoding", "expect", "connection", "upgrade"})
_NO_BODY_STATUS = frozenset({204, 304})
# Buffered beyond one largest request before reading pauses.
_HEAD_ROOM = 64 * 1024
# A header field aiohttp's parser accepts without question: a token name, a value without
# control characters. Anything else is handed over, so aiohttp gives its own 400.
_FIELD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*")


class FastLaneServer(web.Server):
    """aiohttp's server, whose connections start in the fast lane."""

    def __init__(self, inner: web.Server, app: web.Application) -> None:
        # The same handler and settings as the server AppRunner built; this object takes
        # its place in the runner, and the aiohttp handlers it makes register with it.
        self.__dict__.update(inner.__dict__)
        self.app = app
        # Read once: the app is frozen once it serves, and these are per-request lookups.
        self.settings = app[keys.SETTINGS]
        self.auth = app[keys.AUTH]
        self.metrics = app[keys.METRICS]
        self.routes = app[PROXY].routes
        # The listener's connection bounds (sidecar.security.limits): a fast-lane connection
        # counts like any other, and one over a limit goes to aiohttp, where it is shed.
        self.guard = app.get(CONNECTIONS)
        self.fast: set[FastLane] = set()
        self.closing = False
        # Requests the fast lane answered itself, and connections it handed to aiohttp.
        self.served = 0
        self.handed_over = 0

    def __call__(self) -> Any:  # a protocol factory for loop.create_server
        return FastLane(self)

    def aiohttp_handler(self) -> RequestHandler:
        return super().__call__()

    def pre_shutdown(self) -> None:
        self.closing = True
        for lane in list(self.fast):
            if lane.task is None:
                lane.close()
        super().pre_shutdown()

    async def shutdown(self, timeout: float | None = None) -> None:
        busy = [lane.task for lane in self.fast if lane.task is not None]
        if busy:
            # In-flight requests finish (within the grace), as aiohttp's own do.
            await asyncio.wait(busy, timeout=timeout)
        for lane in list(self.fast):
            lane.close()
        await super().shutdown(timeout)


class SidecarRunner(web.AppRunner):
    """`web.AppRunner` whose server has the fast lane (sidecar.runner and the tests)."""

    async def _make_server(self) -> web.Server:
        return FastLaneServer(await super()._make_server(), self.app)


class _HandOver(Exception):
    """This request is not the fast lane's."""


class FastLane(asyncio.Protocol):
    """One client connection while its requests are fast-lane requests."""

    def __init__(self, server: FastLaneServer) -> None:
        self.server = server
        self.app = server.app
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.peer = ""
        self.paused = False
        self.counted = False  # opened in the connection guard while in the fast lane

    # -- asyncio.Protocol --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple | list) and peer else ""
        auth = self.server.auth
        guard = self.server.guard
        if (
            self.server.closing
            or transport.get_extra_info("ssl_object") is not None
            or auth.peer_override is not None
            or not is_loopback(self.peer)
            or (guard is not None and guard.would_exceed(transport))
        ):
            self.hand_over()
            return
        if guard is not None:
            guard.opened(transport)
            self.counted = True
        self.server.fast.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None:
            self._next()
        elif not self.paused and len(self.buf) > self.server.settings.max_body_bytes + _HEAD_ROOM:
            # A client pipelining faster than the daemon answers: stop reading until the
            # request in hand is answered (aiohttp bounds its buffer the same way).
            assert self.transport is not None
            self.transport.pause_reading()
            self.paused = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.fast.discard(self)
        self._uncount()
        if self.idle is not None:
            self.idle.cancel()
        self.transport = None

    # -- the lane ----------------------------------------------------------------------
    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _arm_idle(self) -> None:
        """Close the connection once it has been idle for `idle_timeout`, as aiohttp does.
        One timer per connection, moved on lazily: a request costs no timer of its own."""
        loop = asyncio.get_running_loop()
        self.idle_since = loop.time()
        if self.idle is None:
            timeout = self.server.settings.idle_timeout
            self.idle = loop.call_at(self.idle_since + timeout, self._idle_check)

    def _idle_check(self) -> None:
        self.idle = None
        if self.transport is None:
            return
        loop = asyncio.get_running_loop()
        due = self.idle_since + self.server.settings.idle_timeout
        if self.task is None and loop.time() >= due:
            self.close()
            return
        if self.task is not None:
            due = loop.time() + self.server.settings.idle_timeout
        self.idle = loop.call_at(due, self._idle_check)

    def hand_over(self) -> None:
        """aiohttp takes the connection, and the bytes not yet consumed, from here on."""
        self.server.fast.discard(self)
        if self.idle is not None:
            self.idle.cancel()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.paused:
            transport.resume_reading()
            self.paused = False
        self.server.handed_over += 1
        # aiohttp's handler counts it in the guard from here on (its connection hooks).
        self._uncount()
        handler = self.server.aiohttp_handler()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self.buf:
            data, self.buf = bytes(self.buf), bytearray()
            handler.data_received(data)
        self.transport = None

    def _uncount(self) -> None:
        if self.counted and self.server.guard is not None and self.transport is not None:
            self.server.guard.closed(self.transport)
        self.counted = False

    def _next(self) -> None:
        """Serve the next buffered request, or hand the connection over."""
        if not self.buf or self.transport is None:
            return
        try:
            parsed = self._parse()
        except _HandOver:
            self.hand_over()
            return
        if parsed is None:
            self.hand_over()  # an incomplete request: aiohttp waits for the rest
            return
        self.task = asyncio.ensure_future(self._serve(*parsed))

    def _parse(self) -> tuple[RouteKind, str, CIMultiDict[str], bytes, int] | None:
        """(kind, path, headers, body, bytes used) of a complete fast-lane request; None when
        incomplete; _HandOver when it is not one."""
        settings = self.server.settings
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(self.buf[:end])
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1":
            raise _HandOver
        kind = FAST_ROUTES.get((parts[0], parts[1]))
        if kind is None or len(lines) - 1 > MAX_HEADERS:
            raise _HandOver
        limit = settings.max_header_bytes
        headers: CIMultiDict[str] = CIMultiDict()
        length = -1
        for line in lines[1:]:
            if len(line) > limit or _FIELD.fullmatch(line) is None:
                raise _HandOver  # obs-fold, odd bytes, oversize: aiohttp's parser judges it
            name, _, value = line.partition(b":")
            key = name.decode("ascii")
            lower = key.lower()
            if lower in _HANDOVER_HEADERS or lower.startswith(_CLUSTER_PREFIX):
                raise _HandOver
            text = value.strip(b" \t").decode("utf-8", "surrogateescape")
            if lower == "content-length":
                if length >= 0 or not text.isdigit():
                    raise _HandOver
                length = int(text)
            headers.add(key, text)
        upload = settings.max_upload_bytes
        if (
            length < 0
            or length > settings.max_body_bytes
            or (upload is not None and length > upload)
        ):
            raise _HandOver  # aiohttp's pipeline answers 413
        used = end + 4 + length
        if len(self.buf) < used:
            return None
        path = parts[1].decode()
        auth = self.server.auth
        # Asked per request, as the auth middleware does: the peer-address hook (tests) can
        # be set while a connection is open.
        if auth.peer_override is not None or not admits_loopback_unsigned(auth, "POST", path):
            raise _HandOver
        return kind, path, headers, bytes(self.buf[end + 4 : used]), used

    async def _serve(
        self, kind: RouteKind, path: str, headers: CIMultiDict[str], body: bytes, used: int
    ) -> None:
        started = time.perf_counter()
        app = self.app
        parsed = parse_object(body)
        view = CIMultiDictProxy(headers)
        agent = resolve_agent(kind, query={}, headers=view, body=parsed).agent_id
        target = self.server.routes.target(app, agent)
        recall = kind is RouteKind.RECALL
        outcome = "ok"
        if target.kind != "local" or (
            recall and self._federates(target.read_policy, target.node_id)
        ):
            self.task = None
            self.hand_over()
            return
        del self.buf[:used]  # from here on the request is ours
        if not recall and parsed is not None:
            # Keyed from the first try, as the pipeline does (sidecar.pipeline.serve `keyed`):
            # a spooled replay of a write the daemon took late is then answered, not stored.
            keyed = dict(parsed)
            ensure_idempotency_key(keyed, app[keys.IDENTITY].node_id)
            if keyed != parsed:
                parsed, body = keyed, json.dumps(keyed).encode()
        try:
            try:
                raw = await serve_on_daemon(
                    app,
                    kind,
                    agent,
                    method="POST",
                    raw_path=path,
                    path=path,
                    query=[],
                    headers=view,
                    body=body,
                    parsed=parsed,
                    explicit=False,
                )
            except DaemonError as exc:
                if recall or parsed is None:
                    outcome = "daemon_error"
                    self._write(daemon_failure(exc))
                else:
                    # As the pipeline does (sidecar.pipeline.serve): the remember is kept in
                    # this node's spool until the daemon takes it.
                    identity = app[keys.IDENTITY]
                    spooled = await spool_write(
                        app,
                        agent_id=agent,
                        owner={
                            "node_id": identity.node_id,
                            "url": identity.url,
                            "state": "daemon unavailable",
                        },
                        method="POST",
                        path_qs=path,
                        headers=view,
                        body=dict(parsed),
                        why=f"the local daemon: {exc.message}",
                    )
                    outcome = "spooled" if spooled.status == 202 else "refused"
                    self._write(spooled)
            else:
                self._relay(raw, target.node_id, missing=recall)
            self.server.served += 1
        except Exception:
            # As the errors middleware answers a crash in the ordinary pipeline.
            log.exception("request_crashed", path=path, method="POST")
            self._write(
                web.json_response(
                    {"error": "internal error in the sidecar (see its log)", "code": "internal"},
                    status=500,
                )
            )
        finally:
            self.server.metrics.observe_proxied(
                kind.value, "local", outcome, time.perf_counter() - started
            )
            self.task = None
        if self.transport is None:
            return
        if self.server.closing:
            self.close()
            return
        if self.paused:
            self.transport.resume_reading()
            self.paused = False
        if self.buf:
            self._next()
        else:
            self._arm_idle()

    def _federates(self, policy: str, node_id: str) -> bool:
        """Whether this reader's recall asks other nodes (sidecar.federation.fanout)."""
        if policy not in ("shared", "group"):
            return False
        view = current_view(self.app)
        return view is not None and bool(contributors(self.app, view, node_id))

    def _relay(self, raw: RawResponse, node: str, *, missing: bool) -> None:
        """The daemon's answer as aiohttp writes `to_response(raw, node)` (a read that
        did not federate: with `x-signet-cluster-missing: 0/1`), without building the
        response object."""
        if self.transport is None or self.transport.is_closing():
            return
        status, body = raw.status, raw.body
        drop = connection_tokens(raw.headers)
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        served = content_type = date = server = False
        for name, value in raw.headers.items():
            lower = name.lower()
            if lower in HOP_BY_HOP or lower == "content-length" or lower in drop:
                continue
            if missing and lower == MISSING_HEADER:
                continue  # replaced below, as `to_response` sets it
            served = served or lower == SERVED_BY_HEADER
            content_type = content_type or lower == "content-type"
            date = date or lower == "date"
            server = server or lower == "server"
            lines.append(f"{name}: {value}")
        if not served:
            lines.append(f"{SERVED_BY_HEADER}: {node}")
        if missing:
            lines.append(f"{MISSING_HEADER}: 0/1")
        if status in _NO_BODY_STATUS:
            body = b""
        else:
            lines.append(f"Content-Length: {len(body)}")
            if body and not content_type:
                lines.append("Content-Type: application/octet-stream")
        if not date:
            lines.append(f"Date: {rfc822_formatted_time()}")
        if not server:
            lines.append(f"Server: {SERVER_SOFTWARE}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        self.transport.write(head + body)

    def _write(self, response: web.Response) -> None:
        """The response as aiohttp would write it for an HTTP/1.1 keep-alive request."""
        if self.transport is None or self.transport.is_closing():
            return
        status = response.status
        body = response.body if isinstance(response.body, bytes) else b""
        headers = response.headers
        if status in _NO_BODY_STATUS:
            body = b""
            headers.popall("Content-Length", None)
        else:
            headers["Content-Length"] = str(len(body))
            if body:
                headers.setdefault("Content-Type", "application/octet-stream")
        if "Date" not in headers:
            headers["Date"] = rfc822_formatted_time()
        headers.setdefault("Server", SERVER_SOFTWARE)
        lines = [f"HTTP/1.1 {status} {_reason(status)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
        self.transport.write(head + body)


_REASONS = {status.value: status.phrase for status in HTTPStatus}


def _reason(status: int) -> str:
    return _REASONS.get(status, "")
