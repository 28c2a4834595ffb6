"""Signed requests between sidecars and from the CLI: HMAC-SHA256 with the cluster keyring.

Pure and synchronous (no I/O, time passed in), so it is property-tested directly.

A signed request carries five headers:

| header | value |
|---|---|
| `x-signet-cluster-node` | the sending node's id (`cli` for the CLI) |
| `x-signet-cluster-key` | id of the keyring key that signed |
| `x-signet-cluster-ts` | send time, Unix milliseconds |
| `x-signet-cluster-nonce` | 16-64 random characters `[A-Za-z0-9_-]`, never reused |
| `x-signet-cluster-signature` | unpadded base64url HMAC-SHA256 of the canonical string, or (role keys, signet_cluster.security.roles) its Ed25519 signature |

The key id says which: a cluster key (`Keyring`) makes the caller a *node*; an admin or
coordinator public key makes it that role (`Verified.role`).

The canonical string is defined by `canonical` (its docstring is the one description of the
format). The verifier accepts a timestamp within `skew` seconds of its own clock, each nonce
once (a nonce is remembered for the whole window, so a replay is refused until the timestamp
is stale anyway), and only a `Host` that names the receiver itself.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import re
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Literal

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from signet_cluster.security.keyring import KEY_ID, Keyring
from signet_cluster.security.roles import RoleKey, verify_role

VERSION = "signet-cluster-v2"
NODE_HEADER = "x-signet-cluster-node"
KEY_HEADER = "x-signet-cluster-key"
TS_HEADER = "x-signet-cluster-ts"
NONCE_HEADER = "x-signet-cluster-nonce"
SIGNATURE_HEADER = "x-signet-cluster-signature"
AUTH_HEADERS = (NODE_HEADER, KEY_HEADER, TS_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
_AUTH_HEADER_SET = frozenset(AUTH_HEADERS)
_ALWAYS_SIGNED = frozenset({"authorization", "content-type", "content-encoding"})
CLI_NODE_ID = "cli"

_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_TS = re.compile(r"^[0-9]{1,15}$")
# 43 characters: HMAC-SHA256; 86: Ed25519 (role keys).
_SIGNATURE = re.compile(r"^(?:[A-Za-z0-9_-]{43}|[A-Za-z0-9_-]{86})$")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


class AuthFailure(Exception):
    """A request that does not authenticate. `reason` is a stable code; `message` is safe to
    send back (it never contains a secret or a signature)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


Role = Literal["node", "admin", "coordinator"]
# Role public keys by key id: (role, key).
RoleKeys = Mapping[str, tuple[Role, Ed25519PublicKey]]


@attrs.frozen
class Verified:
    node_id: str
    key_id: str
    ts_ms: int
    nonce: str
    role: Role = "node"


def body_sha256(body: bytes) -> str:
    return EMPTY_BODY_SHA256 if not body else hashlib.sha256(body).hexdigest()


