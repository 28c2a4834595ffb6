"""`resolve AGENT` and `routes`: where agents live, as a sidecar routes them right now."""

from __future__ import annotations

from typing import Any

import click

from .client import EXIT_DEGRADED, EXIT_ERROR, CliError, expect_ok, run_async
from .context import CliContext, emit_json, json_on_error, json_option, pass_ctx
from .render import policy_text, table


def _freshness(view: dict[str, Any]) -> str:
    if view.get("source") == "standalone":
        return "standalone (no cluster view: everything is served locally)"
    age = view.get("age_s")
    stale = " STALE: no coordinator answers" if view.get("stale") else ""
    return f"table {view.get('registry_version')} from {view.get('source')}, {age}s old{stale}"


def _policy(policy: dict[str, Any]) -> str:
    return policy_text(policy.get("read_policy"), policy.get("policy_group"))


@click.command()
@click.argument("agent")
@json_option
@pass_ctx
def resolve(ctx: CliContext, agent: str, as_json: bool) -> None:
    """Where AGENT lives: owner node, its sidecar URL, read policy, and how fresh that is.

    Exit 0 when the owner is reachable (or the agent is served locally), 3 when its owner
    is down."""
    body = expect_ok(
        json_on_error(
            run_async(ctx.client.call("GET", "/api/cluster/resolve", params={"agent_id": agent})),
            as_json,
        )
    )
    if body.get("known") is False:
        hint = f"; did you mean {body['suggestion']!r}?" if body.get("suggestion") else ""
        if as_json:
            emit_json({**body, "exit_code": EXIT_ERROR})
        raise CliError(f"no node hosts agent {agent!r} (it would be served locally){hint}")
    if as_json:
        emit_json(body)
    else:
        owner = body["owner"]
        click.echo(f"agent    {body['agent_id']} ({_policy(body['policy'])})")
        click.echo(f"route    {body['route']}: {body['reason']}")
        click.echo(f"owner    {owner['node_id']} {owner['url']} ({owner['state']})")
        click.echo(f"answer   from {body['answered_by']}; {_freshness(body['view'])}")
    if body["route"] == "unreachable":
        raise SystemExit(EXIT_DEGRADED)


@click.command()
@json_option
@pass_ctx
def routes(ctx: CliContext, as_json: bool) -> None:
    """Every agent the sidecar knows of, its owner and where its requests go (`default` is
    always served by each node's own daemon)."""
    body = expect_ok(
        json_on_error(run_async(ctx.client.call("GET", "/api/cluster/routes")), as_json)
    )
    if as_json:
        emit_json(body)
        return
    rows = [
        [
            entry["agent_id"],
            _policy(entry["policy"]),
            entry["owner"]["node_id"],
            entry["owner"]["url"],
            entry["route"],
            entry["owner"]["state"],
        ]
        for entry in body["routes"]
    ]
    click.echo(table(["AGENT", "POLICY", "OWNER", "URL", "ROUTE", "STATE"], rows))
    for collision in body.get("collisions", []):
        click.echo(
            f"collision: {collision['agent_id']} claimed by {', '.join(collision['claimants'])};"
            f" owner {collision['winner']} ({collision['rule']})"
        )
    click.echo(f"as seen by {body['node_id']}: {_freshness(body['view'])}")
