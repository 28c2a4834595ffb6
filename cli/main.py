"""`signet-cluster`: one CLI for the cluster. Commands parse, call the sidecar or core, print,
and pick the exit code (0 healthy, 1 error, 2 usage, 3 degraded, 4 unreachable)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from signet_cluster import __version__
from signet_cluster.errors import ConfigError
from signet_cluster.logconfig import configure_logging
from signet_cluster.settings import DEFAULT_PORT, FIELDS, describe, env_name, load_settings

from .client import EXIT_DEGRADED, CliError, expect_ok, get_status, run_async
from .context import CliContext, emit_json, json_option, pass_ctx
from .render import render_status, status_problems
from .status_watch import check_watch_options, watch_options, watch_status

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_SIDECAR = f"http://127.0.0.1:{DEFAULT_PORT}"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="signet-cluster")
@click.option(
    "--sidecar",
    envvar="SIGNET_CLUSTER_SIDECAR",
    default=DEFAULT_SIDECAR,
    show_default=True,
    help="Sidecar(s) to talk to: any node; several comma-separated are tried in order "
    "(env SIGNET_CLUSTER_SIDECAR).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for an answer.",
)
@click.option(
    "--admin-key-file",
    type=click.Path(dir_okay=False),
    help="The operator's admin key (`keygen --role admin`): needed to join, remove, adopt, "
    "promote (env SIGNET_CLUSTER_ADMIN_KEY_FILE).",
)
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False),
    help="The cluster key, a node credential: reads only (env SIGNET_CLUSTER_SECRET_FILE).",
)
@click.option(
    "--viewer-token-file",
    type=click.Path(dir_okay=False),
    help="A viewer token (the sidecars' viewer_token_file): reads only "
    "(env SIGNET_CLUSTER_VIEWER_TOKEN_FILE).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    sidecar: str,
    timeout: float,
    admin_key_file: str | None,
    secret_file: str | None,
    viewer_token_file: str | None,
) -> None:
    """Run Signet memory daemons on several machines as one cluster.

    Every host runs `signet-cluster serve` next to its Signet daemon; point any command at
    any sidecar with --sidecar. Try it locally with `signet-cluster demo`.

    Exit codes: 0 done/healthy, 1 error, 2 usage error, 3 degraded, 4 sidecar unreachable.
    """
    ctx.obj = CliContext(
        sidecar=sidecar,
        timeout=timeout,
        secret_file=secret_file,
        admin_key_file=admin_key_file,
        viewer_token_file=viewer_token_file,
    )


# -- settings-based commands ------------------------------------------------------------
def settings_options(fn: F) -> F:
    """Flags for the most used settings; every setting also has a TOML key and env var."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            help="TOML settings file (env SIGNET_CLUSTER_CONFIG).",
        ),
        click.option("--host", help="Listen address (default 127.0.0.1)."),
        click.option("--port", type=int, help=f"Listen port (default {DEFAULT_PORT})."),
        click.option(
            "--node-id", help="Stable node id (default: generated once, kept in the state DB)."
        ),
        click.option("--advertise-url", help="URL other sidecars use to reach this one."),
        click.option("--coordinator/--no-coordinator", default=None, help="Act as a coordinator."),
        click.option("--coordinators", help="Comma-separated coordinator URLs to heartbeat to."),
        click.option(
            "--daemon-url", help="The local Signet daemon (default http://127.0.0.1:3850)."
        ),
        click.option(
            "--workspace", help="The daemon's workspace (default $SIGNET_PATH or ~/.agents)."
        ),
        click.option("--state-dir", help="Where the sidecar keeps its state DB."),
        click.option("--heartbeat-interval", type=float, help="Seconds between heartbeats."),
        click.option(
            "--log-level",
            type=click.Choice(["debug", "info", "warning", "error"]),
            help="Log level.",
        ),
        click.option(
            "--log-format", type=click.Choice(["auto", "console", "json"]), help="Log format."
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _settings_from(config_file: Path | None, flags: dict[str, Any]) -> Any:
    try:
        return load_settings(
            config_file=config_file, overrides={k: v for k, v in flags.items() if v is not None}
        )
    except ConfigError as exc:
        raise CliError("invalid configuration:\n  - " + "\n  - ".join(exc.problems)) from None


@cli.command()
@settings_options
def serve(config_file: Path | None, **flags: Any) -> None:
    """Run the sidecar in the foreground (what the systemd/launchd units run)."""
    from sidecar.runner import run_sidecar

    settings = _settings_from(config_file, flags)
    configure_logging(settings.log_level, settings.log_format)
    try:
        run_async(run_sidecar(settings))
    except ConfigError as exc:  # e.g. a state directory that cannot be written
        raise CliError("; ".join(exc.problems)) from None
    except OSError as exc:
        raise CliError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None


@cli.command("check-config")
@settings_options
@json_option
def check_config(config_file: Path | None, as_json: bool, **flags: Any) -> None:
    """Validate settings (defaults < TOML < env < flags) and print the result."""
    from .keyring_cmds import key_summary

    settings = _settings_from(config_file, flags)
    values = describe(settings)
    keys_line = key_summary(settings.secret_file, settings.keyring_file)  # ids only
    if as_json:
        emit_json(values)
        return
    for name, value in values.items():
        click.echo(f"{name} = {value!r}    ({env_name(name)})")
    if keys_line:
        click.echo(keys_line)
    click.echo(f"ok: {len(FIELDS)} settings valid")


# -- cluster commands -------------------------------------------------------------------
@cli.command()
@json_option
@watch_options
@pass_ctx
def status(ctx: CliContext, as_json: bool, watch: bool, interval: float, count: int | None) -> None:
    """Show every node: state, address, daemon flavor/version/health, agents, heartbeat age.

    Exit code 0 when healthy, 3 when degraded (a node down, a daemon unhealthy, a stale
    routing table or an agent claimed twice), 4 when the sidecar cannot be reached.
    With --watch the view refreshes in place until Ctrl-C.
    """
    check_watch_options(click.get_current_context(), watch)
    if watch:
        sys.exit(watch_status(ctx.client, as_json=as_json, interval=interval, count=count))
    body = run_async(get_status(ctx.client))
    if as_json:
        emit_json(body)
    else:
        click.echo(render_status(body))
    if status_problems(body):
        sys.exit(EXIT_DEGRADED)


@cli.command()
@click.argument("address")
@click.option(
    "--wait",
    is_flag=True,
    help="Then wait (up to --timeout, progress on stderr) until the node heartbeats; "
    "exit 3 if it does not.",
)
@json_option
@pass_ctx
def join(ctx: CliContext, address: str, wait: bool, as_json: bool) -> None:
    """Add the sidecar at ADDRESS (HOST:PORT) to the cluster. Idempotent."""
    body = expect_ok(run_async(ctx.client.admin("POST", "/api/cluster/join", {"address": address})))
    if wait:
        from .progress import wait_until_alive

        took = run_async(wait_until_alive(ctx.client, body["node_id"], ctx.timeout))
        body["alive_after_s"] = round(took, 3)
    if as_json:
        emit_json(body)
        return
    verb = "was already a member" if body.get("already_joined") else "joined"
    click.echo(f"{body['node_id']} ({body['url']}) {verb}.")
    if body.get("warning"):
        click.echo(f"warning: could not tell it to heartbeat yet: {body['warning']}", err=True)


@cli.command()
@click.argument("node")
@json_option
@pass_ctx
def remove(ctx: CliContext, node: str, as_json: bool) -> None:
    """Remove NODE (node id, HOST:PORT, or a host with one node) from the cluster. Idempotent."""
    from urllib.parse import quote

    body = expect_ok(
        run_async(ctx.client.admin("DELETE", f"/api/cluster/peers/{quote(node, safe='')}"))
    )
    if as_json:
        emit_json(body)
        return
    if body.get("removed"):
        click.echo(f"{body['node_id']} ({body['url']}) removed.")
    else:
        click.echo(f"{node}: not a member; nothing to do.")


def _register_optional_commands() -> None:
    from .cluster_cmds import adopt, promote
    from .demo import demo
    from .devdaemon_cmd import devdaemon
    from .explain import explain_cmd
    from .keyring_cmds import keygen, keyring
    from .routing_cmds import resolve, routes
    from .service import install_service

    cli.add_command(devdaemon)
    cli.add_command(demo)
    cli.add_command(explain_cmd)
    cli.add_command(keygen)
    cli.add_command(keyring)
    cli.add_command(install_service)
    cli.add_command(adopt)
    cli.add_command(promote)
    cli.add_command(resolve)
    cli.add_command(routes)


_register_optional_commands()


def main() -> None:
    cli(prog_name="signet-cluster")


if __name__ == "__main__":
    main()