def signed_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The headers a signature covers: every header a receiver acts on, that is
    `Authorization`, `Content-Type`, `Content-Encoding` and every `x-signet-*` header except
    the five signature headers. Names lower-cased, several values of one name joined with
    `,` in the order sent, sorted by name."""
    found: dict[str, list[str]] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in _ALWAYS_SIGNED or (
            lower.startswith("x-signet-") and lower not in _AUTH_HEADER_SET
        ):
            found.setdefault(lower, []).append(value.strip())
    return [(name, ",".join(found[name])) for name in sorted(found)]


def canonical(
    *,
    method: str,
    host: str,
    path_qs: str,
    ts_ms: int,
    nonce: str,
    node_id: str,
    key_id: str,
    headers: Iterable[tuple[str, str]],
    body_digest: str,
) -> bytes:
    """The bytes a signature covers, as UTF-8: these lines joined by `\\n`

        signet-cluster-v2
        METHOD            (upper case)
        host              (the Host header, lower case: the receiver must be named)
        path?query        (exactly as sent, still percent-encoded)
        ts_ms             (decimal)
        nonce
        node_id
        key_id
        name:value        (one line per header of `signed_headers(headers)`, may be none)
        body-sha256       (lower-case hex of the body's SHA-256; of b"" when empty)

    For example a GET of `/api/cluster/status` to `10.0.0.2:3860` with only
    `Content-Type: application/json` is
    `signet-cluster-v2\\nGET\\n10.0.0.2:3860\\n/api/cluster/status\\n<ts>\\n<nonce>\\n<node>`
    `\\n<key>\\ncontent-type:application/json\\ne3b0c442...b855`."""
    parts = [VERSION, method.upper(), host.lower(), path_qs, str(ts_ms), nonce, node_id, key_id]
    parts += [f"{name}:{value}" for name, value in signed_headers(headers)]
    parts.append(body_digest)
    return "\n".join(parts).encode()


def mac(secret: bytes, message: bytes) -> str:
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def signature_headers(
    *,
    method: str,
    host: str,
    path_qs: str,
    body: bytes,
    sent: Mapping[str, str] | None,
    node_id: str,
    key_id: str,
    sign: Callable[[bytes], str],
    ts_ms: int,
    nonce: str,
) -> dict[str, str]:
    """The signature headers of one request, signed by `sign` (HMAC with a cluster key, or
    a role's Ed25519 key: both sign the same canonical bytes)."""
    message = canonical(
        method=method,
        host=host,
        path_qs=path_qs,
        ts_ms=ts_ms,
        nonce=nonce,
        node_id=node_id,
        key_id=key_id,
        headers=(sent or {}).items(),
        body_digest=body_sha256(body),
    )
    return {
        NODE_HEADER: node_id,
        KEY_HEADER: key_id,
        TS_HEADER: str(ts_ms),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: sign(message),
    }


class Signer:
    """Builds the signature headers for one outgoing request with the primary key.

    `keyring` is a callable so a reloaded keyring is used from the next request on."""

    def __init__(
        self,
        keyring: Callable[[], Keyring | None],
        node_id: str,
        *,
        wall: Callable[[], float],
        nonce: Callable[[], str] = new_nonce,
    ) -> None:
        self.keyring = keyring
        self.node_id = node_id
        self.wall = wall
        self.nonce = nonce

    def headers(
        self,
        method: str,
        host: str,
        path_qs: str,
        body: bytes,
        sent: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Signature headers for a request that also carries the headers `sent` (the ones
        `signed_headers` picks are covered), or {} when no keyring is configured."""
        keyring = self.keyring()
        if keyring is None:
            return {}
        key = keyring.primary_key
        return signature_headers(
            method=method,
            host=host,
            path_qs=path_qs,
            body=body,
            sent=sent,
            node_id=self.node_id,
            key_id=key.id,
            sign=lambda message: mac(key.secret, message),
            ts_ms=int(self.wall() * 1000),
            nonce=self.nonce(),
        )


class RoleSigner:
    """Signs like Signer, with a role's Ed25519 private key (signet_cluster.security.roles):
    the CLI as admin, a coordinator as coordinator. `key` is a callable so a reloaded key
    file is used from the next request on."""

    def __init__(
        self,
        key: Callable[[], RoleKey | None],
        node_id: str,
        *,
        wall: Callable[[], float],
        nonce: Callable[[], str] = new_nonce,
    ) -> None:
        self.key = key
        self.node_id = node_id
        self.wall = wall
        self.nonce = nonce

    def headers(
        self,
        method: str,
        host: str,
        path_qs: str,
        body: bytes,
        sent: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        key = self.key()
        if key is None:
            return {}
        return signature_headers(
            method=method,
            host=host,
            path_qs=path_qs,
            body=body,
            sent=sent,
            node_id=self.node_id,
            key_id=key.id,
            sign=key.sign,
            ts_ms=int(self.wall() * 1000),
            nonce=self.nonce(),
        )


class ReplayCache:
    """Nonces seen within the skew window, bounded in memory.

    Entries leave when their timestamp falls out of the window. When the cache is full of
    entries that are still inside the window, the oldest is dropped and its timestamp becomes
    a floor: any request at or before the floor is refused as stale. So memory stays bounded
    and a replay is never accepted; under a flood the effective window just shrinks.

    A new cache knows nothing of what an earlier process accepted: start it with `floor_ms`
    at the start time, so a request signed before a restart cannot be accepted again."""

    def __init__(self, max_entries: int, window_ms: int, *, floor_ms: int = -1) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.window_ms = window_ms
        self._seen: set[str] = set()
        self._heap: list[tuple[int, str]] = []
        self.floor_ms = floor_ms
        # The floor is the start time until the cache first overflows.
        self.started_ms = floor_ms

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now_ms: int) -> None:
        horizon = now_ms - self.window_ms
        while self._heap and self._heap[0][0] < horizon:
            _ts, nonce = heapq.heappop(self._heap)
            self._seen.discard(nonce)

    def check(self, nonce: str, ts_ms: int, now_ms: int) -> None:
        """Raise AuthFailure if this nonce was seen or is past the floor (nothing is added)."""
        self._expire(now_ms)
        if nonce in self._seen:
            raise AuthFailure("replayed", "this request was already received (nonce reused)")
        if ts_ms <= self.floor_ms:
            if self.floor_ms == self.started_ms:
                raise AuthFailure(
                    "signed_before_start",
                    "this request was signed before this sidecar started, so it cannot tell "
                    "whether it was already accepted (a replay after a restart); resend it "
                    "with a fresh signature",
                )
            raise AuthFailure(
                "stale",
                "request timestamp is older than this sidecar can still check for replays "
                "(its replay cache is full of newer requests); resend with a fresh signature",
            )

    def add(self, nonce: str, ts_ms: int, now_ms: int) -> None:
        self.check(nonce, ts_ms, now_ms)
        while len(self._seen) >= self.max_entries:
            oldest_ts, oldest = heapq.heappop(self._heap)
            self._seen.discard(oldest)
            self.floor_ms = max(self.floor_ms, oldest_ts)
        self._seen.add(nonce)
        heapq.heappush(self._heap, (ts_ms, nonce))


@attrs.frozen
class Presented:
    """The signature headers of a request, syntax-checked."""

    node_id: str
    key_id: str
    ts_ms: int
    nonce: str
    signature: str

    @classmethod
    def parse(cls, headers: Mapping[str, str]) -> Presented | None:
        """None when the request carries none of the headers; AuthFailure when it carries
        some or malformed ones (a half-signed request is never treated as unsigned)."""
        values = {name: headers.get(name) for name in AUTH_HEADERS}
        if all(v is None for v in values.values()):
            return None
        missing = [name for name, v in values.items() if not v]
        if missing:
            raise AuthFailure("malformed", f"signature headers missing: {', '.join(missing)}")
        node, key, ts, nonce, signature = (str(values[n]) for n in AUTH_HEADERS)
        problems = []
        if not _NODE.match(node):
            problems.append(f"{NODE_HEADER} is not a node id")
        if not KEY_ID.match(key):
            problems.append(f"{KEY_HEADER} is not a key id")
        if not _TS.match(ts):
            problems.append(f"{TS_HEADER} must be Unix time in milliseconds")
        if not _NONCE.match(nonce):
            problems.append(f"{NONCE_HEADER} must be 16-64 characters of [A-Za-z0-9_-]")
        if not _SIGNATURE.match(signature):
            problems.append(
                f"{SIGNATURE_HEADER} must be 43 (HMAC) or 86 (Ed25519) characters of base64url"
            )
        if problems:
            raise AuthFailure("malformed", "; ".join(problems))
        return cls(node_id=node, key_id=key, ts_ms=int(ts), nonce=nonce, signature=signature)


class Verifier:
    """Checks signed requests against the keyring, the skew window and the replay cache."""

    def __init__(
        self,
        keyring: Callable[[], Keyring | None],
        *,
        skew_s: float,
        cache: ReplayCache,
        role_keys: Callable[[], RoleKeys] | None = None,
    ) -> None:
        self.keyring = keyring
        self.skew_ms = int(skew_s * 1000)
        self.cache = cache
        self.role_keys = role_keys or dict

    def verify(
        self,
        presented: Presented,
        *,
        method: str,
        host: str,
        path_qs: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        now: float,
        receiver: Collection[str] | None = None,
    ) -> Verified:
        """Check one request; `receiver` is every `Host` value that names this sidecar
        (None skips the check: unit tests of the signature alone)."""
        if receiver is not None and host.lower() not in receiver:
            raise AuthFailure(
                "wrong_host",
                f"this request was signed for {host!r}, which is not this sidecar "
                "(a signature only holds for the sidecar it names)",
            )
        role_key = self.role_keys().get(presented.key_id)
        keyring = self.keyring()
        secret = keyring.secret(presented.key_id) if keyring is not None else None
        if role_key is None and keyring is None:
            raise AuthFailure(
                "no_keyring",
                "this sidecar has no cluster key (secret_file/keyring_file), so it cannot "
                "check signed requests",
            )
        if role_key is None and secret is None:
            raise AuthFailure(
                "unknown_key",
                f"key {presented.key_id!r} is not installed on this sidecar "
                "(install it with `signet-cluster keyring install`, or list a role's public "
                "key in admin_public_keys / coordinator_public_keys)",
            )
        now_ms = int(now * 1000)
        off_ms = presented.ts_ms - now_ms
        if abs(off_ms) > self.skew_ms:
            raise AuthFailure(
                "stale",
                f"request timestamp is {off_ms / 1000:+.1f}s from this sidecar's clock "
                f"(allowed ±{self.skew_ms / 1000:g}s); check the clocks (NTP) or resend",
            )
        message = canonical(
            method=method,
            host=host,
            path_qs=path_qs,
            ts_ms=presented.ts_ms,
            nonce=presented.nonce,
            node_id=presented.node_id,
            key_id=presented.key_id,
            headers=headers,
            body_digest=body_sha256(body),
        )
        role: Role = "node"
        if role_key is not None:
            role, public = role_key
            good = verify_role(public, presented.signature, message)
        else:
            assert secret is not None
            good = hmac.compare_digest(mac(secret, message), presented.signature)
        if not good:
            raise AuthFailure(
                "bad_signature",
                "signature does not match (wrong key, or the request was changed on the way)",
            )
        # Only a correctly signed request reaches the cache: strangers cannot fill it.
        self.cache.add(presented.nonce, presented.ts_ms, now_ms)
        return Verified(
            node_id=presented.node_id,
            key_id=presented.key_id,
            ts_ms=presented.ts_ms,
            nonce=presented.nonce,
            role=role,
        )


# -- replies ------------------------------------------------------------------------------
# A heartbeat reply carries routes; a member takes them only from a reply it can check.
REPLY_VERSION = "signet-cluster-reply-v1"
REPLY_NODE_HEADER = "x-signet-cluster-reply-node"
REPLY_KEY_HEADER = "x-signet-cluster-reply-key"
REPLY_SIGNATURE_HEADER = "x-signet-cluster-reply-signature"


def reply_canonical(
    *, request_nonce: str, node_id: str, key_id: str, status: int, body_digest: str
) -> bytes:
    """What a reply signature covers, lines joined by `\\n`: `signet-cluster-reply-v1`,
    the nonce of the request answered (so a reply cannot be replayed to another request),
    the answering node's id, the key id, the status, and the hex SHA-256 of the body as JSON
    (before any Content-Encoding)."""
    parts = (REPLY_VERSION, request_nonce, node_id, key_id, str(status), body_digest)
    return "\n".join(parts).encode()


def sign_reply(
    *,
    request_nonce: str,
    node_id: str,
    status: int,
    body_digest: str,
    role_key: RoleKey | None,
    keyring: Keyring | None,
) -> dict[str, str]:
    """Reply signature headers: with the coordinator key when there is one, else with the
    primary cluster key, else none."""
    if role_key is None and keyring is None:
        return {}
    key_id = role_key.id if role_key is not None else keyring.primary if keyring else ""
    message = reply_canonical(
        request_nonce=request_nonce,
        node_id=node_id,
        key_id=key_id,
        status=status,
        body_digest=body_digest,
    )
    if role_key is not None:
        signature = role_key.sign(message)
    else:
        assert keyring is not None
        signature = mac(keyring.primary_key.secret, message)
    return {REPLY_NODE_HEADER: node_id, REPLY_KEY_HEADER: key_id, REPLY_SIGNATURE_HEADER: signature}


def verify_reply(
    headers: Mapping[str, str],
    *,
    request_nonce: str,
    status: int,
    body: bytes,
    keyring: Keyring | None,
    role_keys: RoleKeys,
    need_coordinator_key: bool,
) -> str:
    """The node id that signed this reply; AuthFailure when it is unsigned, does not verify,
    or (`need_coordinator_key`) was not signed with a coordinator key."""
    node, key_id, signature = (
        headers.get(REPLY_NODE_HEADER),
        headers.get(REPLY_KEY_HEADER),
        headers.get(REPLY_SIGNATURE_HEADER),
    )
    if not node or not key_id or not signature:
        raise AuthFailure("unsigned_reply", "the reply is not signed by a coordinator")
    message = reply_canonical(
        request_nonce=request_nonce,
        node_id=node,
        key_id=key_id,
        status=status,
        body_digest=body_sha256(body),
    )
    role_key = role_keys.get(key_id)
    if role_key is not None and role_key[0] == "coordinator":
        if verify_role(role_key[1], signature, message):
            return node
    elif not need_coordinator_key and keyring is not None:
        secret = keyring.secret(key_id)
        if secret is not None and hmac.compare_digest(mac(secret, message), signature):
            return node
    else:
        raise AuthFailure(
            "unsigned_reply",
            f"the reply is signed with key {key_id!r}, which is not a coordinator key here",
        )
    raise AuthFailure("bad_reply_signature", "the reply's signature does not verify")
