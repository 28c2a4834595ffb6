"""Every `--json` document the CLI prints matches the published JSON Schema
(cli/schemas/cli-output.schema.json): status, routes, resolve, explain, join, remove,
replace, adopt, promote, check-config, and the error document of a failed command."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from .cluster_helpers import Cluster
from .test_cli import run_cli

BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]
CAROL = [{"name": "carol", "memory": {"read_policy": {"type": "group", "group": "ops"}}}]


def schema_root() -> dict[str, Any]:
    text = resources.files("cli.schemas").joinpath("cli-output.schema.json").read_text()
    root: dict[str, Any] = json.loads(text)
    return root


def check(name: str, document: Any) -> None:
    root = schema_root()
    schema = {"$schema": root["$schema"], "$defs": root["$defs"], "$ref": f"#/$defs/{name}"}
    jsonschema.Draft202012Validator(schema).validate(document)


def test_the_schema_is_valid_and_names_every_command() -> None:
    root = schema_root()
    jsonschema.Draft202012Validator.check_schema(root)
    for name in ("status", "routes", "resolve", "explain", "join", "remove", "replace"):
        assert name in root["$defs"]
    for name in ("adopt", "promote", "check_config", "error"):
        assert name in root["$defs"]


def test_a_wrong_document_fails_the_schema() -> None:
    """The schema says something: registry_version must be text, not a number."""
    with pytest.raises(jsonschema.ValidationError):
        check("view", {"source": "registry", "registry_version": 7, "age_s": 0, "stale": False})


async def json_out(*args: str, expect: int = 0) -> Any:
    code, out, err = await run_cli(*args, "--json")
    assert code == expect, (args, out, err)
    return json.loads(out)


async def test_every_json_output_matches_the_schema(cluster: Cluster) -> None:
    a = await cluster.add("a", BOB, coordinator=True)
    b = await cluster.add("b", CAROL, coordinators=(a.url,))
    c = await cluster.add("c", BOB)
    await cluster.wait_states(a, {"a": "alive", "b": "alive"})
    s = ("--sidecar", a.url)

    check("join", await json_out(*s, "join", c.url))
    await cluster.wait_states(a, {"c": "alive"})
    status = await json_out(*s, "status", expect=3)  # bob is claimed twice
    check("status", status)
    check("status", await json_out("--sidecar", b.url, "status", expect=3))
    check("routes", await json_out(*s, "routes"))
    check("resolve", await json_out(*s, "resolve", "carol"))
    check("resolve", await json_out(*s, "resolve", "carl", expect=1))
    check("explain", await json_out(*s, "explain", "carol"))
    check("adopt", await json_out(*s, "adopt", "bob", "c", "--dry-run"))
    check("adopt", await json_out(*s, "adopt", "bob", "c", "--yes"))
    check("promote", await json_out("--sidecar", b.url, "promote", "--dry-run"))
    check("promote", await json_out("--sidecar", b.url, "promote", "--yes"))
    check("promote", await json_out("--sidecar", b.url, "promote", "--demote", "--yes"))
    check("remove", await json_out(*s, "remove", "c", "--dry-run"))
    check("error", await json_out(*s, "replace", "c", "b", "--dry-run", expect=1))
    await cluster.stop_sidecar(c)
    await cluster.wait_states(a, {"c": "down"})
    down = await json_out(*s, "status", expect=3)
    check("status", down)
    (node_c,) = [n for n in down["nodes"] if n["node_id"] == "c"]
    assert node_c["daemon"]["healthy"] is False  # a down node does not vouch for its daemon
    check("replace", await json_out(*s, "replace", "c", "b", "--dry-run"))
    check("remove", await json_out(*s, "remove", "c", "--yes"))
    check("error", await json_out(*s, "remove", "cc", "--yes", expect=1))
    check("error", await json_out("--sidecar", "http://127.0.0.1:1", "status", expect=4))
    check("error", await json_out("--sidecar", "http://127.0.0.1:1", "explain", "x", expect=4))
    check("error", await json_out(*s, "join", "127.0.0.1:1", expect=1))
    check("check_config", await json_out("check-config"))


async def test_keyring_json_outputs_match_the_schema(cluster: Cluster, tmp_path: Path) -> None:
    """Every keyring command's --json (a keyring file's ids, and the sidecar's loaded keys
    with --live) has its schema too: `keyring_file`, `keyring_live`."""
    a = await cluster.add("a", BOB, coordinator=True)
    ring = tmp_path / "ring.json"
    first, second = tmp_path / "first.key", tmp_path / "second.key"
    for key in (first, second):
        code, _out, err = await run_cli("keygen", "--out", str(key))
        assert code == 0, err
    ring_args = ("--keyring-file", str(ring))
    installed = await json_out("keyring", "install", *ring_args, "--secret-file", str(first))
    check("keyring_file", installed)
    second_doc = await json_out(
        "keyring", "install", *ring_args, "--secret-file", str(second), "--key-id", "k2"
    )
    check("keyring_file", second_doc)
    check("keyring_file", await json_out("keyring", "use", "k2", *ring_args))
    check("keyring_file", await json_out("keyring", "remove", installed["primary"], *ring_args))
    listed = await json_out("keyring", "list", *ring_args)
    check("keyring_file", listed)
    assert [k["id"] for k in listed["keys"]] == ["k2"] and listed["primary"] == "k2"
    live = await json_out("--sidecar", a.url, "keyring", "list", "--live")
    check("keyring_live", live)
    assert live["keyring"]["keys"]  # the test cluster's key, by id only
    with pytest.raises(jsonschema.ValidationError):
        check("keyring_live", {**live, "replay_cache": "many"})
