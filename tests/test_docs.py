"""Docs that cannot drift: every command, sidecar route, setting, metric family and JSON
output of the CLI is documented in the docs site (docs/, built with MkDocs), the generated
reference pages are current, every page is in the site's navigation, and the README stays a
short front page whose first lines are the two commands."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType

import click
import pytest
import yaml
from click.testing import CliRunner

from cli.main import cli
from sidecar.app import make_app
from sidecar.federation.fanout import federates
from sidecar.ops import metrics
from sidecar.pipeline import agent_api
from sidecar.pipeline import routes as memory_routes
from sidecar.security.auth import PUBLIC_PATHS, SIDECAR_PAGE_PREFIX, SIDECAR_PAGES
from signet_cluster.settings import FIELDS, Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = ROOT / "docs"
PAGES = {p.relative_to(DOCS_DIR).as_posix(): p.read_text() for p in sorted(DOCS_DIR.rglob("*.md"))}
DOCS = "\n".join(PAGES.values())
LINES = DOCS.splitlines()
README = (ROOT / "README.md").read_text()
# Pages an operator looks for (the issue that made the site lists them).
REQUIRED_PAGES = (
    "getting-started.md",
    "configuration.md",
    "deploy/three-hosts.md",
    "deploy/service.md",
    "deploy/transparent-mode.md",
    "deploy/macos.md",
    "operations/monitoring.md",
    "operations/key-rotation.md",
    "operations/upgrades.md",
    "operations/backup-restore.md",
    "operations/decommission.md",
    "operations/troubleshooting.md",
    "concepts/registry.md",
    "concepts/routing.md",
    "concepts/federation.md",
    "concepts/spool.md",
    "concepts/security.md",
    "performance.md",
    "reference/settings.md",
    "reference/cli.md",
    "reference/exit-codes.md",
    "reference/json-output.md",
    "reference/metrics.md",
    "reference/openapi.md",
)


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS_DIR / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_pages(entries: list[object]) -> list[str]:
    found: list[str] = []
    for entry in entries:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            if isinstance(value, list):
                found.extend(_nav_pages(value))
            else:
                found.append(str(value))
    return found


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in sorted(group.commands.items()):
        found.append((prefix + name, command))
        if isinstance(command, click.Group):
            found.extend(_commands(command, prefix + name + " "))
    return found


COMMANDS = _commands(cli)


def _routes(tmp_path: Path) -> list[tuple[str, str]]:
    app = make_app(Settings(state_dir=str(tmp_path), workspace=str(tmp_path)))
    found = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method in ("HEAD", "*") or "{tail" in path:
            continue  # aiohttp adds HEAD for GET; `*`/{tail} is the pass-through catch-all
        found.add((route.method, path))
    return sorted(found)


def test_the_site_has_every_page_in_its_navigation() -> None:
    """The pages an operator looks for exist, every page is in mkdocs.yml's nav, and every
    nav entry is a page."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["name"] == "material" and config["strict"] is True
    nav = _nav_pages(config["nav"])
    missing = [page for page in REQUIRED_PAGES if page not in PAGES]
    assert not missing, f"docs/ lacks the pages {missing}"
    assert sorted(nav) == sorted(PAGES), {
        "not in nav": sorted(set(PAGES) - set(nav)),
        "nav entries without a page": sorted(set(nav) - set(PAGES)),
    }


def test_generated_reference_pages_are_current() -> None:
    """docs/reference/{settings,cli,metrics,openapi}.md (and openapi.json) are what
    `python docs/gen_reference.py` writes from the code now: a new setting, command, metric or
    cluster route that was not regenerated fails here."""
    stale = _generator().stale()
    assert not stale, (
        f"stale generated docs {[str(p.relative_to(ROOT)) for p in stale]}: "
        "run .venv/bin/python docs/gen_reference.py"
    )


def test_readme_is_a_short_front_page_starting_with_the_two_commands() -> None:
    """At most 150 lines; its first commands are setting up and running the demo, then setting
    up and running the tests (CI runs that second one); it links to the docs."""
    lines = README.splitlines()
    assert len(lines) <= 150, f"README has {len(lines)} lines"
    commands = [line.strip() for line in lines[:12] if line.startswith("    ")]
    assert commands[:2] == [
        "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/signet-cluster demo",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/pytest",
    ], commands
    assert "docs/" in README and "CONTRIBUTING.md" in README


@pytest.mark.parametrize("name", [name for name, _ in COMMANDS])
def test_every_command_is_documented(name: str) -> None:
    """Each CLI command appears in the docs as `NAME ...` or `signet-cluster NAME ...`."""
    pattern = rf"`(signet-cluster )?{re.escape(name)}[` \[]"
    assert re.search(pattern, DOCS), f"docs/ does not document the command {name!r}"


