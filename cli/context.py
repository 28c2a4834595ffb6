"""What every command shares: the typed click context object and the output options."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import click

from .client import SidecarClient
from .credentials import load_credentials

F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class CliContext:
    sidecar: str
    timeout: float

    @property
    def client(self) -> SidecarClient:
        urls = [u.strip().rstrip("/") for u in self.sidecar.split(",") if u.strip()]
        return SidecarClient(
            base_url=urls[0],
            fallbacks=tuple(urls[1:]),
            timeout=self.timeout,
            credentials=load_credentials(),
        )


pass_ctx = click.make_pass_decorator(CliContext)


def json_option(fn: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (stable schema) instead of a table."
    )(fn)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))
