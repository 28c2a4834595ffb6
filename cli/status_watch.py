"""`status --watch`: the status view redrawn in place every few seconds until Ctrl-C.

On a terminal each frame overwrites the previous one (cursor home, clear to end of line and
of screen: no flicker, no scrollback spam); piped, frames follow each other separated by a
blank line; with `--json`, one compact JSON document per line (NDJSON) for scripts.
A sidecar that stops answering is shown in the frame and retried; it does not end the watch.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

import click
from click.core import ParameterSource

from .client import EXIT_DEGRADED, EXIT_OK, CliError, SidecarClient, get_status
from .render import render_status, screen_width, status_problems, use_colour

F = TypeVar("F", bound=Callable[..., Any])

HOME, CLEAR_LINE, CLEAR_BELOW, CLEAR_SCREEN = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[2J"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def watch_options(fn: F) -> F:
    options = [
        click.option(
            "--watch",
            "-w",
            is_flag=True,
            help="Redraw every --interval seconds until Ctrl-C (exit 0); with --json, one "
            "JSON document per line.",
        ),
        click.option(
            "--interval",
            type=click.FloatRange(min=0.1),
            default=2.0,
            show_default=True,
            help="Seconds between refreshes with --watch.",
        ),
        click.option(
            "--count",
            type=click.IntRange(min=1),
            default=None,
            help="With --watch: stop after this many refreshes and exit with the last one's code.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


async def fetch(client: SidecarClient) -> tuple[int, dict[str, Any] | None, str | None]:
    """(exit code, status body, error line) for one refresh."""
    try:
        body = await get_status(client)
    except CliError as exc:
        return exc.exit_code, None, exc.message
    return (EXIT_DEGRADED if status_problems(body) else EXIT_OK), body, None


def frame_text(
    sidecar: str,
    interval: float,
    body: dict[str, Any] | None,
    error: str | None,
    *,
    colour: bool = False,
) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    header = f"signet-cluster status  {sidecar}  every {interval:g}s  {stamp}  (Ctrl-C to quit)"
    if body is None:
        return header + "\n\n" + f"error: {error}"
    # Problems come first in the view, so a frame cut to the terminal keeps them.
    return header + "\n\n" + render_status(body, width=screen_width(), colour=colour)


def check_watch_options(ctx: click.Context, watch: bool) -> None:
    """--interval and --count only mean something with --watch: say so instead of ignoring."""
    if watch:
        return
    for name in ("interval", "count"):
        if ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT):
            raise click.UsageError(f"--{name} needs --watch")


def fit(text: str, size: os.terminal_size) -> list[str]:
    """The frame's lines, cut to what the terminal shows: a frame taller than the screen
    would scroll, and going back to the top would then overwrite the wrong rows."""
    lines = text.split("\n")
    rows = max(2, size.lines - 1)  # the cursor rests on the row after the frame
    columns = max(20, size.columns)
    # Wrapped rows, counting only visible characters (colour codes take no room).
    heights = [max(1, -(-len(ANSI.sub("", line)) // columns)) for line in lines]
    if sum(heights) <= rows:
        return lines
    shown: list[str] = []
    used = 0
    for line, height in zip(lines, heights, strict=True):
        if used + height > rows - 1:  # keep a row for the note
            break
        shown.append(line)
        used += height
    note = f"... {len(lines) - len(shown)} more line(s): enlarge the terminal, or use --json"
    return [*shown, note[:columns]]


def draw(out: TextIO, text: str, *, terminal: bool, first: bool) -> None:
    if terminal:
        lines = fit(text, shutil.get_terminal_size())
        prefix = CLEAR_SCREEN + HOME if first else HOME
        out.write(prefix + "".join(line + CLEAR_LINE + "\n" for line in lines) + CLEAR_BELOW)
    else:
        out.write(("" if first else "\n") + text + "\n")
    out.flush()


async def _watch(
    client: SidecarClient, *, as_json: bool, interval: float, count: int | None, out: TextIO
) -> int:
    terminal = out.isatty() and not as_json
    code = EXIT_OK
    shown = 0
    while count is None or shown < count:
        started = time.monotonic()
        code, body, error = await fetch(client)
        if as_json:
            line = body if body is not None else {"error": error, "exit_code": code}
            out.write(json.dumps(line, sort_keys=True) + "\n")
            out.flush()
        else:
            draw(
                out,
                frame_text(client.base_url, interval, body, error, colour=use_colour(out)),
                terminal=terminal,
                first=shown == 0,
            )
        shown += 1
        if count is not None and shown >= count:
            break
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    return code


def watch_status(
    client: SidecarClient, *, as_json: bool, interval: float, count: int | None
) -> int:
    """Run the watch; the exit code of the last refresh, or 0 when stopped with Ctrl-C."""
    try:
        return asyncio.run(
            _watch(client, as_json=as_json, interval=interval, count=count, out=sys.stdout)
        )
    except KeyboardInterrupt:
        # Leave the last frame on screen and the prompt on a fresh line.
        sys.stdout.write("\n")
        return EXIT_OK
