"""`signet-cluster keygen` and `signet-cluster keyring install|use|remove|list`: make cluster
secrets and rotate them without downtime.

The keyring is a file on each node (`keyring_file`); a running sidecar re-reads it within a
second of a change (or at once on SIGHUP), so no restart is needed. Rotation, node by node:

    signet-cluster keygen --out new.key            # once, copy new.key to every node
    signet-cluster keyring install --secret-file new.key --key-id k2   # every node
    signet-cluster keyring use k2                  # every node (all accept k2 by now)
    signet-cluster keyring remove k1               # every node

Old and new keys are both accepted from `install` until `remove`, so the cluster stays up
whatever order the nodes are changed in. Output shows key ids only, never secrets.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from signet_cluster.errors import ConfigError
from signet_cluster.security.keyring import (
    Keyring,
    generate_secret,
    load_keyring_file,
    load_secret_file,
    new_key,
    save_keyring,
    write_private,
)
from signet_cluster.security.roles import generate_role_key
from signet_cluster.settings import ENV_PREFIX, read_toml

from .client import CliError, expect_ok, run_async
from .context import CliContext, emit_json, json_option, pass_ctx


@click.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Write the secret to this file (mode 0600) instead of printing it.",
)
@click.option(
    "--role",
    type=click.Choice(["cluster", "admin", "coordinator"]),
    default="cluster",
    show_default=True,
    help="cluster: the shared node secret; admin / coordinator: a key pair for that role.",
)
def keygen(out: Path | None, role: str) -> None:
    """Make a new random cluster secret (32 bytes, base64url), or a role key pair.

    Use the cluster secret as `secret_file` on every node, or add it to a keyring with
    `keyring install`. With `--role admin|coordinator` the private key goes to --out (required)
    and the public key is printed: list it in `admin_public_keys` / `coordinator_public_keys`
    on every node. Keep the admin key where the operator runs the CLI
    (SIGNET_CLUSTER_ADMIN_KEY_FILE); give the coordinator key (`coordinator_key_file`) only to
    coordinators.
    """
    if role != "cluster":
        if out is None:
            raise CliError("--role needs --out FILE: a private key is never printed")
        if out.exists():
            raise CliError(f"{out} already exists; not overwriting a key")
        private, public = generate_role_key()
        write_private(out, private)
        setting = "admin_public_keys" if role == "admin" else "coordinator_public_keys"
        click.echo(f"wrote a new {role} private key to {out} (mode 0600)")
        click.echo(f"public key (add to {setting} on every node): {public}")
        return
    secret = generate_secret()
    if out is None:
        click.echo(secret)
        return
    if out.exists():
        raise CliError(f"{out} already exists; not overwriting a secret")
    write_private(out, secret + "\n")
    click.echo(f"wrote a new secret to {out} (mode 0600)")


def _keyring_path(explicit: Path | None, config_file: Path | None) -> Path:
    if explicit is not None:
        return explicit.expanduser()
    env = os.environ.get(ENV_PREFIX + "KEYRING_FILE")
    if env:
        return Path(env).expanduser()
    config = config_file or (
        Path(os.environ[ENV_PREFIX + "CONFIG"]) if os.environ.get(ENV_PREFIX + "CONFIG") else None
    )
    if config is not None:
        problems: list[str] = []
        values = read_toml(config.expanduser(), problems)
        if not values and problems:  # missing or unreadable, not just an unknown key
            raise CliError("; ".join(problems))
        value = values.get("keyring_file")
        if isinstance(value, str):
            return Path(value).expanduser()
    raise CliError(
        "which keyring? give --keyring-file, set SIGNET_CLUSTER_KEYRING_FILE, "
        "or keyring_file in the config file"
    )


def _load(path: Path) -> Keyring:
    try:
        return load_keyring_file(path)
    except ConfigError as exc:
        raise CliError("; ".join(exc.problems)) from None


def _describe(keyring: Keyring) -> dict[str, Any]:
    return {
        "file": keyring.source,
        "primary": keyring.primary,
        "keys": [
            {"id": k.id, "primary": k.id == keyring.primary, "created_at": k.created_at}
            for k in keyring.keys
        ],
    }


def _print(keyring: Keyring, as_json: bool) -> None:
    if as_json:
        emit_json(_describe(keyring))
        return
    for key in keyring.keys:
        mark = "*" if key.id == keyring.primary else " "
        click.echo(f"{mark} {key.id:<24} {key.created_at or ''}")
    click.echo("(* = primary: signs; every listed key verifies)")


keyring_file_option = click.option(
    "--keyring-file",
    type=click.Path(path_type=Path),
    help="The keyring (default: SIGNET_CLUSTER_KEYRING_FILE or keyring_file in --config).",
)
config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="TOML settings file to take keyring_file from (env SIGNET_CLUSTER_CONFIG).",
)


@click.group()
def keyring() -> None:
    """Manage the cluster keyring: several keys, one primary (rotation without downtime)."""


@keyring.command("list")
@keyring_file_option
@config_option
@click.option(
    "--live", is_flag=True, help="Ask the sidecar (--sidecar) which keys it has loaded instead."
)
@json_option
@pass_ctx
def list_keys(
    ctx: CliContext,
    keyring_file: Path | None,
    config_file: Path | None,
    live: bool,
    as_json: bool,
) -> None:
    """List key ids (never secrets); * marks the primary."""
    if live:
        body = expect_ok(run_async(ctx.client.call("GET", "/api/cluster/keyring")))
        if as_json:
            emit_json(body)
            return
        ring = body.get("keyring") or {}
        if not ring:
            click.echo(f"{ctx.client.base_url}: no cluster key loaded")
            return
        for kid in ring.get("keys", []):
            click.echo(f"{'*' if kid == ring.get('primary') else ' '} {kid}")
        return
    _print(_load(_keyring_path(keyring_file, config_file)), as_json)


def _read_secret(secret_file: Path | None, generate: bool) -> str:
    if generate:
        return generate_secret()
    if secret_file is not None:
        try:
            return load_secret_file(secret_file.expanduser()).primary_key.secret.decode()
        except ConfigError as exc:
            raise CliError("; ".join(exc.problems)) from None
    if sys.stdin.isatty():
        raise CliError("give --secret-file FILE, --generate, or the secret on standard input")
    return sys.stdin.read().strip()


@keyring.command()
@keyring_file_option
@config_option
@click.option(
    "--secret-file", type=click.Path(path_type=Path), help="Read the new secret from this file."
)
@click.option("--generate", is_flag=True, help="Make a new random secret.")
@click.option(
    "--key-id",
    help="Id for the new key (default: derived from the secret, the id a secret_file has).",
)
@json_option
def install(
    keyring_file: Path | None,
    config_file: Path | None,
    secret_file: Path | None,
    generate: bool,
    key_id: str | None,
    as_json: bool,
) -> None:
    """Add a key (it verifies at once; `use` makes it sign). Creates the keyring if needed,
    with the new key as primary. The secret comes from --secret-file, --generate or stdin."""
    path = _keyring_path(keyring_file, config_file)
    try:
        key = new_key(_read_secret(secret_file, generate), key_id)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    done = f"installed key {key.id} in {path}"
    if path.exists():
        _change(path, lambda ring: ring.install(key), done, as_json)
        return
    save_keyring(path, Keyring(keys=(key,), primary=key.id, source=str(path)))
    if not as_json:
        click.echo(done)
    _print(_load(path), as_json)


def _change(path: Path, change: Callable[[Keyring], Keyring], done: str, as_json: bool) -> None:
    """Apply one change to the keyring file, then show the keyring (a refusal changes nothing)."""
    try:
        updated = change(_load(path))
    except ValueError as exc:
        raise CliError(str(exc)) from None
    save_keyring(path, updated)
    if not as_json:
        click.echo(done)
    _print(_load(path), as_json)


@keyring.command()
@click.argument("key_id")
@keyring_file_option
@config_option
@json_option
def use(key_id: str, keyring_file: Path | None, config_file: Path | None, as_json: bool) -> None:
    """Make KEY_ID the primary key: this node signs with it from now on."""
    path = _keyring_path(keyring_file, config_file)
    _change(
        path, lambda ring: ring.use(key_id), f"{key_id} is now the primary key in {path}", as_json
    )


@keyring.command()
@click.argument("key_id")
@keyring_file_option
@config_option
@json_option
def remove(key_id: str, keyring_file: Path | None, config_file: Path | None, as_json: bool) -> None:
    """Remove KEY_ID: requests signed with it are refused from now on (not the primary)."""
    path = _keyring_path(keyring_file, config_file)
    _change(path, lambda ring: ring.remove(key_id), f"removed key {key_id} from {path}", as_json)


def key_summary(secret_file: str | None, keyring_file: str | None) -> str | None:
    """For `check-config`: the configured key ids (never secrets), or a CliError when the
    key file cannot be used; None when no key is configured."""
    from signet_cluster.security.keyring import load_configured

    try:
        ring = load_configured(secret_file, keyring_file)
    except ConfigError as exc:
        raise CliError("invalid configuration:\n  - " + "\n  - ".join(exc.problems)) from None
    if ring is None:
        return None
    return f"cluster key: primary {ring.primary}, installed {', '.join(ring.ids())} ({ring.source})"
