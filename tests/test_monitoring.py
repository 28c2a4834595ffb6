"""The monitoring assets in deploy/: the Prometheus alerts pass `promtool check rules` and
their unit tests, and every metric the alerts and the Grafana dashboard query is one a
running sidecar exports (compared with a live /metrics, so a renamed family fails here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from .cluster_helpers import Cluster

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "signet-cluster.json"
# Not the sidecar's: Prometheus's own scrape health.
FOREIGN = {"up"}
METRIC_NAME = re.compile(r"\b([a-z_][a-z0-9_]*)\s*(?=\{|\[|\)|$|\s[<>=!])")
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
}
BOB = [{"name": "bob", "memory": {"read_policy": "shared"}}]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("promtool"), "promtool is missing (Debian package prometheus)"
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, timeout=120, check=False
    )


def alert_expressions() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    exprs = [str(rule["expr"]) for group in groups for rule in group["rules"]]
    assert len(exprs) >= 10, exprs
    return exprs


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15, exprs
    return exprs


def metric_names(expr: str) -> set[str]:
    """Series names an expression selects: identifiers followed by a selector, a range, or
    the end of a term, minus PromQL's own words (functions, aggregations, label names)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_labels)
    names = {n for n in METRIC_NAME.findall(without_groupings)}
    return {n for n in names if n.startswith("signet_cluster_") or n in FOREIGN}


async def live_series_names(cluster: Cluster) -> set[str]:
    """Every series name a coordinator and a member expose (labelled families with no
    samples yet still have their HELP/TYPE lines, so they count)."""
    a = await cluster.add("a", [], coordinator=True)
    b = await cluster.add("b", BOB, coordinators=(a.url,))
    await cluster.wait_states(a, {"a": "alive", "b": "alive"})
    assert cluster.session is not None
    names: set[str] = set()
    for node in (a, b):
        async with cluster.session.get(node.url + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            suffixes = SERIES_SUFFIXES.get(family.type, ("",))
            names |= {family.name + suffix for suffix in suffixes}
    return names


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    """`promtool check rules` accepts alerts.yml and `promtool test rules` passes: each alert
    fires on the series that should raise it and stays quiet on a healthy cluster."""
    checked = promtool("check", "rules", str(ALERTS))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    text = ALERTS.read_text()
    for alert in (
        "SidecarDown",
        "NodeDown",
        "DaemonUnhealthy",
        "PartialReadsRising",
        "SpoolWritesWaiting",
        "SpoolDeep",
        "RoutingTableStale",
        "AgentCollision",
        "UnauthorizedHeartbeats",
        "CertificateExpiresSoon",
    ):
        assert f"alert: SignetCluster{alert}" in text, alert
        assert f"alertname: SignetCluster{alert}" in ALERT_TESTS.read_text(), alert


def test_metric_name_extraction() -> None:
    """The name extraction used below sees selectors and ignores label names and functions."""
    expr = (
        'histogram_quantile(0.99, sum by (le, instance) (rate(signet_cluster_x_bucket{job="j"}'
        "[5m]))) > 0 and on (instance) signet_cluster_coordinator == 1 or up == 0"
    )
    assert metric_names(expr) == {"signet_cluster_x_bucket", "signet_cluster_coordinator", "up"}


async def test_alerts_and_dashboard_query_only_live_metrics(cluster: Cluster) -> None:
    """Every signet_cluster_* series the alerts and every dashboard panel name is exported
    by a running coordinator or member; the dashboard has no query without one."""
    live = await live_series_names(cluster)
    assert "signet_cluster_peers" in live and "signet_cluster_spool_depth" in live
    unknown: dict[str, set[str]] = {}
    for source, exprs in (("alerts", alert_expressions()), ("dashboard", dashboard_expressions())):
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"{source}: no metric in {expr!r}"
            missing = {n for n in names if n not in live and n not in FOREIGN}
            if missing:
                unknown.setdefault(source, set()).update(missing)
            if source == "dashboard":
                assert not names & FOREIGN, expr
    assert not unknown, f"queries name metrics no sidecar exports: {unknown}"
