"""Step 5: serve the request as decided: on this node's daemon, forwarded to the owner's
sidecar, federated across the cluster, or kept in the spool for an owner that cannot take
it now. Refusals for an unreachable owner or a misrouted hop are answered here too."""

from __future__ import annotations

import json

import attrs
from aiohttp import web

from sidecar import keys
from sidecar.federation.fanout import federated_read, federates, list_key
from sidecar.federation.legs import tag_hits
from sidecar.membership.peers import ForwardFailed
from sidecar.memory.forward import DaemonError, to_response
from sidecar.memory.handoff import is_replay, spool_write
from sidecar.memory.proxy import (
    TAG_HEADER,
    forward_to_owner,
    misrouted,
    owner_unreachable,
    serve_local,
)
from sidecar.pipeline.decision import Decision
from sidecar.pipeline.intake import Intake
from sidecar.security.auth import token_unverified
from signet_cluster.daemon.agent_resolution import RouteKind
from signet_cluster.spool import ensure_idempotency_key


@attrs.define
class Outcome:
    """What happened, for `signet_cluster_proxied_requests` (outcome, target labels)."""

    outcome: str = "ok"
    target: str = "local"


async def serve(
    request: web.Request, kind: RouteKind, decision: Decision, intake: Intake, outcome: Outcome
) -> web.StreamResponse:
    app = request.app
    target = decision.target
    if target is not None and target.kind != "local":
        outcome.target = target.node_id
    if decision.spoolable and decision.action in ("local", "forward"):
        intake = keyed(app, intake)
    if decision.action == "misrouted":
        outcome.outcome = "misrouted"
        return misrouted(app, decision.agent)
    if decision.action == "federate":
        assert target is not None
        return await federated_read(request, kind, target, intake.body, intake.parsed)
    if decision.action == "local":
        return await _serve_here(request, kind, decision, intake, outcome)
    assert target is not None
    # Spooling needs a verified caller: a bare daemon token was never checked by a daemon.
    spool = decision.spoolable and not token_unverified(request)
    if decision.action == "unreachable":
        outcome.outcome = "unreachable"
        if spool:
            return await _spool(
                request, decision, intake, outcome, f"owner is {target.owner_state}"
            )
        return owner_unreachable(app, target, None)
    try:
        raw = await forward_to_owner(request, target, intake.body)
    except ForwardFailed as exc:
        outcome.outcome = "unreachable"
        if spool:
            # Safe even if the owner got it before the failure: the daemon dedupes the
            # replay by content hash (and by the idempotency key when the client sent one).
            return await _spool(request, decision, intake, outcome, exc.message)
        return owner_unreachable(app, target, exc)
    return to_response(raw, target.node_id)


def keyed(app: web.Application, intake: Intake) -> Intake:
    """A remember that may end up in the spool carries an idempotency key from its first
    try: if that try lands after a timeout, the spool's replay then has the same key and
    the daemon answers with the stored memory instead of storing it again (content-hash
    dedupe alone does not cover long content, which the daemon splits into chunks)."""
    assert intake.parsed is not None
    parsed = dict(intake.parsed)
    ensure_idempotency_key(parsed, app[keys.IDENTITY].node_id)
    if parsed == intake.parsed:
        return intake  # the client's own key: relay its bytes untouched
    return attrs.evolve(intake, body=json.dumps(parsed).encode(), parsed=parsed)


async def _serve_here(
    request: web.Request, kind: RouteKind, decision: Decision, intake: Intake, outcome: Outcome
) -> web.StreamResponse:
    app = request.app
    try:
        raw = await serve_local(
            request, kind, decision.agent, intake.body, intake.parsed, explicit=decision.explicit
        )
    except DaemonError as exc:
        if not decision.spoolable:
            raise
        if decision.explicit:
            # The owner's daemon is restarting: keep the write here (the owner's own spool),
            # unless this is already a replay from a spool (then the sender keeps it).
            if is_replay(request.headers):
                raise
            why = f"the owner's daemon: {exc.message}"
        else:
            if token_unverified(request):
                raise
            why = f"the local daemon: {exc.message}"
        return await _spool(request, decision, intake, outcome, why, here=True)
    if not decision.explicit:
        assert decision.target is not None
        return to_response(raw, decision.target.node_id)
    node = app[keys.IDENTITY].node_id
    if (
        raw.status == 200
        and request.headers.get(TAG_HEADER) == "1"
        and federates(kind, request.path)
    ):
        # The owner's leg of another node's fan-out: tag each hit with node and agent.
        try:
            answer = json.loads(raw.body)
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            await tag_hits(app, answer, list_key(kind))
            return web.Response(
                status=200,
                body=json.dumps(answer).encode(),
                content_type="application/json",
                headers={"x-signet-cluster-served-by": node},
            )
    return to_response(raw, node)


async def _spool(
    request: web.Request,
    decision: Decision,
    intake: Intake,
    outcome: Outcome,
    why: str,
    *,
    here: bool = False,
) -> web.Response:
    """Hand a remember to the spool (owner: the decision's target, or this node)."""
    app = request.app
    target = decision.target
    if here or target is None:
        identity = app[keys.IDENTITY]
        owner = {"node_id": identity.node_id, "url": identity.url, "state": "daemon unavailable"}
    else:
        owner = {"node_id": target.node_id, "url": target.url, "state": target.owner_state}
    assert intake.parsed is not None
    response = await spool_write(
        app,
        agent_id=decision.agent,
        owner=owner,
        method=request.method,
        path_qs=request.raw_path,
        headers=request.headers,
        body=dict(intake.parsed),
        why=why,
    )
    # 202 stored; else refused (a bound reached, or a write no daemon would take).
    outcome.outcome = "spooled" if response.status == 202 else "refused"
    return response
