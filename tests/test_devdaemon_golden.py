"""Fidelity of the dev daemon against responses recorded from real Signet daemons.

Each recorded call is replayed in the order of the original run (reconstructed from the
memories' ``created_at``, the agents' ``updated_at`` and the access counts in the
recordings: writes first, then reads, then modify/forget and the reads after them) and
the dev daemon must answer with the same status, the same keys and JSON kinds, and the
same visible memory set (recorded ids mapped to ours through the write that created them).
"""

from __future__ import annotations

from pathlib import Path

from .devdaemon_helpers import (
    GOLDEN_ROSTER,
    ClientFactory,
    call,
    load_golden,
    memory_ids,
    replay,
    shape_diff,
    start_daemon,
)

# Deliberate differences, per recording: JSON paths whose shape is not compared, and why.
TS_ALLOW: dict[str, tuple[str, ...]] = {
    # The daemon's whole pipeline configuration (~30 nested blocks); the dev daemon
    # reports only the enable flags and the guardrails that drive chunking/truncation.
    "GET_api_status__full": ("pipelineV2",),
}
LEGACY_ALLOW = TS_ALLOW

TS_ORDER = [
    # start-up reads
    "GET_health",
    "GET_api_status",
    "GET_api_status__full",
    "GET_api_features",
    "GET_api_agents",
    "GET_api_agents_alice",
    "GET_api_agents_nobody",
    "GET_api_unknown_route",
    # writes, in created_at order (dedupes right after what they duplicate)
    "POST_api_memory_remember__as_alice",
    "POST_api_memory_remember__as_alice_exact_duplicate",
    "POST_api_memory_remember__as_alice_private",
    "POST_api_memory_remember__as_bob",
    "POST_api_memory_remember__as_bob_private",
    "POST_api_memory_remember__as_carol",
    "POST_api_memory_remember__as_carol_private",
    "POST_api_memory_remember__as_dave_idempotency_first",
    "POST_api_memory_remember__as_dave_idempotency_repeat",
    "POST_api_memory_remember__as_dave_idempotency_same_key_new_content",
    "POST_api_memory_remember__as_alice_duplicate_content",
    "POST_api_memory_remember__as_bob_duplicate_of_alice_content",
    "POST_api_memory_remember__no_agentId",
    "POST_api_memory_remember__as_eve_unregistered",
    "POST_api_memory_remember__scope_field",
    "POST_api_memory_remember__empty_content",
    "POST_api_memory_remember__missing_content",
    "POST_api_memory_remember__invalid_json",
    "GET_api_agents__after_writes",
    # reads (get-by-id after the recalls: their access_count/last_accessed show it)
    "POST_api_memory_recall__as_alice",
    "POST_api_memory_recall__as_bob",
    "POST_api_memory_recall__as_carol",
    "POST_api_memory_recall__as_dave",
    "POST_api_memory_recall__as_eve",
    "POST_api_memory_recall__no_agentId",
    "POST_api_memory_recall__as_nobody_unregistered",
    "POST_api_memory_recall__header_agent_bob",
    "POST_api_memory_recall__as_alice_scope_bench",
    "POST_api_memory_recall__no_match",
    "POST_api_memory_recall__missing_query",
    "POST_api_memory_recall__invalid_json",
    "GET_api_memory_id__alice_global_as_alice",
    "GET_api_memory_id__alice_global_as_bob",
    "GET_api_memory_id__alice_global_as_carol",
    "GET_api_memory_id__alice_global_no_agent",
    "GET_api_memory_id__alice_private_as_alice",
    "GET_api_memory_id__alice_private_as_bob",
    "GET_api_memory_id__unknown",
    "GET_api_memory_search__q",
    "GET_api_memory_search__q_as_alice",
    "GET_api_memory_search__missing_q",
    "GET_memory_search__legacy",
    "GET_api_memories__list",
    "POST_api_hooks_session-start__as_carol",
    "POST_api_hooks_session-start__missing_harness",
    # modify, then the reads that show it
    "POST_api_memory_modify",
    "POST_api_memory_modify__alice_private_by_bob",
    "POST_api_memory_modify__missing_reason",
    "POST_api_memory_modify__no_patches",
    "POST_api_memory_modify__unknown_id",
    "POST_api_memory_modify__invalid_json",
    "GET_api_memory_id__bob_after_modify",
    "GET_api_memory_id__alice_private_after_bob_modify",
    # forget, then the reads that show it
    "POST_api_memory_forget__preview_ids",
    "POST_api_memory_forget__preview_query",
    "POST_api_memory_forget__no_filter",
    "POST_api_memory_forget__execute_missing_reason",
    "POST_api_memory_forget__invalid_json",
    "POST_api_memory_forget__execute_ids",
    "GET_api_memory_id__after_forget",
    "POST_api_memory_recall__as_bob_after_forget",
    # structured writes came last (no earlier read sees them), then knowledge expand
    "POST_api_memory_remember__structured_no_agentId",
    "POST_api_memory_remember__structured_as_carol",
    "POST_api_knowledge_expand",
    "POST_api_knowledge_expand__carol_entity",
    "POST_api_knowledge_expand__unknown_entity",
    "POST_api_knowledge_expand__missing_entity",
]

