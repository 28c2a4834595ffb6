"""Who may call this sidecar: the auth middleware and the peer-address policy.

Every request is put in one class by method and path, and its caller gets one role; the
table says which roles each class admits:

| class | routes | roles admitted | unsigned from loopback | unsigned from elsewhere |
|---|---|---|---|---|
| public | GET /livez, /readyz, /health, /api/cluster/openapi.json | anyone | yes | yes |
| peer | POST /api/cluster/heartbeat, /api/cluster/contribute, any request with the hop header | node, coordinator | only while the sidecar has no key and no mTLS | 401 |
| admin | every other non-GET /api/cluster/* (join, remove, adopt, promote, coordinators, admin sync ...) | admin; a coordinator only for POST /api/cluster/admin and /api/cluster/coordinators | only with `allow_unsigned_loopback_admin` | 401 |
| read | GET /api/cluster/*, and the pages the sidecar serves itself (GET /metrics, /cluster, /cluster/static/*) | admin, coordinator, node, viewer | yes | 401 |
| memory | everything else (the daemon's paths) | admin, coordinator, node | yes | 401, unless it carries a bearer token and the daemon runs in team mode (then the daemon judges the token) |

Roles come from the credential, never from what a request says about itself:
- **node**: signed with a cluster key (keyring), or an mTLS certificate the CA issued;
- **coordinator**: signed with a coordinator key (`coordinator_public_keys`), or a certificate
  whose subject OU is `signet-cluster-coordinator`;
- **admin**: signed with the admin key (`admin_public_keys`; the CLI), or a certificate with
  OU `signet-cluster-admin`;
- **viewer**: the `viewer_token_file` bearer token (GET of read routes only), or a
  certificate with OU `signet-cluster-viewer`.

A role admitted to a class that is refused by it gets 403 naming the role it needs.
Signature headers that do not verify are refused even from loopback: a bad signature is
never downgraded to "unsigned". A signature holds only for the sidecar its `Host` names.
With both a certificate and a cluster-key signature, the signing node must be the
certificate's node.
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
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from yarl import URL

from sidecar.keys import AUTH, IDENTITY, METRICS
from sidecar.membership.peers import HOP_HEADER, PeerResponse
from sidecar.membership.refusals import REFUSALS
from signet_cluster.clock import Clock, SystemClock
from signet_cluster.daemon.roster import load_manifest
from signet_cluster.errors import ConfigError, Forbidden
from signet_cluster.security.keyring import KeyringFile, loose_permissions
from signet_cluster.security.roles import RoleKey, load_role_key, parse_public_keys
from signet_cluster.security.signing import (
    NODE_HEADER,
    NONCE_HEADER,
    AuthFailure,
    Presented,
    ReplayCache,
    Role,
    RoleSigner,
    Signer,
    Verifier,
    sign_reply,
    verify_reply,
)
from signet_cluster.security.tls import TlsManager, certificate_identity, certificate_role
from signet_cluster.settings import Settings, unsafe_bind_problem

log = structlog.get_logger("signet_cluster.auth")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RouteClass = Literal["public", "peer", "admin", "read", "memory"]
Via = Literal[
    "public", "signature", "certificate", "loopback", "bearer", "metrics_token", "viewer_token"
]
# What a caller may do (module docstring). `local`: an unsigned caller admitted by the
# loopback rules; `anonymous`: public routes and bearer callers the daemon judges.
CallerRole = Literal["admin", "coordinator", "node", "viewer", "local", "anonymous"]
# Admin-class routes a coordinator calls on its own: replication between coordinators and
# telling a member which coordinators to heartbeat to (join/remove).
COORDINATOR_ADMIN_PATHS = frozenset({"/api/cluster/admin", "/api/cluster/coordinators"})
CLASS_ROLES: dict[RouteClass, frozenset[str]] = {
    "peer": frozenset({"node", "coordinator", "local"}),
    "admin": frozenset({"admin", "local"}),
    "read": frozenset({"admin", "coordinator", "node", "viewer", "local"}),
    "memory": frozenset({"admin", "coordinator", "node", "local", "anonymous"}),
}

PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/health", "/api/cluster/openapi.json"})
HEARTBEAT_PATH = "/api/cluster/heartbeat"
# Set on a request a sidecar relays after admitting it on a bearer token alone (signed, so
# it cannot be removed on the way): the receiver serves it only if its daemon checks tokens.
BEARER_HEADER = "x-signet-cluster-bearer"
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
    role: CallerRole = "anonymous"
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
        self.role_keys: dict[str, tuple[Role, Ed25519PublicKey]] = {}
        # This sidecar's own coordinator key (coordinator_key_file), when it has one.
        self.coordinator_key: RoleKey | None = None
        self.verifier = Verifier(
            lambda: self.keyring.current,
            skew_s=settings.auth_skew,
            cache=self.cache,
            role_keys=lambda: self.role_keys,
        )
        self.peer_override: str | None = None
        self.daemon_mode = "local"
        self.refused = 0
        # Prometheus cannot sign requests; it can send a bearer token (metrics_token_file).
        self.metrics_token: bytes | None = None
        # A read-only bearer token (viewer_token_file).
        self.viewer_token: bytes | None = None

    def load(self) -> None:
        """Read keys and certificates (ConfigError listing the problems when they fail)."""
        problems: list[str] = []
        try:
            check_safe_bind(self.settings)
        except ConfigError as exc:
            problems.extend(exc.problems)
        for step in (
            self.keyring.load,
            self.tls.load,
            self._load_metrics_token,
            self._load_role_keys,
        ):
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
        self.metrics_token = _read_token(self.settings.metrics_token_file, "metrics_token_file")
        self.viewer_token = _read_token(self.settings.viewer_token_file, "viewer_token_file")

    def _load_role_keys(self) -> None:
        settings = self.settings
        problems: list[str] = []
        keys: dict[str, tuple[Role, Ed25519PublicKey]] = {}
        for role, texts, what in (
            ("admin", settings.admin_public_keys, "admin_public_keys"),
            ("coordinator", settings.coordinator_public_keys, "coordinator_public_keys"),
        ):
            try:
                parsed = parse_public_keys(texts, what)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            keys.update((kid, (role, key)) for kid, key in parsed.items())  # type: ignore[misc]
        if settings.coordinator_key_file:
            try:
                own = load_role_key(settings.coordinator_key_file, "coordinator_key_file")
            except ConfigError as exc:
                problems.extend(exc.problems)
            else:
                if keys.get(own.id, ("", None))[0] != "coordinator":
                    problems.append(
                        "coordinator_key_file: its public key is not in coordinator_public_keys "
                        f"(add {own.public})"
                    )
                self.coordinator_key = own
        if problems:
            raise ConfigError(problems)
        self.role_keys = keys

    def metrics_token_ok(self, request: web.Request) -> bool:
        """A scrape of /metrics carrying the configured bearer token."""
        if request.method not in ("GET", "HEAD") or request.path != "/metrics":
            return False
        return _bearer_matches(request, self.metrics_token)

    def viewer_token_ok(self, request: web.Request, kind: RouteClass) -> bool:
        """A read (GET of a read-class route) carrying the viewer token."""
        if request.method not in ("GET", "HEAD") or kind != "read":
            return False
        return _bearer_matches(request, self.viewer_token)

    @property
    def coordinator_keys_in_use(self) -> bool:
        """True when coordinators prove their role with a coordinator key."""
        return any(role == "coordinator" for role, _key in self.role_keys.values())

    def coordinator_signer(self, node_id: str) -> RoleSigner | None:
        """Signs this sidecar's control calls as a coordinator, when it holds the key and is
        one (`is_coordinator` is read per request: promote and demote apply at once)."""
        if self.coordinator_key is None:
            return None
        key = self.coordinator_key
        return RoleSigner(lambda: key, node_id, wall=lambda: self.clock.time())

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
            "role_keys": {
                role: sorted(kid for kid, (r, _key) in self.role_keys.items() if r == role)
                for role in ("admin", "coordinator")
            },
            "coordinator_key": self.coordinator_key.id if self.coordinator_key else None,
            "viewer_token": self.viewer_token is not None,
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


def _netlocs(host: str, port: int) -> set[str]:
    """How a Host header names host:port (without the port when it is the default)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    names = {f"{host}:{port}".lower()}
    if port in (80, 443):
        names.add(host.lower())
    return names


