"""Helpers for the dev daemon tests: workspaces, JSON shape comparison, golden replay."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from signet_cluster.devdaemon import DevDaemonConfig, make_devdaemon_app

GOLDEN = Path(__file__).parent / "golden"

#: The roster of the recorded runs (golden/README.md).
GOLDEN_ROSTER: list[dict[str, Any]] = [
    {"name": "alice", "memory": {"read_policy": "isolated"}},
    {"name": "bob", "memory": {"read_policy": "shared"}},
    {"name": "carol", "memory": {"read_policy": {"type": "group", "group": "ops"}}},
    {"name": "dave", "memory": {"read_policy": {"type": "group", "group": "ops"}}},
]

ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]
Client = TestClient[web.Request, web.Application]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def write_manifest(workspace: Path, roster: list[dict[str, Any]], **extra: Any) -> None:
    workspace.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"agents": {"roster": roster}, **extra}
    (workspace / "agent.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")


async def start_daemon(
    aiohttp_client: ClientFactory,
    workspace: Path,
    flavor: str = "ts",
    roster: list[dict[str, Any]] | None = None,
    **config: Any,
) -> Client:
    # Tiny synchronous file writes before the server starts: nothing else is running.
    if roster is not None:
        write_manifest(workspace, roster)
    workspace.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    app = make_devdaemon_app(DevDaemonConfig(path=workspace, flavor=flavor, **config))
    return await aiohttp_client(app)


async def call(
    client: Client, method: str, path: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    """One request; returns (status, parsed JSON or the text when not JSON)."""
    async with client.request(method, path, json=body, **kw) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


# -- shape comparison ------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"  # JSON has one number type: 1 and 1.0 are the same kind
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def shape_diff(recorded: Any, actual: Any, allow: Iterable[str] = (), path: str = "") -> list[str]:
    """Differences in keys and JSON kinds, recursively; paths under ``allow`` are skipped.

    Each element of an actual list must have the shape of some recorded element, and a list
    is empty in both or in neither (otherwise the elements' shapes would go unchecked).
    """
    allowed = tuple(allow)
    if path and any(path == a or path.startswith(a + ".") for a in allowed):
        return []
    if _kind(recorded) != _kind(actual):
        return [f"{path or '<root>'}: recorded {_kind(recorded)}, got {_kind(actual)}"]
    diffs: list[str] = []
    if isinstance(recorded, dict):
        for key in sorted(set(recorded) | set(actual)):
            sub = f"{path}.{key}" if path else key
            if any(sub == a or sub.startswith(a + ".") for a in allowed):
                continue
            if key not in actual:
                diffs.append(f"{sub}: missing")
            elif key not in recorded:
                diffs.append(f"{sub}: unexpected")
            else:
                diffs.extend(shape_diff(recorded[key], actual[key], allowed, sub))
    elif isinstance(recorded, list) and bool(recorded) != bool(actual):
        diffs.append(f"{path or '<root>'}: recorded {len(recorded)} items, got {len(actual)}")
    elif isinstance(recorded, list):
        for got in actual:
            # Elements may legitimately differ (a null project here, a string there):
            # each of ours must match the shape of at least one recorded element.
            tries = [shape_diff(rec, got, allowed, f"{path}[]") for rec in recorded]
            if all(tries):
                diffs.extend(tries[0])
    return diffs


# -- golden replay -----------------------------------------------------------------------


def load_golden(flavor_dir: str, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((GOLDEN / flavor_dir / f"{name}.json").read_text())
    return data


class IdMap:
    """Recorded memory id -> the id our daemon gave the write that created it."""

    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    def learn(self, recorded: Any, actual: Any) -> None:
        if isinstance(recorded, dict) and isinstance(actual, dict):
            pairs: list[tuple[Any, Any]] = [(recorded.get("id"), actual.get("id"))]
            if isinstance(recorded.get("ids"), list) and isinstance(actual.get("ids"), list):
                pairs += list(zip(recorded["ids"], actual["ids"], strict=True))
            for rec, got in pairs:
                if not (isinstance(rec, str) and isinstance(got, str)):
                    continue
                # A write the daemon deduped must land on the same memory as the original.
                known = self.ids.setdefault(rec, got)
                assert known == got, f"recorded {rec} maps to {known}, this write gave {got}"

    def rewrite(self, value: Any) -> Any:
        """Replace recorded ids inside strings (paths, bodies) by ours."""
        if isinstance(value, str):
            return _UUID.sub(lambda m: self.ids.get(m.group(0), m.group(0)), value)
        if isinstance(value, list):
            return [self.rewrite(item) for item in value]
        if isinstance(value, dict):
            return {key: self.rewrite(item) for key, item in value.items()}
        return value

    def mapped(self, recorded_ids: Iterable[str]) -> set[str]:
        out = set()
        for rec in recorded_ids:
            assert rec in self.ids, f"recorded id {rec} was never created in the replay"
            out.add(self.ids[rec])
        return out


def memory_ids(name: str, body: Any) -> list[str] | None:
    """The memory ids a read returned, for the recordings whose visible set we compare."""
    if not isinstance(body, dict):
        return None
    if "recall" in name or "memory_search" in name:
        return [item["id"] for item in body.get("results", [])]
    if "session-start" in name or "knowledge_expand" in name:
        return [item["id"] for item in body.get("memories", [])]
    if "forget__preview" in name:
        return [item["id"] for item in body.get("candidates", [])]
    if name.startswith("GET_api_memories"):
        return [item["id"] for item in body.get("memories", [])]
    if name.startswith("GET_api_memory_id") and "id" in body:
        return [body["id"]]
    return None


async def replay(
    client: Client, flavor_dir: str, order: list[str], allow: dict[str, tuple[str, ...]]
) -> IdMap:
    """Replay recorded calls in order, asserting status, shape and visible memory sets."""
    ids = IdMap()
    for name in order:
        recorded = load_golden(flavor_dir, name)
        request = recorded["request"]
        path = ids.rewrite(request["path"])
        headers = dict(request.get("headers", {}))
        kwargs: dict[str, Any] = {"headers": headers}
        if "body_raw" in request:
            kwargs["data"] = request["body_raw"]
            headers["Content-Type"] = "application/json"
        elif "body" in request:
            kwargs["json"] = ids.rewrite(request["body"])
        async with client.request(request["method"], path, **kwargs) as resp:
            status, text = resp.status, await resp.text()
        want = recorded["response"]
        assert status == recorded["status"], (
            f"{name}: status {status}, recorded {recorded['status']}: {text}"
        )
        if isinstance(want, dict) and "_non_json_body" in want:
            assert text == want["_non_json_body"], f"{name}: body {text!r}"
            continue
        got = json.loads(text)
        if isinstance(want, dict) and "_trimmed" in want:
            assert sorted(got) == sorted(want["_top_level_keys"]), f"{name}: top-level keys"
            continue
        diffs = shape_diff(want, got, allow.get(name, ()))
        assert not diffs, f"{name}: shape differs: {diffs}"
        if "remember" in name:
            ids.learn(want, got)
        expected = memory_ids(name, want)
        if expected is not None:
            actual = memory_ids(name, got)
            assert actual is not None
            assert set(actual) == ids.mapped(expected), f"{name}: visible memories differ"
        if isinstance(want, dict) and isinstance(want.get("agents"), list):
            assert [_policy(a) for a in got["agents"]] == [_policy(a) for a in want["agents"]], name
        elif name.startswith("GET_api_agents_") and status == 200:
            assert _policy(got) == _policy(want), name
    return ids


def _policy(agent: dict[str, Any]) -> tuple[Any, ...]:
    """What the roster says about an agent: who it is and what it may read."""
    return (agent["id"], agent["name"], agent["read_policy"], agent["policy_group"])