def test_every_route_is_documented(tmp_path: Path) -> None:
    """Each route make_app registers (except the pass-through catch-all) is named in the
    docs on a line with its method, e.g. `GET /api/cluster/status`."""
    missing = []
    for method, path in _routes(tmp_path):
        documented = any(f"{path}`" in line and re.search(rf"\b{method}\b", line) for line in LINES)
        if not documented:
            missing.append(f"{method} {path}")
    assert not missing, f"docs/ does not document the routes {missing}"


SETTINGS_ROWS = PAGES.get("reference/settings.md", "").splitlines()


# A row of the README's table of daemon paths: | `METHOD` | `/path` | scope | what |
_DAEMON_ROW = re.compile(r"^\| `([A-Z*]+)` \| (`[^`]+`|every other path) \| ([a-z-]+) \|")


def _daemon_path_table() -> dict[tuple[str, str], str]:
    table: dict[tuple[str, str], str] = {}
    for line in LINES:
        match = _DAEMON_ROW.match(line)
        if match is not None:
            method, path, scope = match.groups()
            table[(method, path.strip("`"))] = scope
    return table


def _scopes_in_code() -> dict[tuple[str, str], str]:
    """Each daemon path the sidecar serves itself and how, as the code decides it."""
    scopes = {
        (method, path): "federated" if federates(kind, path) else "owner-routed"
        for method, path, kind in memory_routes.ROUTES
    }
    scopes |= {(method, path): scope for method, path, _, scope, _ in agent_api.ROUTES}
    return scopes


def test_the_daemon_path_table_matches_the_registered_routes(tmp_path: Path) -> None:
    """The README's table of daemon paths lists exactly the daemon paths make_app registers
    (every route outside the sidecar's own /api/cluster/*, pages and probes), each with the
    scope the code gives it, and says where every other path goes."""
    table = _daemon_path_table()
    assert table.pop(("*", "every other path"), None) == "local", "the pass-through row"
    registered = {
        (method, path)
        for method, path in _routes(tmp_path)
        if not path.startswith("/api/cluster/")
        and path not in PUBLIC_PATHS
        and path not in SIDECAR_PAGES
        and not path.startswith(SIDECAR_PAGE_PREFIX)
    }
    assert set(table) == registered, (
        f"README table lacks {sorted(registered - set(table))}, "
        f"lists unregistered {sorted(set(table) - registered)}"
    )
    code = _scopes_in_code()
    wrong = {k: (v, code.get(k)) for k, v in table.items() if code.get(k) != v}
    assert not wrong, f"README scope differs from the code (README, code): {wrong}"


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_setting_is_in_the_settings_table(name: str) -> None:
    """Each setting has a row in the settings reference: name, default, environment
    variable, meaning."""
    rows = [line for line in SETTINGS_ROWS if line.startswith(f"| `{name}` |")]
    assert rows, f"docs/reference/settings.md has no row for {name!r}"
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) >= 4 and all(cells[:4]), f"incomplete row for {name}: {rows[0]}"
    assert f"`{env_name(name)}`" in cells[2], f"{name}: the env column must say {env_name(name)}"


def test_every_metric_family_is_documented() -> None:
    """Each /metrics family (events and scrape-time state) is named in the docs."""
    fresh = metrics.Metrics.create()
    names = {m.name for m in fresh.registry.collect()}
    names |= {m.name for m in metrics.ClusterCollector.__new__(metrics.ClusterCollector).describe()}
    names |= {f"{metrics.PREFIX}_spool_depth", f"{metrics.PREFIX}_spool_oldest_age_seconds"}
    missing = sorted(n for n in names if n not in DOCS)
    assert not missing, f"docs/ does not document the metrics {missing}"


def test_every_json_output_is_described() -> None:
    """Each command with --json has its output described in the JSON output reference."""
    body = PAGES["reference/json-output.md"]
    for name, command in COMMANDS:
        if any(isinstance(p, click.Option) and "--json" in p.opts for p in command.params):
            assert f"`{name}" in body, f"JSON output of {name!r} is not described"


def test_every_command_has_help() -> None:
    """Every command (and subcommand) has a help text, and `--help` on it exits 0 and shows it."""
    runner = CliRunner()
    assert {"status", "join", "remove", "explain", "serve"} <= {name for name, _ in COMMANDS}
    for name, command in COMMANDS:
        assert (command.help or "").strip(), f"{name} has no help text"
        result = runner.invoke(cli, [*name.split(), "--help"], env={**os.environ})
        assert result.exit_code == 0, (name, result.output)
        first = (command.help or "").strip().splitlines()[0][:30]
        assert first in " ".join(result.output.split()), name


def test_architecture_names_only_modules_that_exist() -> None:
    """Every dotted module name in ARCHITECTURE.md's backquotes is a real module or package."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    names = set(re.findall(r"`((?:signet_cluster|sidecar|cli)(?:\.[a-z_0-9]+)*)", text))
    assert len(names) > 40
    missing = []
    for name in sorted(names):
        base = ROOT / name.replace(".", "/")
        if not (base.with_suffix(".py").exists() or (base / "__init__.py").exists()):
            missing.append(name)
    assert not missing, f"ARCHITECTURE.md names modules that do not exist: {missing}"
