"""Settings of the etcd registry backend: layering, validation and the lease TTL."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.etcd.backend import call_timeout, lease_ttl, renew_interval
from signet_cluster.errors import ConfigError
from signet_cluster.settings import Settings, load_settings


def test_toml_sections_and_env_select_the_etcd_backend(tmp_path: Path) -> None:
    """`[registry] backend` and `[etcd] endpoints/prefix` in the file are the settings
    registry_backend, etcd_endpoints and etcd_prefix; the env takes a comma-separated list."""
    config = tmp_path / "c.toml"
    config.write_text(
        '[registry]\nbackend = "etcd"\n'
        '[etcd]\nendpoints = ["http://10.0.0.1:2379", "https://10.0.0.2:2379"]\nprefix = "/a/"\n'
    )
    settings = load_settings(config_file=config, env={})
    assert settings.registry_backend == "etcd"
    assert settings.etcd_endpoints == ("http://10.0.0.1:2379", "https://10.0.0.2:2379")
    assert settings.etcd_prefix == "/a/"
    from_env = load_settings(
        env={
            "SIGNET_CLUSTER_REGISTRY_BACKEND": "etcd",
            "SIGNET_CLUSTER_ETCD_ENDPOINTS": "http://e1:2379, http://e2:2379",
        }
    )
    assert from_env.etcd_endpoints == ("http://e1:2379", "http://e2:2379")
    defaults = load_settings(env={})
    assert defaults.registry_backend == "coordinator"
    assert defaults.etcd_endpoints == ("http://127.0.0.1:2379",)
    assert defaults.etcd_prefix == "/signet-cluster/"


def test_bad_etcd_settings_are_all_reported() -> None:
    """An unknown backend, a malformed endpoint and a prefix without a trailing '/' are
    listed together."""
    with pytest.raises(ConfigError) as info:
        load_settings(
            env={
                "SIGNET_CLUSTER_REGISTRY_BACKEND": "zookeeper",
                "SIGNET_CLUSTER_ETCD_ENDPOINTS": "etcd.local:2379",
                "SIGNET_CLUSTER_ETCD_PREFIX": "/no-slash",
            }
        )
    text = "\n".join(info.value.problems)
    assert "registry_backend: one of coordinator, etcd; got 'zookeeper'" in text
    assert "etcd_endpoints: 'etcd.local:2379' is not an http(s)://host:port URL" in text
    assert "etcd_prefix: up to 200 characters without spaces, ending in '/'" in text


def test_etcd_refuses_coordinator_settings_and_needs_an_endpoint() -> None:
    """Coordinator settings would be silently ignored under etcd, so they are an error;
    so is an empty endpoint list."""
    with pytest.raises(ConfigError) as info:
        load_settings(
            env={
                "SIGNET_CLUSTER_REGISTRY_BACKEND": "etcd",
                "SIGNET_CLUSTER_COORDINATORS": "http://127.0.0.1:3860",
                "SIGNET_CLUSTER_ETCD_ENDPOINTS": "",
            }
        )
    text = "\n".join(info.value.problems)
    assert "registry_backend = etcd replaces coordinators" in text
    assert "registry_backend = etcd needs at least one URL" in text


@pytest.mark.parametrize(
    ("interval", "peer_ttl", "expected"),
    [(1.0, None, 5), (0.1, None, 2), (1.0, 2.5, 3), (0.2, 1.0, 2), (10.0, None, 50)],
)
def test_lease_ttl_is_the_peer_ttl_in_whole_seconds(
    interval: float, peer_ttl: float | None, expected: int
) -> None:
    """etcd leases are whole seconds: the peer TTL rounded up, never below etcd's 2 s."""
    settings = Settings(heartbeat_interval=interval, peer_ttl=peer_ttl)
    assert lease_ttl(settings) == expected


@pytest.mark.parametrize(
    ("members", "peer_timeout", "interval", "peer_ttl", "expected"),
    [
        (1, 2.0, 1.0, None, 2.0),  # defaults: 5 s lease renewed every 1 s leaves room
        (3, 2.0, 1.0, None, 4 / 3),  # three members share the 4 s left of the lease
        (3, 2.5, 0.5, 2.0, 0.5),  # a 2 s lease renewed every 0.5 s: 1.5 s over three
        (2, 0.3, 0.25, 2.0, 0.3),  # a short peer_timeout stays as it is
    ],
)
def test_an_etcd_call_fits_every_member_into_one_lease(
    members: int, peer_timeout: float, interval: float, peer_ttl: float | None, expected: float
) -> None:
    """One etcd call waits at most `peer_timeout`, and at most an equal share of the lease
    left after a renewal interval, so a renewal can try every member before the lease ends."""
    settings = Settings(
        heartbeat_interval=interval,
        peer_ttl=peer_ttl,
        peer_timeout=peer_timeout,
        etcd_endpoints=tuple(f"http://127.0.0.1:{2379 + i}" for i in range(members)),
    )
    assert call_timeout(settings) == pytest.approx(expected)
    assert renew_interval(settings) + members * call_timeout(settings) <= lease_ttl(settings)
