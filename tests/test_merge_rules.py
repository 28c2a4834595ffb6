"""The rules of the federated merge (signet_cluster.merge) that the property test does not pin:
what "the same content" means, and how equal ranks are ordered."""

from __future__ import annotations

from typing import Any

import pytest

from signet_cluster.merge import Leg, content_key, merge


def _ids(hits: list[dict[str, Any]]) -> list[Any]:
    return [hit["id"] for hit in hits]


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("Alpha", "alpha"),
        ("  Gamma \t  Ray\r\n", "gamma ray"),
        ("line one\r\nline two", "line one line two"),
        ("Done!?", "done"),
        ("wait …", "wait"),
        ("a, b; c:", "a, b; c"),
        ("...", None),
        ("   ", None),
    ],
)
def test_content_key_normalises_case_whitespace_and_trailing_punctuation(
    content: str, key: str | None
) -> None:
    """Rule: content is compared case-folded, with every run of whitespace (CRLF included)
    as one space, ends trimmed and trailing sentence punctuation dropped; text that is only
    punctuation or space has no key (it dedupes nothing)."""
    assert content_key({"content": content}) == key


def test_content_key_ignores_non_text() -> None:
    """Rule: a hit without string content has no content key."""
    assert content_key({"content": 5}) is None
    assert content_key({}) is None


def test_one_fact_on_two_nodes_shows_once() -> None:
    """Rule: hits whose normalised content is equal are duplicates; the better-ranked copy
    (the owner's at equal rank) stays."""
    owner = Leg("n2", "owner", [{"id": "o1", "content": "Bob likes tea ."}])
    other = Leg("n1", "contributor", [{"id": "c1", "content": "bob  LIKES tea"}])
    assert _ids(merge([other, owner], 10)) == ["o1"]


def test_daemon_score_breaks_ties_between_contributors() -> None:
    """Rule: at equal rank and role, the hit with the higher daemon score comes first (before
    node-id order); a missing or non-numeric score counts as 0."""
    low = Leg("a", "contributor", [{"id": "low", "content": "x", "score": 0.1}])
    high = Leg("b", "contributor", [{"id": "high", "content": "y", "score": 0.9}])
    assert _ids(merge([low, high], 10)) == ["high", "low"]
    unscored = Leg("a", "contributor", [{"id": "none", "content": "x"}])
    scored = Leg("b", "contributor", [{"id": "some", "content": "y", "score": 0.5}])
    assert _ids(merge([unscored, scored], 10)) == ["some", "none"]
    flagged = Leg("a", "contributor", [{"id": "bool", "content": "x", "score": True}])
    small = Leg("b", "contributor", [{"id": "small", "content": "y", "score": 0.5}])
    assert _ids(merge([flagged, small], 10)) == ["small", "bool"]
    negative = Leg("b", "contributor", [{"id": "neg", "content": "y", "score": -1}])
    text = Leg("c", "contributor", [{"id": "text", "content": "z", "score": "high"}])
    assert _ids(merge([negative, text], 10)) == ["text", "neg"]


def test_equal_scores_fall_back_to_node_id() -> None:
    """Rule: at equal rank, role and score, the smaller node id comes first."""
    b = Leg("b", "contributor", [{"id": "from-b", "content": "x", "score": 0.5}])
    a = Leg("a", "contributor", [{"id": "from-a", "content": "y", "score": 0.5}])
    assert _ids(merge([b, a], 10)) == ["from-a", "from-b"]


def test_a_leg_of_unknown_role_sorts_after_owner_and_contributors() -> None:
    """Rule: a leg whose role is neither owner nor contributor ranks after both at equal
    rank (and does not break the merge)."""
    odd = Leg("a", "observer", [{"id": "odd", "content": "x"}])
    contributor = Leg("b", "contributor", [{"id": "con", "content": "y"}])
    owner = Leg("c", "owner", [{"id": "own", "content": "z"}])
    assert _ids(merge([odd, contributor, owner], 10)) == ["own", "con", "odd"]


def test_memory_id_decides_the_last_tie() -> None:
    """Rule: the order is total: two lists from the same node and role (equal rank and
    score) are ordered by memory id, whichever list arrives first."""
    first = Leg("n", "contributor", [{"id": "m2", "content": "x", "score": 0.5}])
    second = Leg("n", "contributor", [{"id": "m1", "content": "y", "score": 0.5}])
    assert _ids(merge([first, second], 10)) == ["m1", "m2"]
    assert _ids(merge([second, first], 10)) == ["m1", "m2"]


def test_hits_equal_in_every_sort_field_merge_without_error() -> None:
    """Rule: two copies of a memory from one node at the same rank and score (a list sent
    twice, perhaps with edited content) never break the merge; the id shows once."""
    old = Leg("n", "contributor", [{"id": "m1", "content": "before"}])
    new = Leg("n", "contributor", [{"id": "m1", "content": "after"}])
    assert _ids(merge([old, new], 10)) == ["m1"]
    assert _ids(merge([old, old], 10)) == ["m1"]
