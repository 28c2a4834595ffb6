"""`signet-cluster explain AGENT`: owner, policy, readers, route, collisions and why a read
would miss, worked out (signet_cluster.explain) from the status any sidecar serves."""

from __future__ import annotations

import difflib
import sys

import click

from signet_cluster.converter import unstructure
from signet_cluster.errors import ClusterError
from signet_cluster.explain import ClusterPicture, explain

from .client import EXIT_DEGRADED, EXIT_ERROR, CliError, get_status, run_async
from .context import CliContext, emit_json, json_option, pass_ctx
from .render import render_explanation


@click.command("explain")
@click.argument("agent")
@json_option
@pass_ctx
def explain_cmd(ctx: CliContext, agent: str, as_json: bool) -> None:
    """Explain AGENT: its owner and last heartbeat, read policy and group, which agents on
    which nodes can read its memories, what it reads, its route, collisions, and every
    reason a read would miss right now.

    Exit code 0 when nothing makes a read miss, 3 when something does (owner down, daemon
    unhealthy, collision, a node it reads from down, stale routing table), 1 when no node
    reports the agent, 4 when the sidecar cannot be reached.
    """
    try:
        body = run_async(get_status(ctx.client))
    except CliError as exc:
        if as_json:  # scripts read stdout: the error is JSON there too
            emit_json({"error": exc.message, "exit_code": exc.exit_code})
        raise
    try:
        picture = ClusterPicture.from_status(body)
    except ClusterError as exc:
        raise CliError(f"the sidecar's status is not understood: {exc.message}") from None
    result = explain(picture, agent)
    if as_json:
        emit_json({**unstructure(result), "ok": result.ok})
    else:
        click.echo(render_explanation(unstructure(result)))
    if not result.known:
        names = sorted({a["id"] for n in body.get("nodes", []) for a in n.get("agents", [])})
        close = difflib.get_close_matches(agent, names, n=1, cutoff=0.6)
        if close:
            click.echo(f"{agent}: no node reports it; did you mean {close[0]!r}?", err=True)
        sys.exit(EXIT_ERROR)
    if result.misses:
        sys.exit(EXIT_DEGRADED)
