"""What the CLI proves itself with: the cluster key (to sign) and TLS files (to verify the
sidecar and present a client certificate).

Looked up in this order, the first found wins:
1. `SIGNET_CLUSTER_SECRET`: the secret itself (handy in CI; prefer a file elsewhere);
2. `SIGNET_CLUSTER_KEYRING_FILE`, then `SIGNET_CLUSTER_SECRET_FILE` (the sidecar's env names);
3. `keyring_file` / `secret_file` in the TOML file named by `SIGNET_CLUSTER_CONFIG`.
TLS: `SIGNET_CLUSTER_TLS_CA_FILE`, `..._TLS_CERT_FILE`, `..._TLS_KEY_FILE`, else the same
TOML keys. The CLI signs as node `cli`.
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
from signet_cluster.security.signing import CLI_NODE_ID, Signer
from signet_cluster.security.tls import TlsManager
from signet_cluster.settings import ENV_PREFIX, read_toml

from .client import CliError


@attrs.frozen
class Credentials:
    signer: Signer | None = None
    ssl_context: ssl.SSLContext | None = None
    keyring: Keyring | None = attrs.field(default=None, repr=False)


def _config_values(env: Mapping[str, str]) -> dict[str, Any]:
    path = env.get(ENV_PREFIX + "CONFIG")
    if not path:
        return {}
    problems: list[str] = []
    # Unknown keys are check-config's business; only the credential keys matter here.
    values = read_toml(Path(path).expanduser(), problems)
    return {k: v for k, v in values.items() if isinstance(v, str)}


def load_keyring(env: Mapping[str, str]) -> Keyring | None:
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


def load_credentials(env: Mapping[str, str] | None = None) -> Credentials:
    env = os.environ if env is None else env
    keyring = load_keyring(env)
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
    signer = Signer(lambda: keyring, CLI_NODE_ID, wall=time.time) if keyring is not None else None
    return Credentials(signer=signer, ssl_context=context, keyring=keyring)
