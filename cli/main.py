"""`signet-cluster`: one CLI for the cluster. Commands parse, call the sidecar or core, print,
and pick the exit code (0 healthy, 1 error, 2 usage, 3 degraded, 4 unreachable)."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from signet_cluster import __version__
from signet_cluster.errors import ConfigError
from signet_cluster.logconfig import configure_logging
from signet_cluster.settings import (
    DEFAULT_PORT,
    FIELDS,
    collect_settings,
    effective,
    env_name,
    load_settings,
    toml_value,
)

from .client import EXIT_DEGRADED, CliError, expect_ok, get_status, run_async
from .context import (
    DEFAULT_SIDECAR,
    CliContext,
    change_options,
    confirm,
    emit_json,
    json_on_error,
    json_option,
    pass_ctx,
)
from .render import render_status, screen_width, status_problems, use_colour
from .status_watch import check_watch_options, watch_options, watch_status

F = TypeVar("F", bound=Callable[..., Any])


class ClusterGroup(click.Group):
    """The command group; global options (`--sidecar URL`, `--timeout S`, ...) are also
    accepted after the subcommand (`join X --timeout 3`), as `--help` lists them."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(self, args))


def hoist_global_options(group: click.Group, args: list[str]) -> list[str]:
    """Move the group's own options found after the subcommand name to the front. A
    subcommand (or nested subcommand, e.g. `keyring install --secret-file`) option of the
    same name keeps it; `--` ends the scan."""
    takes_value: dict[str, bool] = {}
    for param in group.params:
        if isinstance(param, click.Option):
            for name in param.opts:
                if name.startswith("--"):
                    takes_value[name] = not param.is_flag
    front: list[str] = []
    rest: list[str] = []
    index = 0
    seen_command = False
    current: click.Command | None = group
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest.extend(args[index:])
            break
        if (
            not arg.startswith("-")
            and isinstance(current, click.Group)
            and (not seen_command or arg in current.commands)
        ):
            seen_command = True
            command = current.commands.get(arg)
            own = {o for p in (command.params if command else []) for o in getattr(p, "opts", [])}
            takes_value = {k: v for k, v in takes_value.items() if k not in own}
            current = command
            rest.append(arg)
        elif seen_command and arg.split("=", 1)[0] in takes_value:
            name = arg.split("=", 1)[0]
            if "=" in arg or not takes_value[name]:
                front.append(arg)
            else:
                front.extend(args[index : index + 2])
                index += 1
        elif not seen_command and arg in takes_value and takes_value[arg]:
            rest.extend(args[index : index + 2])
            index += 1
        else:
            rest.append(arg)
        index += 1
    return front + rest


@click.group(
    cls=ClusterGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="signet-cluster")
