"""Commands that change who owns what: `adopt` (settle an agent collision) and `promote`
(make a sidecar a coordinator at run time)."""

from __future__ import annotations

from typing import Any

import click

from .client import Answer, error_text, expect_ok, run_async
from .context import (
    CliContext,
    change_options,
    confirm,
    emit_json,
    fail_json,
    json_on_error,
    json_option,
    pass_ctx,
)


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
@change_options
@json_option
@pass_ctx
def adopt(
    ctx: CliContext,
    agent: str,
    node: str | None,
    clear: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Make NODE the owner of AGENT when several nodes claim it (persisted on every
    coordinator). Without an override the earliest-created claim wins, then the smaller node id.

    Says when the new owner's roster gives AGENT another read policy (what it may read
    cluster-wide changes with it). Shows the change and asks first on a terminal; --yes for
    scripts, --dry-run to only show it."""
    if clear == (node is not None):
        raise click.UsageError("give either NODE or --clear")
    request = {"agent_id": agent, "node_id": node}
    client = ctx.client
    preview_answer = run_async(client.admin("POST", "/api/cluster/adopt/preview", request))
    preview: dict[str, Any] | None = None
    if preview_answer.status == 200 and isinstance(preview_answer.body, dict):
        preview = preview_answer.body
    elif dry_run or not _no_preview(preview_answer):
        fail_json(preview_answer, as_json)
    if dry_run and preview is not None:
        if as_json:
            emit_json(preview)
        else:
            click.echo(f"would do: {_change_text(agent, preview)}; nothing changed (--dry-run)")
        return
    what = _change_text(agent, preview) if preview is not None else f"{agent}: owner {node}"
    confirm(f"{what}. Go ahead?", yes)
    body = expect_ok(
        json_on_error(run_async(client.admin("POST", "/api/cluster/adopt", request)), as_json)
    )
    if as_json:
        emit_json(body)
        return
    if node is None:
        click.echo(f"{agent}: override cleared; {_owner_now(body)}.")
    else:
        click.echo(
            f"{agent}: owned by {node} cluster-wide (claimed by {', '.join(body['claimants'])})."
        )
    if body.get("policy_changed"):
        click.echo(
            f"warning: {agent}'s effective read policy changed from {body['policy_before']} "
            f"to {body['policy']} (the owner's roster decides)",
            err=True,
        )


def _no_preview(answer: Answer) -> bool:
    """An older sidecar (no preview route) or the etcd backend: confirm without a preview."""
    code = answer.body.get("code") if isinstance(answer.body, dict) else None
    return code == "registry_backend_etcd" or (
        answer.status == 404 and "no such cluster API route" in error_text(answer)
    )


def _change_text(agent: str, preview: dict[str, Any]) -> str:
    text = f"{agent}: owner {preview.get('owner_before') or 'none'} -> {preview.get('owner') or 'none'}"
    if preview.get("policy_changed"):
        text += f"; its read policy changes from {preview['policy_before']} to {preview['policy']}"
    return text


@click.command()
@click.option("--demote", is_flag=True, help="Stop being a coordinator instead.")
@change_options
@json_option
@pass_ctx
def promote(ctx: CliContext, demote: bool, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Make the sidecar given by --sidecar a coordinator now (kept across restarts). Members
    learn the new coordinator from their next heartbeat reply. --demote asks first on a
    terminal (--yes for scripts; --dry-run only names the sidecar)."""
    client = ctx.client
    if demote or dry_run:
        info = expect_ok(json_on_error(run_async(client.call("GET", "/api/cluster/info")), as_json))
        role = "a coordinator" if info.get("coordinator") else "not a coordinator"
        change = "stop being a coordinator" if demote else "become a coordinator"
        question = f"{info['node_id']} ({info['url']}) is {role} now; {change}?"
        if dry_run:
            if as_json:
                emit_json(
                    {
                        "dry_run": True,
                        "node_id": info["node_id"],
                        "coordinator": info.get("coordinator"),
                        "to": not demote,
                    }
                )
            else:
                click.echo(f"would: {question.rstrip('?')}; nothing changed (--dry-run)")
            return
        confirm(question, yes)
    body = expect_ok(
        json_on_error(
            run_async(client.call("POST", "/api/cluster/promote", {"coordinator": not demote})),
            as_json,
        )
    )
    if as_json:
        emit_json(body)
    elif body["coordinator"]:
        click.echo(
            f"{body['node_id']} is a coordinator" + (" (already was)." if body["was"] else ".")
        )
    else:
        click.echo(f"{body['node_id']} is no longer a coordinator.")
