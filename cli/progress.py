"""Progress lines for operations that take a while, on stderr so stdout stays the result.

On a terminal the line shows a spinner and the elapsed time while it runs; elsewhere (logs,
CI, pipes) it is written once when it starts and completed once when it ends.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from .client import EXIT_DEGRADED, CliError, SidecarClient

SPINNER = "|/-\\"


class Progress:
    def __init__(self, message: str, stream: TextIO | None = None) -> None:
        self.message = message
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.started = time.monotonic()
        self.ticks = 0
        self.stream.write(f"{message} ..." + ("" if self.terminal else "\n"))
        self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def tick(self) -> None:
        if self.terminal:
            self.ticks += 1
            spin = SPINNER[self.ticks % len(SPINNER)]
            self.stream.write(f"\r{self.message} ... {spin} {self.elapsed:.1f}s")
            self.stream.flush()

    def done(self, result: str) -> None:
        text = f"{result} ({self.elapsed:.1f}s)"
        if self.terminal:
            self.stream.write(f"\r{self.message} ... {text}\x1b[K\n")
        else:
            self.stream.write(f"{self.message}: {text}\n")
        self.stream.flush()


async def wait_until_alive(
    client: SidecarClient, node_id: str, timeout: float, interval: float = 0.2
) -> float:
    """Poll the cluster status until `node_id` is alive; returns the seconds it took.
    Raises CliError (exit 3, degraded) when it is not alive within `timeout`."""
    progress = Progress(f"waiting for {node_id} to heartbeat to the coordinators")
    deadline = time.monotonic() + timeout
    last = "not listed yet"
    while True:
        answer = await client.call("GET", "/api/cluster/status")
        if answer.status == 200 and isinstance(answer.body, dict):
            state = next(
                (
                    n.get("state")
                    for n in answer.body.get("nodes", [])
                    if n.get("node_id") == node_id
                ),
                None,
            )
            if state == "alive":
                progress.done("alive")
                return progress.elapsed
            last = f"state {state}" if state else "not listed yet"
        else:
            last = f"status answered {answer.status}"
        if time.monotonic() >= deadline:
            progress.done(f"gave up: {last}")
            raise CliError(
                f"{node_id} joined but is not alive after {timeout:g}s ({last}); "
                "see `signet-cluster status` and the node's log",
                EXIT_DEGRADED,
            )
        progress.tick()
        await asyncio.sleep(interval)
