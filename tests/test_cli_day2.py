"""Day-2 CLI: global options anywhere, this node's URL from SIGNET_CLUSTER_CONFIG,
confirmation and --dry-run for changes, unknown names as errors with a suggestion,
`replace`, and JSON on stdout for errors too."""

from __future__ import annotations

import json
from pathlib import Path

from cli.main import cli, hoist_global_options
from sidecar import keys

from .cluster_helpers import Cluster, registry_of, wait_for
from .test_cli import run_cli

BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]
BOB_ISOLATED = [{"name": "bob", "memory": {"read_policy": "isolated"}}]
CAROL = [{"name": "carol", "memory": {"read_policy": "shared"}}]


def test_global_options_after_the_subcommand_are_moved_in_front() -> None:
    """`join X --timeout 3` means `--timeout 3 join X`; options of the subcommand and
    everything after `--` stay where they are."""
    assert hoist_global_options(cli, ["join", "h:1", "--timeout", "3"]) == [
        "--timeout",
        "3",
        "join",
        "h:1",
    ]
    assert hoist_global_options(cli, ["status", "--sidecar=http://x:1", "--json"]) == [
        "--sidecar=http://x:1",
        "status",
        "--json",
    ]
    assert hoist_global_options(cli, ["--timeout", "2", "remove", "--", "--timeout"]) == [
        "--timeout",
        "2",
        "remove",
        "--",
        "--timeout",
    ]


async def test_global_options_work_after_the_subcommand(cluster: Cluster) -> None:
    """A real run: `status --sidecar URL --timeout 5` talks to that sidecar."""
    a = await cluster.add("a", [], coordinator=True)
    code, out, err = await run_cli("status", "--json", "--sidecar", a.url, "--timeout", "5")
    assert code == 0, err
    assert json.loads(out)["node_id"] == "a"


async def test_the_cli_finds_this_nodes_sidecar_from_the_config_file(
    cluster: Cluster, tmp_path: Path
) -> None:
    """With SIGNET_CLUSTER_CONFIG (as the unit sets it) and no --sidecar, the CLI talks to
    the port and address that file gives this node, not 127.0.0.1:3860."""
    a = await cluster.add("a", [], coordinator=True)
    config = tmp_path / "node.toml"
    config.write_text(f'host = "127.0.0.1"\nport = {a.settings.port}\n')  # type: ignore[union-attr]
    env = {"SIGNET_CLUSTER_CONFIG": str(config), "SIGNET_CLUSTER_SIDECAR": ""}
    code, out, err = await run_cli("status", "--json", env=env)
    assert code == 0, err
    assert json.loads(out)["url"] == a.url


async def test_remove_asks_first_and_names_unknown_nodes(cluster: Cluster) -> None:
    """Without a terminal and without --yes, remove changes nothing (exit 2); --dry-run
    shows the node and changes nothing; a typo is exit 1 with the closest name."""
    a = await cluster.add("a", [], coordinator=True)
    await cluster.add("node1", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"node1": "alive"})
    code, _, err = await run_cli("--sidecar", a.url, "remove", "node1")
    assert code == 2 and "--yes" in err, err
    code, out, err = await run_cli("--sidecar", a.url, "remove", "node1", "--dry-run")
    assert code == 0 and "would remove node1" in out, (out, err)
    assert "node1" in registry_of(a)
    code, out, err = await run_cli("--sidecar", a.url, "remove", "node9", "--yes")
    assert code == 1 and "did you mean 'node1'" in err, (out, err)
    code, out, err = await run_cli("--sidecar", a.url, "remove", "node9", "--yes", "--json")
    assert code == 1 and json.loads(out)["code"] == "not_found", out
    assert "node1" in registry_of(a)


async def test_resolve_of_an_unknown_agent_is_an_error_with_a_suggestion(
    cluster: Cluster,
) -> None:
    """`resolve bobb` exits 1 naming `bob`; with --json the answer is on stdout too."""
    a = await cluster.add("a", BOB, coordinator=True)
    await cluster.wait_states(a, {"a": "alive"})
    code, _, err = await run_cli("--sidecar", a.url, "resolve", "bobb")
    assert code == 1 and "did you mean 'bob'" in err, err
    code, out, _ = await run_cli("--sidecar", a.url, "resolve", "bobb", "--json")
    body = json.loads(out)
    assert code == 1 and body["known"] is False and body["suggestion"] == "bob"
    code, _, err = await run_cli("--sidecar", a.url, "resolve", "bob")
    assert code == 0, err
    code, _, err = await run_cli("--sidecar", a.url, "explain", "bobb")
    assert code == 1 and "did you mean 'bob'" in err, err


