"""Operating a sidecar: Prometheus metrics, liveness and readiness (health), the OpenAPI
document of the cluster API, and the live topology page with its static files.

May import: every sidecar package (it only observes them) and `signet_cluster`.
"""
