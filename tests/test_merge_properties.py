"""Merge of federated hit lists (signet_cluster.merge) under random inputs: no duplicates,
at most `limit`, deterministic whatever order the lists arrive in, nothing invented."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from signet_cluster.merge import Leg, content_key, merge

_hit = st.fixed_dictionaries(
    {
        "id": st.sampled_from([f"m{i}" for i in range(12)]),
        "content": st.sampled_from(["Alpha", "alpha.", "beta", "Gamma  ray", "gamma ray", "delta"]),
        "score": st.one_of(st.floats(0, 1), st.none(), st.integers(-5, 5)),
    }
)
_legs = st.lists(
    st.tuples(st.sampled_from(["owner", "contributor"]), st.lists(_hit, max_size=8)),
    max_size=5,
).map(lambda specs: [Leg(f"n{i}", role, hits) for i, (role, hits) in enumerate(specs)])


@settings(max_examples=300, deadline=None)
@given(legs=_legs, limit=st.integers(1, 15), data=st.data())
def test_merge_properties(legs: list[Leg], limit: int, data: st.DataObject) -> None:
    """No two hits share an id or normalised content; at most `limit`; the same result for
    any order of the legs; every hit is one of the inputs; each leg's own order is kept;
    and the list is only short when the inputs run out of distinct hits."""
    out = merge(legs, limit)
    ids = [hit["id"] for hit in out]
    contents = [content_key(hit) for hit in out]
    assert len(ids) == len(set(ids)) and len(contents) == len(set(contents))
    assert len(out) <= limit
    shuffled = data.draw(st.permutations(legs))
    assert merge(shuffled, limit) == out
    inputs = [hit for leg in legs for hit in leg.hits]
    assert all(any(hit is given_hit for given_hit in inputs) for hit in out)
    for leg in legs:
        positions = [i for i, hit in enumerate(out) if any(hit is h for h in leg.hits)]
        order = [next(j for j, h in enumerate(leg.hits) if h is out[i]) for i in positions]
        assert order == sorted(order)
    distinct: set[Any] = set()
    for hit in inputs:
        distinct.add(hit["id"])
    if len(out) < limit:
        # Short only because every further hit duplicates one already chosen.
        chosen_ids, chosen_content = set(ids), set(contents)
        assert all(h["id"] in chosen_ids or content_key(h) in chosen_content for h in inputs)


def test_owner_wins_ties_and_ranks_interleave() -> None:
    """Equal ranks: the owner's hit first; then lists interleave by rank (RRF)."""
    owner = Leg("b", "owner", [{"id": "o1", "content": "x1"}, {"id": "o2", "content": "x2"}])
    other = Leg("a", "contributor", [{"id": "c1", "content": "y1"}, {"id": "c2", "content": "y2"}])
    assert [h["id"] for h in merge([other, owner], 10)] == ["o1", "c1", "o2", "c2"]
    assert [h["id"] for h in merge([other, owner], 3)] == ["o1", "c1", "o2"]