async def test_status_json_carries_problems_and_the_exit_code(cluster: Cluster) -> None:
    """`status --json` says what is wrong and which exit code that is; an unreachable
    sidecar still prints JSON on stdout."""
    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"b": "alive"})
    code, out, _ = await run_cli("--sidecar", a.url, "status", "--json")
    body = json.loads(out)
    assert code == 0 and body["problems"] == [] and body["exit_code"] == 0
    await cluster.stop_sidecar(b)
    await cluster.wait_states(a, {"b": "down"})
    code, out, _ = await run_cli("--sidecar", a.url, "status", "--json")
    body = json.loads(out)
    assert code == 3 and body["exit_code"] == 3 and "node b is down" in body["problems"]
    code, out, _ = await run_cli("--sidecar", "http://127.0.0.1:1", "status", "--json")
    assert code == 4 and json.loads(out)["exit_code"] == 4


async def test_adopt_says_when_the_effective_policy_changes(cluster: Cluster) -> None:
    """Two nodes claim bob with different policies; adopting the other claim warns that
    bob's read policy changes; --dry-run shows it and changes nothing."""
    a = await cluster.add("a", BOB, coordinator=True)
    await cluster.add("b", BOB_ISOLATED, coordinators=(a.url,))
    await cluster.wait_states(a, {"a": "alive", "b": "alive"})
    owner = registry_of(a).routing()[1][0].winner
    other = "b" if owner == "a" else "a"
    code, out, err = await run_cli("--sidecar", a.url, "adopt", "bob", other, "--dry-run")
    assert code == 0 and "read policy changes" in out, (out, err)
    assert registry_of(a).routing()[1][0].winner == owner
    code, out, err = await run_cli("--sidecar", a.url, "adopt", "bob", other, "--yes")
    assert code == 0, err
    assert "effective read policy changed" in err
    assert registry_of(a).routing()[1][0].winner == other


async def test_replace_carries_membership_and_adoptions_to_the_new_id(
    cluster: Cluster,
) -> None:
    """Host c comes back under a new id at its URL with its agents: status says so and
    names `replace`; `replace c c-new` removes c, makes c-new a member and moves the
    adoption of carol to it."""
    a = await cluster.add("a", [], coordinator=True)
    c = await cluster.add("c", CAROL)
    code, _ = await cluster.post(a.url + "/api/cluster/join", {"address": c.url})
    assert code == 200
    await cluster.wait_states(a, {"c": "alive"})
    code, _ = await cluster.post(
        a.url + "/api/cluster/adopt", {"agent_id": "carol", "node_id": "c"}
    )
    assert code == 200
    await cluster.stop_sidecar(c)
    await cluster.start_sidecar(
        c, node_id="c-new", state_dir=str(c.state_dir) + "-unit", coordinators=(a.url,)
    )
    await cluster.wait_states(a, {"c": "down", "c-new": "alive"})
    code, out, _ = await run_cli("--sidecar", a.url, "status")
    assert code == 3 and "replace c c-new" in out, out

    code, out, err = await run_cli("--sidecar", a.url, "replace", "c", "c-new", "--dry-run")
    assert code == 0 and "would do" in out and "carol" in out, (out, err)
    assert "c" in registry_of(a)
    code, out, err = await run_cli("--sidecar", a.url, "replace", "c", "c-new", "--yes")
    assert code == 0, err
    registry = registry_of(a)
    assert "c" not in registry and registry.record("c-new").joined
    assert (await a.app[keys.STATE].admin_state()).active_adoptions() == {"carol": "c-new"}
    assert [(r.agent_id, r.node_id) for r in registry.routing()[0]] == [("carol", "c-new")]
    assert c.app[keys.MEMBERSHIP].removed_by is None
    code, _, err = await run_cli("--sidecar", a.url, "replace", "c", "c-new", "--yes")
    assert code == 1 and "removed already" in err, err

    async def healthy() -> bool:
        code, _, _ = await run_cli("--sidecar", a.url, "status")
        return code == 0

    await wait_for(healthy, what="status healthy after the replacement")
