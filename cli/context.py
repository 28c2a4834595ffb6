"""What every command shares: the typed click context object and the output options."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import attrs
import click
from yarl import URL

from signet_cluster.errors import ConfigError
from signet_cluster.settings import DEFAULT_PORT, ENV_PREFIX, load_settings

from .client import EXIT_ERROR, EXIT_USAGE, Answer, CliError, SidecarClient, error_text
from .credentials import load_credentials

DEFAULT_SIDECAR = f"http://127.0.0.1:{DEFAULT_PORT}"

F = TypeVar("F", bound=Callable[..., Any])


def parse_sidecars(value: str) -> tuple[str, ...]:
    """`--sidecar A,B,...`: each an http(s) URL with a host. Anything else is a usage error
    (exit 2) rather than a misleading "cannot reach" (exit 4) later. Checked when a command
    first talks to a sidecar, so a stray SIGNET_CLUSTER_SIDECAR does not break `serve`."""
    urls = tuple(u.strip().rstrip("/") for u in value.split(",") if u.strip())
    if not urls:
        raise click.BadParameter(
            "give at least one sidecar URL, e.g. http://127.0.0.1:3860", param_hint="--sidecar"
        )
    for url in urls:
        try:
            parsed = URL(url)
        except ValueError:
            parsed = URL()
        if parsed.scheme not in ("http", "https") or not parsed.host:
            hint = f" (did you mean http://{url}?)" if "://" not in url else ""
            raise click.BadParameter(f"{url!r} is not an http(s) URL{hint}", param_hint="--sidecar")
    return urls


def sidecar_from_config(env: Mapping[str, str] | None = None) -> str | None:
    """This node's own URL from the settings file the unit uses (SIGNET_CLUSTER_CONFIG,
    with SIGNET_CLUSTER_* on top), so the CLI on a host with a non-default port or address
    finds its sidecar without --sidecar."""
    env = os.environ if env is None else env
    path = env.get(ENV_PREFIX + "CONFIG")
    if not path:
        return None
    try:
        settings = load_settings(config_file=Path(path).expanduser(), env=env)
    except ConfigError as exc:
        raise CliError(
            f"cannot find this node's sidecar URL in SIGNET_CLUSTER_CONFIG={path}: "
            + "; ".join(exc.problems)
            + " (fix the file, or give --sidecar)"
        ) from None
    return settings.url


@attrs.frozen
class CliContext:
    sidecar: str | None
    timeout: float
    # Credential files from the global options (cli/credentials.py); None: the environment.
    secret_file: str | None = None
    admin_key_file: str | None = None
    viewer_token_file: str | None = None

    @property
    def sidecar_urls(self) -> str:
        return self.sidecar or sidecar_from_config() or DEFAULT_SIDECAR

    @property
    def client(self) -> SidecarClient:
        urls = parse_sidecars(self.sidecar_urls)
        return SidecarClient(
            base_url=urls[0],
            fallbacks=urls[1:],
            timeout=self.timeout,
            credentials=load_credentials(
                secret_file=self.secret_file,
                admin_key_file=self.admin_key_file,
                viewer_token_file=self.viewer_token_file,
            ),
        )


pass_ctx = click.make_pass_decorator(CliContext)


def json_option(fn: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (stable schema) instead of a table."
    )(fn)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def change_options(fn: F) -> F:
    """`--dry-run` and `--yes` for commands that change the cluster."""
    fn = click.option(
        "--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts)."
    )(fn)
    return click.option("--dry-run", is_flag=True, help="Show what would change, change nothing.")(
        fn
    )


def confirm(question: str, yes: bool) -> None:
    """Ask before a change on a terminal; without one, only --yes goes ahead (exit 2), so a
    script never changes the cluster by accident."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            f"{question} Not confirmed: pass --yes (or --dry-run to only see the change).",
            EXIT_USAGE,
        )
    if not click.confirm(question, default=False, err=True):
        raise CliError("cancelled; nothing changed", EXIT_ERROR)


def json_on_error(answer: Answer, as_json: bool) -> Answer:
    """With --json, an error answer is printed on stdout too (as the sidecar's JSON error,
    with the exit code) before the CLI fails with its one line on stderr."""
    if as_json and not 200 <= answer.status < 300:
        fail_json(answer, as_json)
    return answer


def fail_json(answer: Answer, as_json: bool) -> NoReturn:
    error = CliError(error_text(answer))
    if as_json:
        body = answer.body if isinstance(answer.body, dict) else {"error": error.message}
        emit_json({**body, "exit_code": error.exit_code})
    raise error
