"""A stand-in for the Signet daemon: same paths, shapes and read policies, three flavors.

Tests, benchmarks and ``signet-cluster demo`` run on it; its fidelity is checked against
responses recorded from real daemons (``tests/golden/``).

May import: `signet_cluster` (core, `daemon.roster`). Nothing in `sidecar` imports it: it is
a separate program that only speaks HTTP to the sidecar, as a real daemon does.
"""

from .app import make_devdaemon_app, serve_devdaemon
from .config import DEFAULT_VERSIONS, FAIL_MODES, FLAVORS, DevDaemonConfig

__all__ = [
    "DEFAULT_VERSIONS",
    "FAIL_MODES",
    "FLAVORS",
    "DevDaemonConfig",
    "make_devdaemon_app",
    "serve_devdaemon",
]
