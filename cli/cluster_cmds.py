"""Commands that change who owns what: `adopt` (settle an agent collision) and `promote`
(make a sidecar a coordinator at run time)."""

from __future__ import annotations

from typing import Any

import click

from .client import expect_ok, run_async
from .context import CliContext, emit_json, json_option, pass_ctx


def _owner_now(answer: dict[str, Any]) -> str:
    # A coordinator names the owner it routes to now; with the etcd backend the answer has
    # no `owner`: every sidecar sees the first claim again.
    if "owner" not in answer:
        return "the first claim decides again"
    return f"owner is now {answer['owner'] or 'none (no claimant is alive, not routable)'}"


@click.command()
@click.argument("agent")
@click.argument("node", required=False)
@click.option("--clear", is_flag=True, help="Drop the override; the automatic rule decides again.")
@json_option
@pass_ctx
def adopt(ctx: CliContext, agent: str, node: str | None, clear: bool, as_json: bool) -> None:
    """Make NODE the owner of AGENT when several nodes claim it (persisted on every
    coordinator). Without an override the earliest-created claim wins, then the smaller node id."""
    if clear == (node is not None):
        raise click.UsageError("give either NODE or --clear")
    body = expect_ok(
        run_async(
            ctx.client.admin("POST", "/api/cluster/adopt", {"agent_id": agent, "node_id": node})
        )
    )
    if as_json:
        emit_json(body)
    elif node is None:
        click.echo(f"{agent}: override cleared; {_owner_now(body)}.")
    else:
        click.echo(
            f"{agent}: owned by {node} cluster-wide (claimed by {', '.join(body['claimants'])})."
        )


@click.command()
@click.option("--demote", is_flag=True, help="Stop being a coordinator instead.")
@json_option
@pass_ctx
def promote(ctx: CliContext, demote: bool, as_json: bool) -> None:
    """Make the sidecar given by --sidecar a coordinator now (kept across restarts). Members
    learn the new coordinator from their next heartbeat reply."""
    body = expect_ok(
        run_async(ctx.client.call("POST", "/api/cluster/promote", {"coordinator": not demote}))
    )
    if as_json:
        emit_json(body)
    elif body["coordinator"]:
        click.echo(
            f"{body['node_id']} is a coordinator" + (" (already was)." if body["was"] else ".")
        )
    else:
        click.echo(f"{body['node_id']} is no longer a coordinator.")
