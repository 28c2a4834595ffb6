"""Parsing cluster messages from untrusted bytes (hypothesis): anything at all either becomes
a message or a ValidationFailed listing readable problems; valid messages round-trip, with
unknown fields from newer peers ignored."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signet_cluster.admin import AdminState
from signet_cluster.converter import structure, structure_json, unstructure
from signet_cluster.errors import ConfigError, ValidationFailed
from signet_cluster.protocol import (
    AdoptRequest,
    AgentInfo,
    CoordinatorsUpdate,
    DaemonInfo,
    Heartbeat,
    JoinRequest,
    PromoteRequest,
    ProtocolRange,
)
from signet_cluster.security.keyring import parse_keyring

MESSAGES = [Heartbeat, JoinRequest, AdoptRequest, PromoteRequest, CoordinatorsUpdate, AdminState]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)


@settings(max_examples=300)
@given(st.sampled_from(MESSAGES), json_values)
def test_any_json_is_a_message_or_a_listed_problem(cls: type[Any], data: Any) -> None:
    """Arbitrary JSON never escapes as anything but ValidationFailed, whose problems are
    non-empty readable lines."""
    problems: list[str] | None = None
    try:
        structure(data, cls)
    except ValidationFailed as exc:
        problems = exc.problems
    if problems is not None:
        assert problems and all(isinstance(p, str) and p for p in problems)


@given(st.binary(max_size=300))
def test_any_bytes_are_a_heartbeat_or_a_listed_problem(raw: bytes) -> None:
    """Random bytes as a heartbeat body: invalid JSON and invalid messages alike become
    ValidationFailed."""
    with pytest.raises(ValidationFailed):
        structure_json(raw, Heartbeat)


agent_ids = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z")
heartbeats = st.builds(
    Heartbeat,
    protocol=st.just(ProtocolRange(min=1, max=1)),
    node_id=st.from_regex(r"\A[a-z][a-z0-9.-]{0,20}\Z"),
    instance_id=st.text(max_size=40),
    url=st.integers(1, 65535).map(lambda p: f"http://127.0.0.1:{p}"),
    sidecar_version=st.text(max_size=10),
    daemon=st.builds(DaemonInfo, flavor=st.sampled_from(["ts", "rust", "ts-legacy", "unknown"])),
    agents=st.lists(
        st.builds(
            AgentInfo, id=agent_ids, read_policy=st.sampled_from(["isolated", "shared", "group"])
        ),
        max_size=5,
        unique_by=lambda a: a.id,
    ).map(tuple),
    seq=st.integers(0, 2**40),
    sent_at=st.floats(0, 2e9),
)


@given(
    heartbeats,
    st.dictionaries(
        st.text(min_size=1, max_size=10).map(lambda k: "x_" + k), json_values, max_size=3
    ),
)
def test_valid_heartbeats_round_trip_and_tolerate_new_fields(
    heartbeat: Heartbeat, extra: dict[str, Any]
) -> None:
    """A valid heartbeat survives JSON and back unchanged, also when a newer peer adds
    fields this version does not know."""
    body = {**unstructure(heartbeat), **extra}
    assert structure_json(json.dumps(body), Heartbeat) == heartbeat


@given(json_values)
def test_keyring_documents_never_leak_or_crash(data: Any) -> None:
    """Any JSON as a keyring file is a keyring or a ConfigError; the error text never quotes
    a secret value."""
    try:
        parse_keyring(data, "k.json")
    except ConfigError as exc:
        text = " ".join(exc.problems)
        if isinstance(data, dict):
            for entry in data.get("keys") or []:
                secret = entry.get("secret") if isinstance(entry, dict) else None
                if isinstance(secret, str) and len(secret) > 3:
                    assert secret not in text
