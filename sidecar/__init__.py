"""The signet-cluster sidecar: an aiohttp service next to one Signet daemon.

Packages, lowest layer first (ARCHITECTURE.md has the map and the life of a request):
`membership` (who is in the cluster), `security` (who may call), `etcd` (the etcd registry
backend), `memory` (the daemon's API: serving, forwarding, spooling), `federation` (reads
that span nodes), `pipeline` (the memory API's request path, step by step), `control` (the
cluster API), `ops` (metrics, health, the topology page). Top-level modules: `keys` (typed
app keys), `bodies`, `middlewares` (shared by every layer), `app` and `runner` (wiring).

May import: `signet_cluster` (never `signet_cluster.devdaemon`); each package only the
packages before it in the list above (tests/test_layering.py).
"""
