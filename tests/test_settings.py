"""Settings layering (defaults < TOML < env < flags) and validation listing every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from signet_cluster.errors import ConfigError
from signet_cluster.settings import load_settings


def test_layers_override_in_order(tmp_path: Path) -> None:
    """A flag beats the env, the env beats the file, the file beats the default."""
    config = tmp_path / "c.toml"
    config.write_text(
        'port = 4000\nhost = "127.0.0.1"\nheartbeat_interval = 2.0\nlog_level = "debug"\n'
    )
    settings = load_settings(
        config_file=config,
        env={"SIGNET_CLUSTER_PORT": "4001", "SIGNET_CLUSTER_HEARTBEAT_INTERVAL": "3"},
        overrides={"port": 4002},
    )
    assert settings.port == 4002
    assert settings.heartbeat_interval == 3.0
    assert settings.log_level == "debug"
    assert settings.reap_after == 86400.0
    assert settings.ttl == 15.0


def test_every_problem_is_listed(tmp_path: Path) -> None:
    """Unknown keys, wrong types and bad values are all reported at once."""
    config = tmp_path / "c.toml"
    config.write_text('prot = 1\nport = "x"\n[daemon]\nurl = 5\n')
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=config, env={"SIGNET_CLUSTER_COORDINATOR": "maybe"})
    text = "\n".join(info.value.problems)
    assert "unknown setting 'prot'" in text
    assert "port: expected an integer" in text
    assert "daemon_url: expected a string" in text
    assert "SIGNET_CLUSTER_COORDINATOR" in text


def test_semantic_validation() -> None:
    """Values of the right type but unusable are refused with a reason each."""
    with pytest.raises(ConfigError) as info:
        load_settings(
            env={},
            overrides={
                "heartbeat_interval": 0,
                "peer_ttl": 0.5,
                "coordinators": "ftp://x",
                "log_format": "xml",
            },
        )
    problems = info.value.problems
    assert any(p.startswith("heartbeat_interval") for p in problems)
    assert any(p.startswith("coordinators") for p in problems)
    assert any(p.startswith("log_format") for p in problems)


def test_section_tables_map_to_prefixed_settings(tmp_path: Path) -> None:
    """`[daemon] url = ...` in TOML is the `daemon_url` setting."""
    config = tmp_path / "c.toml"
    config.write_text('[daemon]\nurl = "http://127.0.0.1:3999"\n')
    assert load_settings(config_file=config, env={}).daemon_url == "http://127.0.0.1:3999"


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    """A named config file that does not exist is a clear error, not silently ignored."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config_file=tmp_path / "nope.toml", env={})


def test_non_finite_numbers_are_refused(tmp_path: Path) -> None:
    """`nan` and `inf` parse as floats (env text and TOML alike) but are no usable interval,
    timeout or port: a NaN passes every `<= 0` check, and `int(inf)` used to crash the loader
    instead of reporting. Each is refused by name."""
    config = tmp_path / "c.toml"
    config.write_text("reap_after = nan\npeer_timeout = inf\nport = inf\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=config, env={"SIGNET_CLUSTER_HEARTBEAT_INTERVAL": "nan"})
    text = "\n".join(info.value.problems)
    for name in ("reap_after", "peer_timeout", "port", "SIGNET_CLUSTER_HEARTBEAT_INTERVAL"):
        assert name in text
    assert "finite" in text


def test_fanout_deadline_settings_are_checked() -> None:
    """A ceiling past what a contribution may be given, a grace as long as the ceiling and
    a headroom below 1 are refused, each with its reason."""
    with pytest.raises(ConfigError) as info:
        load_settings(
            env={},
            overrides={"fanout_ceiling": 90, "fanout_grace": 95, "fanout_headroom": 0.5},
        )
    problems = info.value.problems
    assert any(p.startswith("fanout_ceiling: at most 60") for p in problems)
    assert any(p.startswith("fanout_grace") for p in problems)
    assert any(p.startswith("fanout_headroom") for p in problems)
    settings = load_settings(env={"SIGNET_CLUSTER_FANOUT_CEILING": "5"})
    assert (settings.fanout_ceiling, settings.fanout_grace) == (5.0, 0.05)
