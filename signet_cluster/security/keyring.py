"""The cluster keyring: shared secrets with key ids, one of them primary.

The primary key signs; every installed key verifies, so a secret is rotated without downtime
(as Consul's `keyring -install/-use/-remove`): install the new key on every node, `use` it on
every node, then remove the old one. A keyring comes from one of two files:

- `secret_file`: one secret (e.g. `signet-cluster keygen --out FILE`); its key id is derived
  from the secret, so every node holding the same file agrees on it;
- `keyring_file`: JSON `{"primary": ID, "keys": [{"id": ID, "secret": TEXT, "created_at": ...}]}`.

Secrets are compared and hashed as the UTF-8 bytes of their text. They never appear in a repr,
a log line or an error message: only key ids do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from signet_cluster.errors import ConfigError

MIN_SECRET_BYTES = 32
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def generate_secret() -> str:
    """32 random bytes as unpadded base64url (43 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def derive_key_id(secret: bytes) -> str:
    """A stable, non-reversible id for a secret (so nodes sharing a secret file agree)."""
    return "k" + hashlib.sha256(b"signet-cluster key id\0" + secret).hexdigest()[:12]


def secret_problem(secret: bytes) -> str | None:
    if len(secret) < MIN_SECRET_BYTES:
        return (
            f"the secret is too short ({len(secret)} bytes, at least {MIN_SECRET_BYTES}); "
            "make one with `signet-cluster keygen`"
        )
    return None


@attrs.frozen
class Key:
    id: str
    secret: bytes = attrs.field(repr=False)
    created_at: str | None = None


@attrs.frozen
class Keyring:
    """Installed keys (by id) and the primary one that signs."""

    keys: tuple[Key, ...]
    primary: str
    source: str = ""

    def __attrs_post_init__(self) -> None:
        if not any(k.id == self.primary for k in self.keys):
            raise ValueError(f"primary key {self.primary!r} is not installed")

    def secret(self, key_id: str) -> bytes | None:
        for key in self.keys:
            if key.id == key_id:
                return key.secret
        return None

    @property
    def primary_key(self) -> Key:
        return next(k for k in self.keys if k.id == self.primary)

    def ids(self) -> list[str]:
        return [k.id for k in self.keys]

    def describe(self) -> dict[str, Any]:
        """Key ids only: safe for status output, logs and `check-config`."""
        return {"primary": self.primary, "keys": self.ids(), "source": self.source}

    # -- changes (each returns a new keyring) -------------------------------------------
    def install(self, key: Key) -> Keyring:
        if self.secret(key.id) is not None:
            raise ValueError(f"key {key.id!r} is already installed")
        if any(k.secret == key.secret for k in self.keys):
            raise ValueError("this secret is already installed under another key id")
        return attrs.evolve(self, keys=(*self.keys, key))

    def use(self, key_id: str) -> Keyring:
        if self.secret(key_id) is None:
            raise ValueError(f"key {key_id!r} is not installed; install it first")
        return attrs.evolve(self, primary=key_id)

    def remove(self, key_id: str) -> Keyring:
        if self.secret(key_id) is None:
            raise ValueError(f"key {key_id!r} is not installed")
        if key_id == self.primary:
            raise ValueError(
                f"key {key_id!r} is the primary key; `use` another key before removing it"
            )
        return attrs.evolve(self, keys=tuple(k for k in self.keys if k.id != key_id))


def new_key(secret: str, key_id: str | None = None) -> Key:
    raw = secret.strip().encode()
    problem = secret_problem(raw)
    if problem:
        raise ValueError(problem)
    kid = key_id or derive_key_id(raw)
    if not KEY_ID.match(kid):
        raise ValueError(
            f"key id {kid!r}: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return Key(id=kid, secret=raw, created_at=datetime.now(UTC).isoformat(timespec="seconds"))


def _read_private(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{what} {path} does not exist"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{what} {path} cannot be read: {type(exc).__name__}"]) from None


def loose_permissions(path: Path) -> bool:
    """True when group or others may read the file (ssh refuses such keys; we warn)."""
    try:
        return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def load_secret_file(path: Path) -> Keyring:
    raw = _read_private(path, "secret_file").strip().encode()
    problem = secret_problem(raw)
    if problem:
        raise ConfigError([f"secret_file {path}: {problem}"])
    return Keyring(
        keys=(Key(id=derive_key_id(raw), secret=raw),), primary=derive_key_id(raw), source=str(path)
    )


def parse_keyring(data: Any, source: str) -> Keyring:
    """Validate a keyring document, listing every problem (never quoting a secret)."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"keyring_file {source}: must be a JSON object"])
    problems: list[str] = []
    keys: list[Key] = []
    entries = data.get("keys")
    if not isinstance(entries, list) or not entries:
        problems.append(f"keyring_file {source}: `keys` must be a non-empty list")
        entries = []
    for index, entry in enumerate(entries):
        where = f"keyring_file {source}: keys[{index}]"
        if not isinstance(entry, Mapping):
            problems.append(f"{where} must be an object")
            continue
        kid, secret = entry.get("id"), entry.get("secret")
        if not isinstance(kid, str) or not KEY_ID.match(kid):
            problems.append(f"{where}.id must be 1-64 letters, digits, '.', '_' or '-'")
            continue
        if not isinstance(secret, str):
            problems.append(f"{where} ({kid}): `secret` must be a string")
            continue
        problem = secret_problem(secret.strip().encode())
        if problem:
            problems.append(f"{where} ({kid}): {problem}")
            continue
        if any(k.id == kid for k in keys):
            problems.append(f"{where}: key id {kid!r} is listed twice")
            continue
        created = entry.get("created_at")
        keys.append(
            Key(
                id=kid,
                secret=secret.strip().encode(),
                created_at=created if isinstance(created, str) else None,
            )
        )
    primary = data.get("primary")
    if not isinstance(primary, str):
        problems.append(f"keyring_file {source}: `primary` must name one of the keys")
    elif keys and not any(k.id == primary for k in keys):
        problems.append(f"keyring_file {source}: primary key {primary!r} is not in `keys`")
    if problems:
        raise ConfigError(problems)
    assert isinstance(primary, str)
    return Keyring(keys=tuple(keys), primary=primary, source=source)


def load_keyring_file(path: Path) -> Keyring:
    text = _read_private(path, "keyring_file")
    try:
        data = json.loads(text)
    except ValueError as exc:
        # The position is safe to show; the text around it could be a secret.
        raise ConfigError(
            [f"keyring_file {path}: not valid JSON (line {getattr(exc, 'lineno', '?')})"]
        ) from None
    return parse_keyring(data, str(path))


def dump_keyring(keyring: Keyring) -> dict[str, Any]:
    return {
        "primary": keyring.primary,
        "keys": [
            {"id": k.id, "secret": k.secret.decode(), "created_at": k.created_at}
            for k in keyring.keys
        ],
    }


def write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 (a reader never sees a half-written keyring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_keyring(path: Path, keyring: Keyring) -> None:
    write_private(path, json.dumps(dump_keyring(keyring), indent=2) + "\n")


def load_configured(secret_file: str | None, keyring_file: str | None) -> Keyring | None:
    """The keyring the settings name, or None when neither file is set."""
    if keyring_file:
        return load_keyring_file(Path(keyring_file).expanduser())
    if secret_file:
        return load_secret_file(Path(secret_file).expanduser())
    return None


@attrs.define
class KeyringFile:
    """The configured keyring, re-read when its file changes (checked by the caller's timer
    and on SIGHUP), so keys are installed, switched and removed without a restart."""

    secret_file: str | None
    keyring_file: str | None
    current: Keyring | None = None
    _stamp: tuple[int, int, int] | None = None

    @property
    def path(self) -> Path | None:
        name = self.keyring_file or self.secret_file
        return Path(name).expanduser() if name else None

    def _file_stamp(self) -> tuple[int, int, int] | None:
        path = self.path
        if path is None:
            return None
        try:
            info = path.stat()
        except OSError:
            return None
        # The inode changes on an atomic replace even within one mtime tick.
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def load(self) -> Keyring | None:
        self._stamp = self._file_stamp()
        self.current = load_configured(self.secret_file, self.keyring_file)
        return self.current

    def reload_if_changed(self, force: bool = False) -> bool:
        """Re-read the file if it changed; True when the keyring changed. A broken file keeps
        the previous keyring (the caller reports the ConfigError)."""
        if self.path is None:
            return False
        stamp = self._file_stamp()
        if not force and stamp == self._stamp:
            return False
        previous = self.current
        self._stamp = stamp
        self.current = load_configured(self.secret_file, self.keyring_file)
        return self.current != previous