LEGACY_ORDER = [
    "GET_health",
    "GET_api_status",
    "GET_api_status__full",
    "GET_api_features",
    "GET_api_agents",
    "GET_api_agents_alice",
    "GET_api_unknown_route",
    "POST_api_memory_remember__no_agentId",
    "POST_api_memory_remember__exact_duplicate",
    "POST_api_memory_remember__as_bob",
    "POST_api_memory_remember__as_bob_duplicate_content",
    "POST_api_memory_remember__as_carol_private",
    "POST_api_memory_remember__forget_target",
    "POST_api_memory_remember__long_autochunk",
    "POST_api_memory_remember__structured_no_agentId",
    "POST_api_memory_remember__empty_content",
    "POST_api_memory_remember__missing_content",
    "POST_api_memory_remember__invalid_json",
    "POST_api_memory_recall__as_alice",
    "POST_api_memory_recall__as_bob",
    "POST_api_memory_recall__no_agentId",
    "POST_api_memory_recall__header_agent_bob",
    "POST_api_memory_recall__who_bob",
    "POST_api_memory_recall__no_match",
    "POST_api_memory_recall__missing_query",
    "POST_api_memory_recall__invalid_json",
    "GET_api_memory_id__found",
    "GET_api_memory_id__found_as_other_agent",
    "GET_api_memory_id__unknown",
    "GET_api_memory_search__q",
    "GET_api_memory_search__missing_q",
    "GET_memory_search__legacy",
    "GET_api_memories__list",
    "POST_api_knowledge_expand",
    "POST_api_knowledge_expand__unknown_entity",
    "POST_api_knowledge_expand__missing_entity",
    "POST_api_memory_modify",
    "POST_api_memory_modify__missing_reason",
    "POST_api_memory_modify__unknown_id",
    "POST_api_memory_modify__invalid_json",
    "GET_api_memory_id__after_modify",
    "POST_api_memory_forget__preview_ids",
    "POST_api_memory_forget__invalid_json",
    "POST_api_memory_forget__execute_ids",
    "GET_api_memory_id__after_forget",
    "POST_api_memory_recall__after_forget",
    "POST_api_hooks_session-start__as_carol",
    "POST_api_hooks_session-start__missing_harness",
]


def test_the_comparison_catches_what_it_claims() -> None:
    """The shape comparison reports a missing or an extra key and another JSON kind at any
    depth, and a list empty on one side only (its elements would go unchecked otherwise);
    allowed paths are skipped. The visible memory sets include the candidates of a forget
    preview and the memories of a knowledge expansion."""
    recorded = {"a": {"b": [{"c": 1}]}, "d": None, "p": {"x": 1}}
    assert shape_diff(recorded, recorded) == []
    assert shape_diff(recorded, {"a": {"b": [{"c": "1"}]}, "d": None, "p": {}, "e": 2}) == [
        "a.b[].c: recorded number, got string",
        "e: unexpected",
        "p.x: missing",
    ]
    assert shape_diff({"r": [{"id": "m"}]}, {"r": []}) == ["r: recorded 1 items, got 0"]
    assert shape_diff({"r": []}, {"r": [{"id": "m"}]}) == ["r: recorded 0 items, got 1"]
    assert shape_diff(recorded, {"a": {"b": []}, "d": None, "p": 3}, allow=("a", "p")) == []
    preview = {"candidates": [{"id": "m1", "score": 0.3}]}
    assert memory_ids("POST_api_memory_forget__preview_query", preview) == ["m1"]
    expanded = {"entity": None, "memories": [{"id": "m2", "content": "x"}]}
    assert memory_ids("POST_api_knowledge_expand", expanded) == ["m2"]


def test_orders_cover_every_recording() -> None:
    """Every recorded call is replayed exactly once (the TWO_DAEMONS ones separately)."""
    for folder, order in (("ts-0.145.7", TS_ORDER), ("ts-0.58.1", LEGACY_ORDER)):
        recorded = {
            p.stem
            for p in (Path(__file__).parent / "golden" / folder).glob("*.json")
            if not p.stem.startswith(("_", "TWO_DAEMONS"))
        }
        assert sorted(order) == sorted(recorded)
        assert len(order) == len(set(order))


async def test_ts_0_145_7_replay(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    """The ts flavor answers the whole recorded 0.145.7 run like the real daemon."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts", GOLDEN_ROSTER)
    await replay(client, "ts-0.145.7", TS_ORDER, TS_ALLOW)


async def test_ts_0_58_1_replay(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    """The ts-legacy flavor answers the whole recorded 0.58.1 run like the real daemon."""
    client = await start_daemon(aiohttp_client, tmp_path, "ts-legacy", GOLDEN_ROSTER)
    await replay(client, "ts-0.58.1", LEGACY_ORDER, LEGACY_ALLOW)


async def test_two_daemons_keep_their_memories_apart(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    """Two daemons on two workspaces: a memory written on B is invisible on A."""
    folder = "ts-0.145.7"
    a = await start_daemon(aiohttp_client, tmp_path / "a", "ts", GOLDEN_ROSTER)
    b = await start_daemon(aiohttp_client, tmp_path / "b", "ts", GOLDEN_ROSTER)
    steps = [
        (b, "TWO_DAEMONS__B_GET_health"),
        (b, "TWO_DAEMONS__B_GET_api_agents"),
        (b, "TWO_DAEMONS__B_POST_api_memory_remember__as_bob"),
        (b, "TWO_DAEMONS__B_POST_api_memory_recall__cache_as_bob"),
        (b, "TWO_DAEMONS__B_POST_api_memory_recall__staging_as_bob"),
        (a, "TWO_DAEMONS__A_POST_api_memory_recall__cache_as_bob"),
    ]
    written: str | None = None
    for client, name in steps:
        recorded = load_golden(folder, name)
        request = recorded["request"]
        status, body = await call(client, request["method"], request["path"], request.get("body"))
        assert status == recorded["status"], name
        assert not shape_diff(recorded["response"], body), name
        if "remember" in name:
            written = body["id"]
        if "recall" in name:
            got = [item["id"] for item in body["results"]]
            want_count = len(recorded["response"]["results"])
            assert len(got) == want_count, name
            if want_count:
                assert got == [written]