def receiver_names(request: web.Request, loopback: bool) -> frozenset[str]:
    """Every Host value that names this sidecar: its advertised URL, `auth_host_names`, the
    address the request arrived at, and (for callers on this host) the loopback names."""
    app = request.app
    auth = app[AUTH]
    names: set[str] = {n.lower() for n in auth.settings.auth_host_names}
    url = URL(app[IDENTITY].url)
    if url.host is not None and url.port is not None:
        names |= _netlocs(url.host, url.port)
    transport = request.transport
    sock = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sock, tuple | list) and len(sock) >= 2:
        names |= _netlocs(str(sock[0]), int(sock[1]))
        if loopback:
            for host in ("127.0.0.1", "localhost", "::1"):
                names |= _netlocs(host, int(sock[1]))
    return frozenset(names)


def _read_token(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{what} {path} cannot be read: {type(exc).__name__}"]) from None
    if len(token) < 16:
        raise ConfigError([f"{what} {path}: the token must be at least 16 characters"])
    return token.encode()


def _bearer_matches(request: web.Request, token: bytes | None) -> bool:
    if token is None:
        return False
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)


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


def certificate_node(request: web.Request) -> tuple[str, CallerRole] | None:
    """The verified client certificate's node id and role, or None."""
    transport = request.transport
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    if sslobj is None:
        return None
    peercert = sslobj.getpeercert()
    node = certificate_identity(peercert)
    if node is None:
        return None
    return node, certificate_role(peercert)


