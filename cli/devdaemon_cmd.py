"""``signet-cluster devdaemon``: run a stand-in Signet daemon for trying things out."""

from __future__ import annotations

from pathlib import Path

import click

from signet_cluster.devdaemon import FAIL_MODES, FLAVORS, DevDaemonConfig
from signet_cluster.devdaemon.app import run_devdaemon


@click.command("devdaemon")
@click.option(
    "--path",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Workspace directory (the daemon's SIGNET_PATH); memory/memories.db is created in it.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=3850,
    show_default=True,
    help="TCP port; 0 picks one.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--flavor",
    type=click.Choice(FLAVORS),
    default="ts",
    show_default=True,
    help="Daemon to imitate: ts (>=0.76), ts-legacy (<0.76, no agents) or rust.",
)
@click.option(
    "--version", "version", default=None, help="Version to report (default: the flavor's)."
)
@click.option(
    "--latency-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Delay added to every request except /health.",
)
@click.option(
    "--fail",
    type=click.Choice(FAIL_MODES),
    default="none",
    show_default=True,
    help="Memory routes answer 500 (error) or never answer (hang).",
)
@click.option(
    "--recall-cost",
    type=click.Choice(("off", "real")),
    default="off",
    show_default=True,
    help="real: recall costs what a real 0.145.7 daemon's does (CPU per call and row, "
    "response size); off: only the dev daemon's own cost.",
)
def devdaemon(
    path: Path,
    port: int,
    host: str,
    flavor: str,
    version: str | None,
    latency_ms: float,
    fail: str,
    recall_cost: str,
) -> None:
    """Run a dev daemon: a stand-in Signet daemon with the same paths and shapes.

    Stops cleanly on Ctrl-C or SIGTERM.
    """
    config = DevDaemonConfig(
        path=path,
        flavor=flavor,
        host=host,
        port=port,
        version=version,
        latency_ms=latency_ms,
        fail=fail,
        recall_cost=recall_cost,
    )
    try:
        run_devdaemon(config, lambda line: click.echo(line))
    except OSError as exc:
        raise click.ClickException(f"cannot serve on {host}:{port}: {exc}") from exc
