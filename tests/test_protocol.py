"""Protocol messages: negotiation, tolerant parsing of newer peers, readable errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from signet_cluster.admin import AdminState
from signet_cluster.converter import structure, structure_json, unstructure
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


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(raw: str) -> None:
    """Python's JSON parser accepts NaN and Infinity; on the wire they are an error (a NaN
    would make every comparison false, and browsers cannot parse a status that carries it)."""
    body = json.dumps(heartbeat_dict(sent_at=0.5)).replace("0.5", raw)
    with pytest.raises(ValidationFailed, match="finite") as info:
        structure_json(body, Heartbeat)
    assert "body.sent_at" in "\n".join(info.value.problems)


def test_admin_decisions_are_validated_like_every_message() -> None:
    """A replicated operator decision names a real node id, agent id and http(s) URL, at a
    finite time: anything else is refused with every problem listed, never merged."""
    bad = {
        "nodes": [{"node_id": "bad id", "url": "javascript:alert(1)", "state": "joined", "at": 1}],
        "adoptions": [{"agent_id": "a b", "node_id": "", "at": 1}],
    }
    with pytest.raises(ValidationFailed) as info:
        structure(bad, AdminState)
    text = "\n".join(info.value.problems)
    for path in (
        "body.nodes[0].node_id",
        "body.nodes[0].url",
        "body.adoptions[0].agent_id",
        "body.adoptions[0].node_id",
    ):
        assert path in text, text
    with pytest.raises(ValidationFailed, match="finite"):
        structure_json(
            '{"nodes": [{"node_id": "n", "url": null, "state": "removed", "at": Infinity}]}',
            AdminState,
        )
    good = {
        "nodes": [{"node_id": "n1", "url": "http://10.0.0.5:3860", "state": "joined", "at": 1.0}],
        "adoptions": [{"agent_id": "alice", "node_id": None, "at": 2.0}],
        "claims": [
            {"agent_id": "alice", "node_id": "n1", "since": 1.5, "at": 1.5},
            {"agent_id": "alice", "node_id": "n2", "since": None, "at": 3.0},
        ],
    }
    assert unstructure(structure(good, AdminState)) == good


def test_deeply_nested_json_is_a_clear_400() -> None:
    """A body nested deeper than the parser can follow is refused as bad input, not a crash."""
    from signet_cluster.converter import structure_json

    with pytest.raises(ValidationFailed, match="nested too deeply"):
        structure_json(b"[" * 100_000 + b"]" * 100_000, Heartbeat)
    with pytest.raises(ValidationFailed, match="nested too deeply"):
        structure_json(b'{"protocol": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001, Heartbeat)
