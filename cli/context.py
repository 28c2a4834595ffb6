"""What every command shares: the typed click context object and the output options."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import click
from yarl import URL

from .client import SidecarClient
from .credentials import load_credentials

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


@attrs.frozen
class CliContext:
    sidecar: str
    timeout: float
    # Credential files from the global options (cli/credentials.py); None: the environment.
    secret_file: str | None = None
    admin_key_file: str | None = None
    viewer_token_file: str | None = None

    @property
    def client(self) -> SidecarClient:
        urls = parse_sidecars(self.sidecar)
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