def _refused(
    request: web.Request, status: int, reason: str, message: str, **context: object
) -> web.Response:
    """Count, log and answer one refused request (never a secret in the log)."""
    app = request.app
    app[AUTH].refused += 1
    app[METRICS].requests_refused.labels(reason=reason).inc()
    fresh = True
    if request.path == HEARTBEAT_PATH:
        # Refused before the handler runs, so counted here (README: Metrics).
        outcome = "unauthorized" if status == 401 else "forbidden"
        app[METRICS].heartbeats_received.labels(outcome=outcome).inc()
        # A host with the wrong key retries every second: status shows it as a problem,
        # and the log says it once per sender and reason, not every beat.
        sender = str(context.get("node") or context.get("signed_as") or context.get("peer"))
        fresh = app[REFUSALS].record(sender, f"{outcome}:{reason}", message)
    if fresh:
        log.warning("request_refused", reason=reason, path=request.path, **context)
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
        request[CALLER] = Caller(via="metrics_token", role="viewer")
        return await handler(request)
    if auth.viewer_token_ok(request, kind):
        request[CALLER] = Caller(via="viewer_token", role="viewer")
        return await handler(request)
    peer = peer_address(request)
    loopback = is_loopback(peer)
    try:
        caller = await identify(request, auth, kind, peer, loopback)
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
    except _WrongNode as wrong:
        return _refused(request, 403, "wrong_node", str(wrong), peer=peer)
    needed = _role_refusal(kind, request, caller)
    if needed is not None:
        return _refused(
            request, 403, "role", needed, peer=peer, role=caller.role, node=caller.node_id
        )
    request[CALLER] = caller
    return await handler(request)


class _WrongNode(Exception):
    """A cluster-key signature from another node than the client certificate names."""


