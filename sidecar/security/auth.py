"""Who may call this sidecar: the auth middleware and the peer-address policy.

Every request is put in one class by method and path, then admitted or refused:

| class | routes | unsigned from loopback | unsigned from elsewhere |
|---|---|---|---|
| public | GET /livez, /readyz, /health, /api/cluster/openapi.json | yes | yes |
| peer | POST /api/cluster/heartbeat, /api/cluster/contribute, any request with the hop header | only while the sidecar has no key and no mTLS | 401 |
| admin | every other non-GET /api/cluster/* (join, remove, coordinators, adopt, promote, admin sync ...) | only with `allow_unsigned_loopback_admin` | 401 |
| read | GET /api/cluster/*, and the pages the sidecar serves itself (GET /metrics, /cluster, /cluster/static/*) | yes | 401 |
| memory | everything else (the daemon's paths) | yes | 401, unless it carries a bearer token and the daemon runs in team mode (then the daemon judges the token) |

A request that is correctly signed (signet_cluster.security.signing) or arrives over TLS with a client
certificate the CA issued is admitted in every class. Signature headers that do not verify are
refused even from loopback: a bad signature is never downgraded to "unsigned". With both a
certificate and a signature, the signing node must be the certificate's node.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import Literal

import attrs
import structlog
from aiohttp import web

from sidecar.keys import AUTH, METRICS
from sidecar.membership.peers import HOP_HEADER
from signet_cluster.clock import Clock, SystemClock
from signet_cluster.daemon.roster import load_manifest
from signet_cluster.errors import ConfigError, Forbidden
from signet_cluster.security.keyring import KeyringFile, loose_permissions
from signet_cluster.security.signing import (
    NODE_HEADER,
    AuthFailure,
    Presented,
    ReplayCache,
    Signer,
    Verifier,
)
from signet_cluster.security.tls import TlsManager, certificate_identity
from signet_cluster.settings import Settings, unsafe_bind_problem

log = structlog.get_logger("signet_cluster.auth")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteClass = Literal["public", "peer", "admin", "read", "memory"]
Via = Literal["public", "signature", "certificate", "loopback", "bearer", "metrics_token"]

PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/health", "/api/cluster/openapi.json"})
HEARTBEAT_PATH = "/api/cluster/heartbeat"
PEER_PATHS = frozenset({HEARTBEAT_PATH, "/api/cluster/contribute"})
# Answered by the sidecar, never by the daemon: a bearer token (which only the daemon can
# judge) must not open them, so they are reads like GET /api/cluster/*.
SIDECAR_PAGES = frozenset({"/metrics", "/cluster"})
SIDECAR_PAGE_PREFIX = "/cluster/"
RELOAD_PERIOD_S = 1.0


@attrs.frozen
class Caller:
    """How a request was admitted; handlers read it to bind messages to their sender."""

    via: Via
    node_id: str | None = None
    key_id: str | None = None
    peer: str | None = None


CALLER = web.RequestKey("caller", Caller)


def classify(method: str, path: str, hop: bool) -> RouteClass:
    read_only = method in ("GET", "HEAD")
    if read_only and path in PUBLIC_PATHS:
        return "public"
    if path.startswith("/api/cluster/"):
        if path in PEER_PATHS and not read_only:
            return "peer"
        if not read_only:
            # Fail closed: an unknown state-changing cluster route is an admin route.
            return "admin"
        return "peer" if hop else "read"
    if hop:
        return "peer"
    if read_only and (path in SIDECAR_PAGES or path.startswith(SIDECAR_PAGE_PREFIX)):
        return "read"
    return "memory"


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def daemon_auth_mode(settings: Settings) -> str:
    """The daemon's `auth.mode` (local, hybrid or team): from settings, else agent.yaml."""
    if settings.daemon_auth_mode != "auto":
        return settings.daemon_auth_mode
    auth = load_manifest(settings.workspace_path).get("auth")
    mode = auth.get("mode") if isinstance(auth, dict) else None
    return mode if mode in ("local", "hybrid", "team") else "local"


