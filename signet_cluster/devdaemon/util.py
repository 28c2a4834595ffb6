"""Small pure helpers: timestamps, content normalisation, chunking, FTS queries."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

import attrs

_WS = re.compile(r"\s+")
_TRAILING_PUNCT = re.compile(r"[.!?,;:…]+$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"\w+", re.UNICODE)


class Clock:
    """Strictly increasing wall-clock timestamps for one daemon.

    The real daemon stamps rows with the current millisecond; two writes in the same
    millisecond would then tie and order by random id. Bumping by one tick keeps
    ``created_at`` order equal to write order, so tests see deterministic orderings.
    """

    def __init__(self, rust: bool) -> None:
        self._rust = rust
        self._last: datetime | None = None

    def now(self) -> str:
        tick = timedelta(microseconds=1) if self._rust else timedelta(milliseconds=1)
        current = datetime.now(UTC)
        if not self._rust:
            current = current.replace(microsecond=current.microsecond // 1000 * 1000)
        if self._last is not None and current <= self._last:
            current = self._last + tick
        self._last = current
        return format_ts(current, rust=self._rust)


def format_ts(moment: datetime, *, rust: bool) -> str:
    """``toISOString()`` (TS: ms and ``Z``) or chrono ``to_rfc3339()`` (Rust: ``+00:00``)."""
    if rust:
        return moment.isoformat(timespec="microseconds")
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sqlite_now() -> str:
    """``datetime('now')`` format, as the daemon stores ``last_accessed``."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


def storage_content(content: str) -> str:
    """Content as stored: CRLF folded to LF and trimmed."""
    return content.replace("\r\n", "\n").strip()


def normalize_for_hash(content: str) -> str:
    """The daemon's dedupe normalisation: CRLF→LF, trim, lower-case, collapse whitespace,
    strip trailing punctuation."""
    text = _WS.sub(" ", content.replace("\r\n", "\n").strip().lower())
    return _TRAILING_PUNCT.sub("", text).strip()


def content_hash(content: str) -> str:
    return hashlib.sha256(normalize_for_hash(content).encode("utf-8")).hexdigest()


_TAG_PREFIX = re.compile(r"^\[([^\]]+)\]:\s*(.+)$", re.DOTALL)


@attrs.frozen(kw_only=True)
class Prefixed:
    """What the TS daemon's ``parsePrefixes`` reads off the front of remembered content:
    ``critical:`` pins it at importance 1.0, ``[a, b]:`` tags it. The body's own
    ``importance``, ``pinned`` and ``tags`` win over these."""

    content: str
    tags: str | None = None
    pinned: bool = False
    importance: float = 0.8


def parse_prefixes(raw: str) -> Prefixed:
    content, pinned, importance = raw.strip(), False, 0.8
    if content.lower().startswith("critical:"):
        content, pinned, importance = content[len("critical:") :].strip(), True, 1.0
    tags = None
    match = _TAG_PREFIX.match(content)
    if match:
        names = (tag.strip().lower() for tag in match.group(1).split(","))
        tags = ",".join(name for name in names if name)
        content = match.group(2).strip()
    return Prefixed(content=content, tags=tags, pinned=pinned, importance=importance)


def infer_type(content: str) -> str:
    """A tiny stand-in for the TS daemon's type inference from content."""
    lowered = content.lower()
    if "prefer" in lowered:
        return "preference"
    if "decided" in lowered or "we chose" in lowered:
        return "decision"
    return "fact"


def chunk_content(content: str, target: int) -> list[str]:
    """Split long content on sentence ends, packing sentences up to ``target`` characters.

    A sentence longer than ``target`` is split on word boundaries.
    """
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(content.strip()):
        if len(sentence) <= target:
            pieces.append(sentence)
            continue
        line = ""
        for word in sentence.split():
            if line and len(line) + 1 + len(word) > target:
                pieces.append(line)
                line = word
            else:
                line = f"{line} {word}" if line else word
        if line:
            pieces.append(line)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > target:
            chunks.append(current)
            current = piece
        else:
            current = f"{current} {piece}" if current else piece
    if current:
        chunks.append(current)
    return [chunk for chunk in chunks if chunk.strip()]


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression for free text: every word quoted, OR-ed (keyword recall).

    Quoting keeps user input from being parsed as FTS syntax. ``None`` when the text has
    no words at all.
    """
    words = _WORD.findall(text.lower())
    if not words:
        return None
    return " OR ".join(f'"{word}"' for word in dict.fromkeys(words))


def session_agent(session_key: str | None) -> str | None:
    """The agent of an OpenClaw-style ``agent:<id>:<rest>`` session key."""
    if not session_key:
        return None
    parts = session_key.split(":", 2)
    if len(parts) < 2 or parts[0] != "agent":
        return None
    agent = parts[1].strip()
    return agent or None


def parse_tags(value: object) -> tuple[bool, str | None]:
    """Tags as a CSV string: accepts a string, a list of strings or null."""
    if value is None:
        return True, None
    if isinstance(value, str):
        tags = [tag.strip() for tag in value.split(",") if tag.strip()]
    elif isinstance(value, list) and all(isinstance(tag, str) for tag in value):
        tags = [tag.strip() for tag in value if tag.strip()]
    else:
        return False, None
    return True, (",".join(tags) if tags else None)


def as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def text_or_none(value: object) -> str | None:
    """A trimmed non-empty string, else None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None
