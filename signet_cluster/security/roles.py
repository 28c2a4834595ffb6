"""Role keys: Ed25519 key pairs for the two roles a node credential must not hold.

The cluster key (signet_cluster.security.keyring) is shared by every node, so whoever holds it
can act as any node; it must not also be able to change the cluster. Two roles therefore sign
with their own private key, and every sidecar holds only the public halves:

- **admin** (the operator, through the CLI): join, remove, adopt, promote, change a member's
  coordinators. Sidecars list the public keys in `admin_public_keys`; the private key lives
  only where the operator runs the CLI (`SIGNET_CLUSTER_ADMIN_KEY_FILE`).
- **coordinator**: a sidecar holding `coordinator_key_file` signs its heartbeat replies,
  heartbeats and admin replication with it; the others verify with
  `coordinator_public_keys`, so only such a sidecar is listed as a coordinator.

A private key file holds one line `ed25519-private:<base64url of the 32-byte seed>`; a public
key is written `ed25519:<base64url of the 32 bytes>`. A key id is derived from the public key,
so every node agrees on it. Signatures are unpadded base64url (86 characters).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from pathlib import Path

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from signet_cluster.errors import ConfigError

ROLES = ("admin", "coordinator")
PRIVATE_PREFIX = "ed25519-private:"
PUBLIC_PREFIX = "ed25519:"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_text(key: Ed25519PublicKey) -> str:
    return PUBLIC_PREFIX + _b64(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def role_key_id(key: Ed25519PublicKey) -> str:
    """`e` and 12 hex digits of the public key's hash: stable, and distinct from the
    cluster keys' `k...` ids."""
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "e" + hashlib.sha256(b"signet-cluster role key\0" + raw).hexdigest()[:12]


@attrs.frozen
class RoleKey:
    """A private role key (never in a repr or a log)."""

    id: str
    private: Ed25519PrivateKey = attrs.field(repr=False)

    def sign(self, message: bytes) -> str:
        return _b64(self.private.sign(message))

    @property
    def public(self) -> str:
        return public_text(self.private.public_key())


def generate_role_key() -> tuple[str, str]:
    """(private key file text, public key text) of a new key pair."""
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    return PRIVATE_PREFIX + _b64(seed) + "\n", public_text(private.public_key())


def load_role_key(path: str | Path, what: str) -> RoleKey:
    """Read a private key file; ConfigError naming the setting when it is unusable."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{what} {path} cannot be read: {type(exc).__name__}"]) from None
    return parse_role_key(text, f"{what} {path}")


def parse_role_key(text: str, what: str) -> RoleKey:
    """A private key from its text (never quoted in the error)."""
    seed = _decode(text.strip(), PRIVATE_PREFIX)
    if seed is None:
        raise ConfigError(
            [f"{what}: not a role key (make one with `signet-cluster keygen --role ...`)"]
        )
    private = Ed25519PrivateKey.from_private_bytes(seed)
    return RoleKey(id=role_key_id(private.public_key()), private=private)


def _decode(text: str, prefix: str) -> bytes | None:
    if not text.startswith(prefix):
        return None
    try:
        raw = _unb64(text[len(prefix) :])
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def parse_public_keys(texts: Iterable[str], what: str) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id; ConfigError listing every unreadable one."""
    keys: dict[str, Ed25519PublicKey] = {}
    problems = []
    for index, text in enumerate(texts):
        raw = _decode(text.strip(), PUBLIC_PREFIX)
        if raw is None:
            problems.append(f"{what}[{index}]: not an `ed25519:...` public key")
            continue
        key = Ed25519PublicKey.from_public_bytes(raw)
        keys[role_key_id(key)] = key
    if problems:
        raise ConfigError(problems)
    return keys


def verify_role(key: Ed25519PublicKey, signature: str, message: bytes) -> bool:
    try:
        key.verify(_unb64(signature), message)
    except (InvalidSignature, ValueError):
        return False
    return True