class AuthState:
    """Keys, certificates, replay cache and clock of one sidecar.

    `clock` is the wall clock used to sign and to check timestamps (tests replace it);
    `peer_override` is a test hook: when set, every request is treated as coming from that
    address (the real peer is used otherwise; there is no setting for it)."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.keyring = KeyringFile(settings.secret_file, settings.keyring_file)
        self.tls = TlsManager(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
        # Requests signed before this process started may have been accepted by the one
        # before it (its replay cache is gone): they are refused as stale.
        self.cache = ReplayCache(
            settings.replay_cache_size,
            int(settings.auth_skew * 1000),
            floor_ms=int(self.clock.time() * 1000),
        )
        self.verifier = Verifier(
            lambda: self.keyring.current, skew_s=settings.auth_skew, cache=self.cache
        )
        self.peer_override: str | None = None
        self.daemon_mode = "local"
        self.refused = 0
        # Prometheus cannot sign requests; it can send a bearer token (metrics_token_file).
        self.metrics_token: bytes | None = None

    def load(self) -> None:
        """Read keys and certificates (ConfigError listing the problems when they fail)."""
        problems: list[str] = []
        try:
            check_safe_bind(self.settings)
        except ConfigError as exc:
            problems.extend(exc.problems)
        for step in (self.keyring.load, self.tls.load, self._load_metrics_token):
            try:
                step()
            except ConfigError as exc:
                problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        path = self.keyring.path
        if path is not None and loose_permissions(path):
            log.warning("key_file_readable_by_others", path=str(path), fix=f"chmod 600 {path}")
        self.daemon_mode = daemon_auth_mode(self.settings)

    def _load_metrics_token(self) -> None:
        path = self.settings.metrics_token_file
        if path is None:
            return
        try:
            token = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                [f"metrics_token_file {path} cannot be read: {type(exc).__name__}"]
            ) from None
        if len(token) < 16:
            raise ConfigError(
                [f"metrics_token_file {path}: the token must be at least 16 characters"]
            )
        self.metrics_token = token.encode()

    def metrics_token_ok(self, request: web.Request) -> bool:
        """A scrape of /metrics carrying the configured bearer token."""
        if self.metrics_token is None or request.method not in ("GET", "HEAD"):
            return False
        if request.path != "/metrics":
            return False
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.metrics_token
        )

    @property
    def secured(self) -> bool:
        """True when callers can prove who they are (a key or client certificates)."""
        return self.keyring.current is not None or self.tls.verifies_clients

    def signer(self, node_id: str) -> Signer:
        # Looked up per request: a replaced clock (tests) or keyring applies at once.
        return Signer(lambda: self.keyring.current, node_id, wall=lambda: self.clock.time())

    def describe(self) -> dict[str, object]:
        """For status output: key ids and modes, never secrets."""
        current = self.keyring.current
        return {
            "keyring": current.describe() if current else None,
            "tls": self.tls.listener_enabled,
            "mtls": self.tls.verifies_clients,
            "allow_unsigned_loopback_admin": self.settings.allow_unsigned_loopback_admin,
            "daemon_auth_mode": self.daemon_mode,
            "replay_cache": len(self.cache),
        }

    def reload(self, force: bool = False) -> None:
        """Pick up changed key and certificate files; a broken file keeps the old ones."""
        try:
            if self.keyring.reload_if_changed(force):
                current = self.keyring.current
                log.info("keyring_reloaded", **(current.describe() if current else {}))
        except ConfigError as exc:
            log.error("keyring_reload_failed", problems=exc.problems)
        try:
            if self.tls.reload_if_changed(force):
                log.info("tls_reloaded", cert=self.tls.cert_file, ca=self.tls.ca_file)
        except ConfigError as exc:
            log.error("tls_reload_failed", problems=exc.problems)
        self.daemon_mode = daemon_auth_mode(self.settings)


def peer_address(request: web.Request) -> str | None:
    override = request.app[AUTH].peer_override
    if override is not None:
        return override
    # The socket's peer, never a forwarded-for header: nothing in front of us is trusted.
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if isinstance(peer, tuple | list) and peer:
        return str(peer[0])
    return None


def certificate_node(request: web.Request) -> str | None:
    transport = request.transport
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if sslobj is None:
        return None
    return certificate_identity(sslobj.getpeercert())


def _refused(
    request: web.Request, status: int, reason: str, message: str, **context: object
) -> web.Response:
    """Count, log and answer one refused request (never a secret in the log)."""
    app = request.app
    app[AUTH].refused += 1
    log.warning("request_refused", reason=reason, path=request.path, **context)
    if request.path == HEARTBEAT_PATH:
        # Refused before the handler runs, so counted here (README: Metrics).
        outcome = "unauthorized" if status == 401 else "forbidden"
        app[METRICS].heartbeats_received.labels(outcome=outcome).inc()
    return refuse(status, reason, message)


def refuse(status: int, reason: str, message: str) -> web.Response:
    response = web.json_response(
        {
            "error": message,
            "code": "unauthorized" if status == 401 else "forbidden",
            "reason": reason,
        },
        status=status,
    )
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Signet-HMAC-SHA256 realm="signet-cluster"'
    return response


def _unsigned(
    auth: AuthState, kind: RouteClass, loopback: bool, request: web.Request
) -> str | None:
    """Why an unsigned request of this class is refused, or None to admit it."""
    if kind == "peer":
        if loopback and not auth.secured:
            return None
        return "requests between sidecars must be signed with the cluster key (or use mTLS)"
    if kind == "admin":
        if loopback and auth.settings.allow_unsigned_loopback_admin:
            return None
        return (
            "admin operations must be signed: give the CLI the cluster key "
            "(SIGNET_CLUSTER_SECRET_FILE or SIGNET_CLUSTER_KEYRING_FILE), "
            "or set allow_unsigned_loopback_admin for loopback callers"
        )
    if loopback:
        return None
    if (
        kind == "memory"
        and auth.daemon_mode == "team"
        and request.headers.get("Authorization", "").startswith("Bearer ")
    ):
        return None
    return "requests from other hosts must be signed with the cluster key (or use mTLS)"


def admits_loopback_unsigned(auth: AuthState, method: str, path: str) -> bool:
    """Whether `authenticate` lets in an unsigned request for `method path` from a loopback
    address over plain TCP with no cluster headers. The fast lane
    (sidecar.pipeline.fastlane) asks this before serving such a request itself; keep it in
    step with `_unsigned` (today: the memory class is open to loopback)."""
    del auth  # the rule needs no per-sidecar state today
    return classify(method, path, hop=False) == "memory"


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    auth = request.app[AUTH]
    kind = classify(request.method, request.path, HOP_HEADER in request.headers)
    if kind == "public":
        request[CALLER] = Caller(via="public")
        return await handler(request)
    if auth.metrics_token_ok(request):
        request[CALLER] = Caller(via="metrics_token")
        return await handler(request)
    peer = peer_address(request)
    loopback = is_loopback(peer)
    try:
        presented = Presented.parse(request.headers)
        cert_node = certificate_node(request) if auth.tls.verifies_clients else None
        if presented is not None and auth.keyring.current is None:
            # Nothing to check a signature against: judge the request by its certificate,
            # else as unsigned, and say why if that refuses it (a CLI with a key talking to
            # a keyless sidecar).
            if cert_node is None and _unsigned(auth, kind, loopback, request) is not None:
                raise AuthFailure(
                    "no_keyring",
                    "this request is signed but this sidecar has no cluster key "
                    "(secret_file/keyring_file) to check it with",
                )
            presented = None
        if presented is not None:
            body = await request.read()
            verified = auth.verifier.verify(
                presented,
                method=request.method,
                host=request.headers.get("Host", ""),
                path_qs=request.raw_path,
                body=body,
                now=auth.clock.time(),
            )
            if cert_node is not None and cert_node != verified.node_id:
                return _refused(
                    request,
                    403,
                    "wrong_node",
                    f"signed as node {verified.node_id!r} but the client certificate is "
                    f"{cert_node!r}",
                    peer=peer,
                    signed_as=verified.node_id,
                    certificate=cert_node,
                )
            caller = Caller(
                via="signature", node_id=verified.node_id, key_id=verified.key_id, peer=peer
            )
        elif cert_node is not None:
            caller = Caller(via="certificate", node_id=cert_node, peer=peer)
        else:
            reason = _unsigned(auth, kind, loopback, request)
            if reason is not None:
                raise AuthFailure("unsigned", reason)
            bearer = not loopback
            caller = Caller(via="bearer" if bearer else "loopback", peer=peer)
    except AuthFailure as failure:
        return _refused(
            request,
            401,
            failure.reason,
            failure.message,
            peer=peer,
            method=request.method,
            node=request.headers.get(NODE_HEADER),
        )
    request[CALLER] = caller
    return await handler(request)


def token_unverified(request: web.Request) -> bool:
    """True for a caller let in from another host only because it carries a daemon bearer
    token (team mode): nobody has checked that token until the owner's daemon answers, so
    the sidecar must not answer for it on its own (no fan-out without the owner's 200, no
    spooling)."""
    caller = request.get(CALLER)
    return caller is not None and caller.via == "bearer"


def require_sender(request: web.Request, node_id: str) -> None:
    """A message describing `node_id` must come from that node (signature or certificate).
    Unsigned loopback callers of an unsecured sidecar have no identity to compare."""
    caller = request.get(CALLER)
    if caller is None or caller.node_id is None:
        return
    if caller.node_id != node_id:
        raise Forbidden(
            f"a node may only speak for itself: this message describes node {node_id!r} "
            f"but was sent by {caller.node_id!r}",
            details={"reason": "wrong_node"},
        )


routes = web.RouteTableDef()


@routes.get("/api/cluster/keyring")
async def keyring_status(request: web.Request) -> web.Response:
    """Key ids this sidecar has loaded (never secrets): check every node has a new key
    before making it primary (`signet-cluster keyring list --live`)."""
    return web.json_response(request.app[AUTH].describe())


async def _reload_loop(auth: AuthState) -> None:
    while True:
        await asyncio.sleep(RELOAD_PERIOD_S)
        auth.reload()


async def auth_ctx(app: web.Application) -> AsyncIterator[None]:
    """Re-read key and certificate files once a second (SIGHUP forces it: sidecar.runner)."""
    task = asyncio.create_task(_reload_loop(app[AUTH]), name="auth-reload")
    yield
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


def check_safe_bind(settings: Settings) -> None:
    """Refuse a listener that other hosts can reach when nobody could be authenticated
    (settings validation says the same; Settings built directly skip it)."""
    problem = unsafe_bind_problem(settings)
    if problem:
        raise ConfigError([problem])