@click.option(
    "--sidecar",
    envvar="SIGNET_CLUSTER_SIDECAR",
    default=None,
    help="Sidecar(s) to talk to: any node; several comma-separated are tried in order "
    "(env SIGNET_CLUSTER_SIDECAR). Default: this node's URL from the settings file named by "
    f"SIGNET_CLUSTER_CONFIG, else {DEFAULT_SIDECAR}.",
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
    sidecar: str | None,
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
    """Validate settings (defaults < TOML < env < flags): every problem at once, else each
    setting as TOML with its effective value and where it came from (default, file, env,
    flag). Exit 1 when anything is wrong; --json prints a document either way."""
    from sidecar.membership.identity import default_node_id

    from .keyring_cmds import key_summary

    checked = collect_settings(
        config_file=config_file, overrides={k: v for k, v in flags.items() if v is not None}
    )
    settings, problems = checked.settings, list(checked.problems)
    keys_line = None
    try:
        keys_line = key_summary(settings.secret_file, settings.keyring_file)  # ids only
    except CliError as exc:
        problems += [line.strip(" -") for line in exc.message.splitlines()[1:]]
    values = effective(settings)
    if settings.node_id is None:
        values["node_id"] = default_node_id()
    notes = {
        name: "unset: "
        + ("the host name, unless the state DB holds an id" if name == "node_id" else "derived")
        for name in ("node_id", "advertise_url", "workspace", "state_dir", "peer_ttl")
        if getattr(settings, name) is None
    }
    if as_json:
        emit_json(
            {
                **values,
                "ok": not problems,
                "problems": problems,
                "sources": {name: notes.get(name, checked.sources[name]) for name in FIELDS},
            }
        )
        if problems:
            sys.exit(1)
        return
    if problems:
        raise CliError("invalid configuration:\n  - " + "\n  - ".join(problems))
    for name, value in values.items():
        source = notes.get(name, checked.sources[name])
        if value is None:
            click.echo(f"# {name} is not set    # {env_name(name)}")
        else:
            click.echo(f"{name} = {toml_value(value)}    # {source}; {env_name(name)}")
    if keys_line:
        click.echo(f"# {keys_line}")
    click.echo(f"# ok: {len(FIELDS)} settings valid")


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
    try:
        body = run_async(get_status(ctx.client))
    except CliError as exc:
        if as_json:  # scripts read stdout: the error is JSON there too
            emit_json({"error": exc.message, "exit_code": exc.exit_code, "problems": []})
        raise
    problems = status_problems(body)
    code = EXIT_DEGRADED if problems else 0
    if as_json:
        emit_json({**body, "problems": problems, "exit_code": code})
    else:
        click.echo(render_status(body, width=screen_width(), colour=use_colour()))
    if code:
        sys.exit(code)


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
    body = expect_ok(
        json_on_error(
            run_async(ctx.client.admin("POST", "/api/cluster/join", {"address": address})),
            as_json,
        )
    )
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
@change_options
@json_option
@pass_ctx
def remove(ctx: CliContext, node: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Remove NODE (node id, HOST:PORT, or a host with one node) from the cluster. Idempotent.

    Only the node with that id is told to stop heartbeating: another node now answering at
    its URL is left alone. Shows the node and asks first on a terminal; --yes for scripts,
    --dry-run to only show it. An unknown NODE is exit 1 with the closest known name."""
    from urllib.parse import quote

    # The preview comes from the status any sidecar serves (every backend has one).
    nodes = run_async(get_status(ctx.client))["nodes"]
    found = matching_nodes(nodes, node)
    if len(found) == 1:
        peer = found[0]
        agents = ", ".join(a["id"] for a in peer.get("agents", [])) or "no agents"
        what = f"{peer['node_id']} ({peer['url']}, {peer['state']}, {agents})"
        if dry_run:
            if as_json:
                emit_json({"dry_run": True, "would_remove": peer})
            else:
                click.echo(f"would remove {what}; nothing changed (--dry-run)")
            return
        confirm(f"Remove node {what}?", yes)
    elif dry_run:
        fail_unknown_node(node, nodes, as_json)
    path = f"/api/cluster/peers/{quote(node, safe='')}"
    body = expect_ok(json_on_error(run_async(ctx.client.admin("DELETE", path)), as_json))
    if body.get("known") is False:  # the etcd backend answers 200 for an unknown node
        fail_unknown_node(node, nodes, as_json)
    if as_json:
        emit_json(body)
        return
    if body.get("removed"):
        click.echo(f"{body['node_id']} ({body['url']}) removed.")
        if body.get("warning"):
            click.echo(f"warning: {body['warning']}", err=True)
    else:
        click.echo(f"{node}: removed before; nothing to do.")


def matching_nodes(nodes: list[dict[str, Any]], needle: str) -> list[dict[str, Any]]:
    """Nodes a `remove` argument names: a node id, a URL, HOST:PORT or a bare host."""
    exact = [n for n in nodes if n["node_id"] == needle]
    if exact:
        return exact
    bare = needle.split("://", 1)[-1].rstrip("/")
    found = []
    for candidate in nodes:
        host_port = str(candidate.get("url", "")).split("://", 1)[-1].rstrip("/")
        if bare in (host_port, host_port.rsplit(":", 1)[0]):
            found.append(candidate)
    return found


def fail_unknown_node(needle: str, nodes: list[dict[str, Any]], as_json: bool) -> NoReturn:
    names = sorted({n["node_id"] for n in nodes})
    close = difflib.get_close_matches(needle, names, n=1, cutoff=0.6)
    message = f"no node {needle!r} in the cluster" + (
        f"; did you mean {close[0]!r}?" if close else ""
    )
    if as_json:
        emit_json({"error": message, "code": "not_found", "exit_code": 1})
    raise CliError(message)


@cli.command()
@click.argument("old")
@click.argument("new")
@change_options
@json_option
@pass_ctx
def replace(ctx: CliContext, old: str, new: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """NEW takes OLD's place: a node that came back under a new node id (a new state dir,
    a rebuilt host). NEW becomes a member if OLD was one, every `adopt` naming OLD names
    NEW, and OLD is removed; nothing is sent to OLD's URL. OLD must be down, NEW alive.
    `status` suggests this when a new node answers at a down node's URL with its agents."""
    request = {"old": old, "new": new, "dry_run": True}
    plan = expect_ok(
        json_on_error(run_async(ctx.client.admin("POST", "/api/cluster/replace", request)), as_json)
    )
    summary = (
        f"{new} ({plan['url']}) replaces {old}: "
        + ("membership" if plan["joined"] else "no membership (OLD was only discovered)")
        + (
            f", adoptions of {', '.join(plan['adoptions_moved'])}"
            if plan["adoptions_moved"]
            else ""
        )
    )
    if dry_run:
        if as_json:
            emit_json(plan)
        else:
            click.echo(f"would do: {summary}; nothing changed (--dry-run)")
        return
    confirm(f"{summary}. Go ahead?", yes)
    request["dry_run"] = False
    body = expect_ok(
        json_on_error(run_async(ctx.client.admin("POST", "/api/cluster/replace", request)), as_json)
    )
    if as_json:
        emit_json(body)
        return
    click.echo(f"done: {summary}.")
    if body.get("warning"):
        click.echo(f"warning: {body['warning']}", err=True)


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
