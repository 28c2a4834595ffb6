"""Merging the hit lists of several nodes into one answer (federated recall and search).

Strategy: reciprocal-rank fusion (Cormack et al., 2009). Each hit scores ``1 / (k + rank)``
with its 1-based rank in its own node's list and ``k = 60``; scores of different daemons
are not comparable (each ranks against its own corpus), ranks are. Hits are ordered by that
score, then the owner's list before contributors', then the daemon's own score, node id and
memory id, so equal inputs always give the same order whatever order the lists arrive in.
Duplicates are dropped after ordering (the better-ranked copy stays): the same memory id,
or the same normalised content (one fact recorded on two nodes shows once). At most
``limit`` hits are returned.

Pure functions; property-tested with hypothesis (tests/test_merge_properties.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import attrs

RRF_K = 60
_WS = re.compile(r"\s+")
_TRAILING_PUNCT = re.compile(r"[.!?,;:…]+$")
_ROLE_ORDER = {"owner": 0, "contributor": 1}


@attrs.frozen
class Leg:
    """One node's hits, best first, as that node returned them."""

    node_id: str
    role: str  # "owner" | "contributor"
    hits: Sequence[dict[str, Any]]


def content_key(hit: dict[str, Any]) -> str | None:
    content = hit.get("content")
    if not isinstance(content, str):
        return None
    # `\s` covers CR and LF, so a CRLF is one run of whitespace like any other.
    text = _WS.sub(" ", content.strip().lower())
    return _TRAILING_PUNCT.sub("", text).strip() or None


def _score(hit: dict[str, Any]) -> float:
    value = hit.get("score")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


def merge(legs: Sequence[Leg], limit: int, k: int = RRF_K) -> list[dict[str, Any]]:
    ranked: list[tuple[tuple[float, int, float, str, str], dict[str, Any]]] = []
    for leg in legs:
        role = _ROLE_ORDER.get(leg.role, len(_ROLE_ORDER))
        for rank, hit in enumerate(leg.hits, start=1):
            key = (-1.0 / (k + rank), role, -_score(hit), leg.node_id, str(hit.get("id")))
            ranked.append((key, hit))
    ranked.sort(key=lambda item: item[0])
    seen_ids: set[str] = set()
    seen_content: set[str] = set()
    out: list[dict[str, Any]] = []
    for _key, hit in ranked:
        if len(out) >= limit:
            break
        hit_id = str(hit.get("id"))
        content = content_key(hit)
        if hit_id in seen_ids or (content is not None and content in seen_content):
            continue
        seen_ids.add(hit_id)
        if content is not None:
            seen_content.add(content)
        out.append(hit)
    return out
