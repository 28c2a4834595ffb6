"""Shared fixtures: a `cluster` factory of real dev daemons and sidecars on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from .cluster_helpers import TEST_ADMIN_KEY, TEST_SECRET, Cluster


@pytest.fixture(autouse=True)
def cluster_secret_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLI processes the tests start sign with the test clusters' admin key (cluster_helpers)."""
    monkeypatch.setenv("SIGNET_CLUSTER_SECRET", TEST_SECRET)
    monkeypatch.setenv("SIGNET_CLUSTER_ADMIN_KEY", TEST_ADMIN_KEY)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    async with Cluster(tmp_path) as built:
        yield built
