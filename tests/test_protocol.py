"""Protocol messages: negotiation, tolerant parsing of newer peers, readable errors."""

from __future__ import annotations

from typing import Any

import pytest

from signet_cluster.converter import structure, unstructure
from signet_cluster.errors import ValidationFailed
from signet_cluster.protocol import AgentInfo, DaemonInfo, Heartbeat, ProtocolRange


def heartbeat_dict(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = unstructure(
        Heartbeat(
            protocol=ProtocolRange.ours(),
            node_id="n1",
            instance_id="i",
            url="http://127.0.0.1:3860",
            sidecar_version="0.1.0",
            daemon=DaemonInfo(flavor="ts", version="0.145.7", healthy=True),
            agents=(AgentInfo(id="alice", read_policy="isolated"),),
            seq=1,
            sent_at=1.0,
        )
    )
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        ((1, 1), (1, 1), 1),
        ((1, 3), (2, 5), 3),
        ((1, 1), (2, 3), None),
        ((2, 3), (1, 1), None),
        ((1, 4), (1, 2), 2),
    ],
)
def test_negotiation_picks_highest_common(
    ours: tuple[int, int], theirs: tuple[int, int], expected: int | None
) -> None:
    """The highest version in both ranges, or none."""
    a = ProtocolRange(min=ours[0], max=ours[1])
    b = ProtocolRange(min=theirs[0], max=theirs[1])
    assert a.negotiate(b) == expected
    assert b.negotiate(a) == expected


def test_unknown_fields_from_newer_peers_are_tolerated() -> None:
    """A heartbeat with fields this build does not know still parses."""
    body = heartbeat_dict(future_field={"x": 1})
    body["daemon"]["gpu"] = True
    assert structure(body, Heartbeat).node_id == "n1"


def test_round_trip() -> None:
    """unstructure then structure gives the same message."""
    body = heartbeat_dict()
    assert unstructure(structure(body, Heartbeat)) == body


def test_every_problem_listed_with_its_path() -> None:
    """Several bad fields give one readable problem each, naming the field."""
    body = heartbeat_dict(node_id="bad id", url="ftp://x", seq=-1)
    body["agents"] = [{"id": "a", "read_policy": "nope"}, {"id": "a", "read_policy": "shared"}]
    with pytest.raises(ValidationFailed) as info:
        structure(body, Heartbeat)
    text = "\n".join(info.value.problems)
    for path in (
        "body.node_id",
        "body.url",
        "body.seq",
        "body.agents[0].read_policy",
        "body.agents",
    ):
        assert path in text
    assert "listed twice" in text


def test_wrong_types_are_not_coerced() -> None:
    """`seq: "1"` is an error, not silently turned into 1."""
    with pytest.raises(ValidationFailed, match="expected an integer"):
        structure(heartbeat_dict(seq="1"), Heartbeat)
    with pytest.raises(ValidationFailed, match="required field missing"):
        body = heartbeat_dict()
        del body["node_id"]
        structure(body, Heartbeat)