async def identify(
    request: web.Request, auth: AuthState, kind: RouteClass, peer: str | None, loopback: bool
) -> Caller:
    """Who is calling, by signature, certificate or the unsigned rules; AuthFailure (401)
    when that cannot be established."""
    presented = Presented.parse(request.headers)
    cert = certificate_node(request) if auth.tls.verifies_clients else None
    if presented is not None and auth.keyring.current is None and not auth.role_keys:
        # Nothing to check a signature against: judge the request by its certificate,
        # else as unsigned, and say why if that refuses it (a CLI with a key talking to
        # a keyless sidecar).
        if cert is None and _unsigned(auth, kind, loopback, request) is not None:
            raise AuthFailure(
                "no_keyring",
                "this request is signed but this sidecar has no cluster key "
                "(secret_file/keyring_file) to check it with",
            )
        presented = None
    if presented is not None:
        verified = auth.verifier.verify(
            presented,
            method=request.method,
            host=request.headers.get("Host", ""),
            path_qs=request.raw_path,
            headers=request.headers.items(),
            body=await request.read(),
            now=auth.clock.time(),
            receiver=receiver_names(request, loopback),
        )
        role: CallerRole = verified.role
        if cert is not None and verified.role == "node":
            if cert[0] != verified.node_id:
                raise _WrongNode(
                    f"signed as node {verified.node_id!r} but the client certificate is {cert[0]!r}"
                )
            role = cert[1]
        caller = Caller(
            via="signature",
            role=role,
            node_id=verified.node_id,
            key_id=verified.key_id,
            peer=peer,
        )
    elif cert is not None:
        caller = Caller(via="certificate", role=cert[1], node_id=cert[0], peer=peer)
    else:
        reason = _unsigned(auth, kind, loopback, request)
        if reason is not None:
            raise AuthFailure("unsigned", reason)
        if loopback:
            return Caller(via="loopback", role="local", peer=peer)
        return Caller(via="bearer", role="anonymous", peer=peer)
    if BEARER_HEADER in request.headers and auth.daemon_mode != "team":
        # Another sidecar let this in on a bearer token only a team-mode daemon can
        # judge; this node's daemon would not check it.
        raise AuthFailure(
            "bearer_unverified",
            "this request was admitted elsewhere on a bearer token, and this node's daemon "
            f"runs in {auth.daemon_mode} mode, which does not check tokens; sign the request "
            "with the cluster key (or use mTLS)",
        )
    return caller


def _role_refusal(kind: RouteClass, request: web.Request, caller: Caller) -> str | None:
    """Why this caller's role may not use this class of route, or None."""
    if kind == "public" or caller.role in CLASS_ROLES[kind]:
        return None
    if (
        kind == "admin"
        and caller.role == "coordinator"
        and request.method == "POST"
        and request.path in COORDINATOR_ADMIN_PATHS
    ):
        return None
    if kind == "admin":
        return (
            f"{request.method} {request.path} changes the cluster and needs the admin "
            f"credential; this request carries a {caller.role} credential (sign with the "
            "admin key: SIGNET_CLUSTER_ADMIN_KEY_FILE, see README Security)"
        )
    if kind == "peer":
        return f"only sidecars may call {request.path}; this is a {caller.role} credential"
    return f"a {caller.role} credential may not call {request.method} {request.path}"


def token_unverified(request: web.Request) -> bool:
    """True for a caller let in from another host only because it carries a daemon bearer
    token (team mode): nobody has checked that token until the owner's daemon answers, so
    the sidecar must not answer for it on its own (no fan-out without the owner's 200, no
    spooling)."""
    caller = request.get(CALLER)
    return caller is not None and caller.via == "bearer"


def reply_signature(request: web.Request, status: int, body_digest: str) -> dict[str, str]:
    """Signature headers for this sidecar's answer to a signed request (a heartbeat reply)."""
    nonce = request.headers.get(NONCE_HEADER)
    if nonce is None:
        return {}
    app = request.app
    auth = app[AUTH]
    return sign_reply(
        request_nonce=nonce,
        node_id=app[IDENTITY].node_id,
        status=status,
        body_digest=body_digest,
        role_key=auth.coordinator_key if app[IDENTITY].coordinator else None,
        keyring=auth.keyring.current,
    )


def check_reply(auth: AuthState, response: PeerResponse) -> str | None:
    """Why a heartbeat reply cannot be trusted, or None. With coordinator keys configured
    it must be signed with one; with a cluster key, at least with that (the key holder that
    answered is then trusted: configure coordinator keys to tell coordinators apart); with
    neither, the sidecar is unsecured and takes what it gets (mTLS checked the server's
    certificate already)."""
    if response.nonce is None or (auth.keyring.current is None and not auth.role_keys):
        return None
    try:
        verify_reply(
            response.headers,
            request_nonce=response.nonce,
            status=response.status,
            body=response.raw,
            keyring=auth.keyring.current,
            role_keys=auth.role_keys,
            need_coordinator_key=auth.coordinator_keys_in_use,
        )
    except AuthFailure as failure:
        return failure.message
    return None


def proves_coordinator(request: web.Request) -> bool:
    """The caller holds a coordinator credential (or the sidecar is unsecured and the
    caller is local, where nobody can prove anything)."""
    caller = request.get(CALLER)
    if caller is None:
        return False
    if caller.role == "coordinator":
        return True
    return caller.role == "local" and not request.app[AUTH].secured


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
