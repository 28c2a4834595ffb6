"""What the CLI proves itself with, strongest first:

1. the **admin key** (an operator's Ed25519 private key, signet_cluster.security.roles): the
   only credential that may join, remove, adopt, promote or change coordinators. From
   `--admin-key-file`, `SIGNET_CLUSTER_ADMIN_KEY` (the key text itself, for CI) or
   `SIGNET_CLUSTER_ADMIN_KEY_FILE`. The CLI then signs every request as `admin`.
2. the **cluster key** (a node credential: it reads, it cannot change the cluster). From
   `--secret-file`, `SIGNET_CLUSTER_SECRET` (the secret itself), `SIGNET_CLUSTER_KEYRING_FILE`,
   `SIGNET_CLUSTER_SECRET_FILE`, else `keyring_file` / `secret_file` in the TOML file named by
   `SIGNET_CLUSTER_CONFIG`. The CLI signs as node `cli`.
3. a **viewer token** (`--viewer-token-file` or `SIGNET_CLUSTER_VIEWER_TOKEN_FILE`): sent as
   a bearer token on reads only.
TLS: `SIGNET_CLUSTER_TLS_CA_FILE`, `..._TLS_CERT_FILE`, `..._TLS_KEY_FILE`, else the same
TOML keys (an admin certificate carries the OU `signet-cluster-admin`).
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from signet_cluster.errors import ConfigError
from signet_cluster.security.keyring import (
    Key,
    Keyring,
    derive_key_id,
    load_configured,
    secret_problem,
)
from signet_cluster.security.roles import RoleKey, load_role_key, parse_role_key
from signet_cluster.security.signing import CLI_NODE_ID, RoleSigner, Signer
from signet_cluster.security.tls import TlsManager
from signet_cluster.settings import ENV_PREFIX, read_toml

from .client import CliError


@attrs.frozen
class Credentials:
    signer: Signer | RoleSigner | None = None
    ssl_context: ssl.SSLContext | None = None
    keyring: Keyring | None = attrs.field(default=None, repr=False)
    # Sent as `Authorization: Bearer` on reads when nothing signs (viewer_token_file).
    viewer_token: str | None = attrs.field(default=None, repr=False)
    # "admin", "node", "viewer" or "none": what `status` and errors can say the CLI holds.
    role: str = "none"


ADMIN_NODE_ID = "admin"


def load_admin_key(env: Mapping[str, str], admin_key_file: str | None) -> RoleKey | None:
    raw = env.get(ENV_PREFIX + "ADMIN_KEY")
    path = admin_key_file or env.get(ENV_PREFIX + "ADMIN_KEY_FILE")
    try:
        if path:
            return load_role_key(path, "admin key file")
        if raw:
            return parse_role_key(raw, "SIGNET_CLUSTER_ADMIN_KEY")
    except ConfigError as exc:
        raise CliError("cannot read the admin key: " + "; ".join(exc.problems)) from None
    return None


def load_viewer_token(env: Mapping[str, str], viewer_token_file: str | None) -> str | None:
    path = viewer_token_file or env.get(ENV_PREFIX + "VIEWER_TOKEN_FILE")
    if not path:
        return None
    try:
        return Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the viewer token {path}: {type(exc).__name__}") from None


def _config_values(env: Mapping[str, str]) -> dict[str, Any]:
    path = env.get(ENV_PREFIX + "CONFIG")
    if not path:
        return {}
    problems: list[str] = []
    # Unknown keys are check-config's business; only the credential keys matter here.
    values = read_toml(Path(path).expanduser(), problems)
    return {k: v for k, v in values.items() if isinstance(v, str)}


def load_keyring(env: Mapping[str, str], secret_file: str | None = None) -> Keyring | None:
    if secret_file:
        try:
            return load_configured(secret_file, None)
        except ConfigError as exc:
            raise CliError("cannot read the cluster key: " + "; ".join(exc.problems)) from None
    raw = env.get(ENV_PREFIX + "SECRET")
    if raw:
        secret = raw.strip().encode()
        problem = secret_problem(secret)
        if problem:
            raise CliError(f"SIGNET_CLUSTER_SECRET: {problem}")
        kid = derive_key_id(secret)
        return Keyring(keys=(Key(id=kid, secret=secret),), primary=kid, source="environment")
    config = _config_values(env)
    keyring_file = env.get(ENV_PREFIX + "KEYRING_FILE") or None
    secret_file = env.get(ENV_PREFIX + "SECRET_FILE") or None
    if not keyring_file and not secret_file:
        keyring_file = config.get("keyring_file")
        secret_file = config.get("secret_file")
    try:
        return load_configured(secret_file, keyring_file)
    except ConfigError as exc:
        raise CliError("cannot read the cluster key: " + "; ".join(exc.problems)) from None


def load_credentials(
    env: Mapping[str, str] | None = None,
    *,
    secret_file: str | None = None,
    admin_key_file: str | None = None,
    viewer_token_file: str | None = None,
) -> Credentials:
    """The CLI's credentials: explicit files (global options) first, then the environment."""
    env = os.environ if env is None else env
    keyring = load_keyring(env, secret_file)
    admin = load_admin_key(env, admin_key_file)
    viewer = load_viewer_token(env, viewer_token_file)
    config = _config_values(env)

    def pick(name: str) -> str | None:
        return env.get(ENV_PREFIX + name.upper()) or config.get(name)

    tls = TlsManager(pick("tls_cert_file"), pick("tls_key_file"), pick("tls_ca_file"))
    context = None
    if tls.enabled:
        try:
            tls.load()
        except ConfigError as exc:
            raise CliError("; ".join(exc.problems)) from None
        context = tls.client_context
    signer: Signer | RoleSigner | None = None
    role = "viewer" if viewer else "none"
    if admin is not None:
        signer, role = RoleSigner(lambda: admin, ADMIN_NODE_ID, wall=time.time), "admin"
    elif keyring is not None:
        signer, role = Signer(lambda: keyring, CLI_NODE_ID, wall=time.time), "node"
    return Credentials(
        signer=signer, ssl_context=context, keyring=keyring, viewer_token=viewer, role=role
    )
