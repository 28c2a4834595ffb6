"""Operator actions with the etcd backend: `remove NODE` (any sidecar can do it, since the
membership lives in etcd), writing adoptions, and clear refusals of the coordinator-only
operations that mean nothing here."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from sidecar import keys
from sidecar.etcd.backend import ETCD, VIEW_NAME, EtcdBackend
from sidecar.etcd.view import OwnerRecord, encode, matches, owner_of
from signet_cluster.errors import ClusterError, ValidationFailed
from signet_cluster.etcd.client import Compare, Delete, EtcdRequestFailed
from signet_cluster.registry import LOCAL_AGENT

log = structlog.get_logger("signet_cluster.etcd")
TXN_BATCH = 100  # claims per transaction (etcd's default limit is 128 operations)


class NodeStillAlive(ClusterError):
    status = 409
    code = "node_alive"


class NotWithEtcd(ClusterError):
    """A coordinator-backend operation sent to a sidecar whose registry is in etcd."""

    status = 409
    code = "registry_backend_etcd"


_NOT_WITH_ETCD = {
    "join": "nodes join by using the same etcd endpoints and prefix; there is nothing to join",
    "promote": "there are no coordinators; etcd keeps the registry",
    "replace": "`remove` the old node once its lease ended, and `adopt` its agents to the new one",
}


def refuse_with_etcd(app: web.Application, operation: str) -> None:
    if ETCD in app:
        raise NotWithEtcd(f"{operation}: registry_backend is etcd: {_NOT_WITH_ETCD[operation]}")


async def remove_node(backend: EtcdBackend, needle: str) -> dict[str, Any]:
    """`remove NODE`: forget a dead node (members/, its claims). Refused while the node
    holds a lease, since it would register again at once."""
    view = backend.app[keys.MEMBERSHIP].views.get(VIEW_NAME)
    peers = view.peers if view is not None else ()
    found = matches(peers, needle)
    if not found and needle in backend.cache.owners("claims").values():
        found = [needle]  # claims of a node that never registered
    if len(found) > 1:
        raise ValidationFailed(
            [f"{needle!r} matches several nodes ({', '.join(found)}); give the node id"]
        )
    if not found:
        return {"node": needle, "removed": False, "known": False}
    node_id = found[0]
    if node_id == backend.node_id:
        raise ValidationFailed(["a sidecar cannot remove itself; stop it, then remove it"])
    url = next((p.url for p in peers if p.node_id == node_id), None)
    node_key, member_key = backend.layout.node(node_id), backend.layout.member(node_id)
    released: list[str] = []
    for _attempt in range(3):
        claims = await backend.client.range(backend.layout.key("claims", ""), prefix=True)
        held = [kv for kv in claims.kvs if owner_of(kv.value) == node_id]
        # etcd allows 128 operations per txn; a node may hold up to 1,000 agents. Every
        # batch re-checks that the node is still dead and its claims unchanged.
        done = True
        for start in range(0, max(len(held), 1), TXN_BATCH):
            batch = held[start : start + TXN_BATCH]
            result = await backend.client.txn(
                [
                    Compare.absent(node_key),
                    *(Compare.unchanged(kv.key, kv.mod_revision) for kv in batch),
                ],
                [Delete(member_key), *(Delete(kv.key) for kv in batch)],
            )
            if not result.succeeded:
                done = False
                break
            released += [kv.key.rsplit("/", 1)[-1] for kv in batch]
        if done:
            agents = sorted(released)
            log.info("peer_removed", node_id=node_id, released=agents, backend="etcd")
            return {
                "node": needle,
                "node_id": node_id,
                "url": url,
                "removed": True,
                "known": True,
                "released_agents": agents,
                "warning": None,
            }
        if await backend.client.get(node_key) is not None:
            raise NodeStillAlive(
                f"node {node_id} is alive (it holds an etcd lease) and would register "
                "again; stop its sidecar first, then remove it"
            )
    raise EtcdRequestFailed(f"the records of {node_id} kept changing; try again")


async def set_adoption(backend: EtcdBackend, agent_id: str, node_id: str | None) -> dict[str, Any]:
    """Write (or clear, with None) the operator override adoptions/<agent>."""
    if agent_id == LOCAL_AGENT:
        raise ValidationFailed(["agent_id: `default` is local to every node"])
    view = backend.app[keys.MEMBERSHIP].views.get(VIEW_NAME)
    hosts = sorted(
        p.node_id for p in (view.peers if view else ()) if any(a.id == agent_id for a in p.agents)
    )
    if node_id is not None and node_id not in hosts:
        hint = f"nodes hosting it: {', '.join(hosts)}" if hosts else "no node hosts it"
        raise ValidationFailed([f"node {node_id!r} does not host agent {agent_id!r} ({hint})"])
    key = backend.layout.adoption(agent_id)
    if node_id is None:
        await backend.client.delete(key)
    else:
        await backend.client.put(key, encode(OwnerRecord(node_id=node_id, at=backend.clock.time())))
    log.info("agent_adopted", agent_id=agent_id, node_id=node_id, backend="etcd")
    return {"agent_id": agent_id, "adopted_by": node_id, "claimants": hosts}
