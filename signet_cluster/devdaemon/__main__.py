"""``python -m signet_cluster.devdaemon --port P --path DIR --flavor F``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .app import run_devdaemon
from .config import FAIL_MODES, FLAVORS, DevDaemonConfig


def parse_args(argv: list[str] | None = None) -> DevDaemonConfig:
    parser = argparse.ArgumentParser(
        prog="python -m signet_cluster.devdaemon",
        description="Run a stand-in Signet daemon (dev daemon) on a workspace.",
    )
    parser.add_argument("--path", type=Path, required=True, help="workspace (SIGNET_PATH)")
    parser.add_argument("--port", type=int, default=3850, help="TCP port (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument("--flavor", choices=FLAVORS, default="ts", help="daemon to imitate")
    parser.add_argument("--version", dest="version", default=None, help="version to report")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay added to every request but /health"
    )
    parser.add_argument(
        "--fail", choices=FAIL_MODES, default="none", help="make memory routes fail or hang"
    )
    parser.add_argument(
        "--recall-cost",
        choices=("off", "real"),
        default="off",
        help="make recall cost what a real 0.145.7 daemon's does (CPU per call and row, "
        "response size); off: the dev daemon's own cost",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port: {args.port} is not a TCP port (0-65535)")
    try:
        return DevDaemonConfig(
            path=args.path,
            flavor=args.flavor,
            host=args.host,
            port=args.port,
            version=args.version,
            latency_ms=args.latency_ms,
            fail=args.fail,
            recall_cost=args.recall_cost,
        )
    except ValueError as exc:  # the config's own checks (e.g. a negative latency)
        parser.error(str(exc))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        run_devdaemon(config, lambda line: print(line, flush=True))
    except OSError as exc:
        print(f"devdaemon: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
