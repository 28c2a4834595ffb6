"""The one logging configuration point: structlog for our events, stdlib loggers (aiohttp)
routed through the same processors. Console output on a terminal, JSON lines otherwise.

Whatever a client can put in a log line is bounded here, because a log is a resource an
attacker can fill: every string field is cut to `MAX_FIELD_CHARS`, a malformed request
(aiohttp's "Error handling request") is one short line without the traceback that would
quote the request, and repeated warnings and errors (refused requests, accept failures)
are rate-limited per kind, with the number left out reported on the next line let through
(the sidecar's own events, such as a peer going down, are never dropped).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp.http_exceptions import BadHttpMessage

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Longer string values are cut: a path, a header or a node id from a request is at most
# max_header_bytes (8 KiB by default), and 200 bad requests a second must not be 1.6 MB/s.
MAX_FIELD_CHARS = 300
# Per kind of warning or error a client can cause: at most BURST lines per WINDOW seconds.
BURST = 10
WINDOW = 10.0
# Our events that a request from outside can trigger at will (by reason); every other event
# of ours is the sidecar's own doing and is never dropped. Lines from other libraries
# (aiohttp's server, asyncio's accept errors) are limited by their message.
REQUEST_EVENTS = frozenset(
    {"request_refused", "request_failed", "request_crashed", "spool_full", "spool_disk_full"}
)


def truncate(value: str, limit: int = MAX_FIELD_CHARS) -> str:
    if len(value) <= limit:
        return value
    return f"{value[:limit]}…(+{len(value) - limit} chars)"


def truncate_fields(_logger: Any, _method: str, event_dict: Any) -> Any:
    """Processor: cut every long string value (the event name included)."""
    for key, value in event_dict.items():
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS and not key.startswith("_"):
            event_dict[key] = truncate(value)
    return event_dict


class LogGuard(logging.Filter):
    """A handler filter: short lines for malformed requests, and a rate limit per kind of
    warning or error (info and debug lines are never dropped)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        # kind -> [window start, lines let through in it, lines dropped since the last one]
        self._kinds: dict[tuple[str, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            # aiohttp quotes the offending bytes in the exception: never log them.
            record.msg = (
                f"malformed_request: {type(exc).__name__} {exc.code}: "
                f"{truncate(str(exc.message).split(':', 1)[0], 120)}"
            )
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        if record.levelno < logging.WARNING:
            return True
        if isinstance(record.msg, dict) and record.msg.get("event") not in REQUEST_EVENTS:
            return True
        kind = (record.name, _kind_of(record))
        now = self._clock()
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= WINDOW:
            dropped = int(state[2]) if state is not None else 0
            self._kinds[kind] = [now, 1, 0]
            if len(self._kinds) > 10_000:  # a bound on the bookkeeping itself
                self._kinds = {kind: self._kinds[kind]}
            if dropped:
                _note_suppressed(record, dropped)
            return True
        if state[1] < BURST:
            state[1] += 1
            return True
        state[2] += 1
        return False


def _kind_of(record: logging.LogRecord) -> str:
    msg = record.msg
    if isinstance(msg, dict):  # a structlog event: its name and reason, if any
        return f"{msg.get('event')}:{msg.get('reason', '')}"[:200]
    return str(msg)[:80]


def _note_suppressed(record: logging.LogRecord, dropped: int) -> None:
    if isinstance(record.msg, dict):
        record.msg = {**record.msg, "suppressed_before": dropped}
    else:
        record.msg = f"{record.msg} ({dropped} similar lines suppressed before this one)"


# syslog priorities (sd-daemon(3)): journald reads a `<N>` line prefix as the priority, so
# `journalctl -p warning` shows what needs an operator.
_PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2, "exception": 3}


def stderr_is_journal() -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM to its
    device:inode); a terminal or a pipe elsewhere gets no prefixes."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":", 1))
        stat = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)


class JournalFormatter(logging.Formatter):
    """Wraps the structlog formatter and prefixes each line with `<priority>`."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITIES.get(record.levelname.lower(), 6)
        return "\n".join(f"<{priority}>{line}" for line in self.inner.format(record).split("\n"))


def configure_logging(level: str = "info", fmt: str = "auto") -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        truncate_fields,
    ]
    renderer: structlog.types.Processor = (
        # Plain tracebacks: the rich formatter would print local variables, which in the
        # signing code include key material.
        structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([] if use_console else [structlog.processors.format_exc_info]),
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(formatter) if stderr_is_journal() else formatter)
    handler.addFilter(LogGuard())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # aiohttp's access log is one line per request: useful at debug, noise otherwise.
    logging.getLogger("aiohttp.access").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )
