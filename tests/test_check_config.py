"""`check-config`: every problem in one round, TOML output with where each value came from,
"did you mean" for unknown keys, and a JSON document whether or not the settings are valid."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli


def test_every_problem_in_one_round(tmp_path: Path) -> None:
    """A type error, a typo'd key and a semantic problem are reported together (before,
    the semantic check only ran once the types were right)."""
    config = tmp_path / "c.toml"
    config.write_text('prot = 1\nport = "x"\nheartbeat_interval = -1\n')
    result = CliRunner().invoke(cli, ["check-config", "--config", str(config)])
    assert result.exit_code == 1
    assert "unknown setting 'prot'; did you mean 'port'?" in result.stderr
    assert "port: expected an integer" in result.stderr
    assert "heartbeat_interval: must be greater than 0" in result.stderr


def test_json_is_printed_on_failure_too(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("heartbeat_interval = -1\n")
    result = CliRunner().invoke(cli, ["check-config", "--config", str(config), "--json"])
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["ok"] is False and body["problems"] == [
        "heartbeat_interval: must be greater than 0"
    ]


def test_output_is_toml_with_effective_values_and_sources(tmp_path: Path) -> None:
    """The listing parses as TOML; unset settings show what the sidecar will use (never a
    Python `None` or tuple repr), and each line says where the value came from."""
    config = tmp_path / "c.toml"
    config.write_text('port = 4999\ncoordinators = ["http://a:3860"]\n')
    result = CliRunner().invoke(
        cli,
        ["check-config", "--config", str(config), "--host", "127.0.0.2"],
        env={"SIGNET_CLUSTER_HEARTBEAT_INTERVAL": "2", "SIGNET_CLUSTER_STATE_DIR": ""},
    )
    assert result.exit_code == 0, result.output
    parsed = tomllib.loads(result.stdout)
    assert parsed["port"] == 4999 and parsed["coordinators"] == ["http://a:3860"]
    assert parsed["advertise_url"] == "http://127.0.0.2:4999"
    assert parsed["peer_ttl"] == 10.0 and isinstance(parsed["node_id"], str)
    assert "('" not in result.stdout and "None" not in result.stdout
    lines = {line.split(" =", 1)[0]: line for line in result.stdout.splitlines() if " = " in line}
    assert f"# file {config}" in lines["port"]
    assert "# flag --host" in lines["host"]
    assert "# env SIGNET_CLUSTER_HEARTBEAT_INTERVAL" in lines["heartbeat_interval"]
    assert "# default" in lines["daemon_url"]
    body = json.loads(
        CliRunner()
        .invoke(
            cli,
            ["check-config", "--config", str(config), "--json"],
            env={"SIGNET_CLUSTER_STATE_DIR": ""},
        )
        .stdout
    )
    assert body["ok"] is True and body["state_dir"] and body["advertise_url"]
    assert body["sources"]["port"] == f"file {config}"
