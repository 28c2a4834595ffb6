"""Imports flow one way between packages (ARCHITECTURE.md, "Layers").

Each runtime import (not one under `if TYPE_CHECKING:`) of a project module is checked
against the layer order below: a module may import its own layer and the layers before it,
never one after it. The dev daemon is a separate program the sidecar never imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module belongs to the first (longest) prefix that names it.
LAYERS: tuple[tuple[str, ...], ...] = (
    # The core: value types, settings, state; no I/O beyond its own files.
    (
        "signet_cluster.errors",
        "signet_cluster.clock",
        "signet_cluster.converter",
        "signet_cluster.logconfig",
        "signet_cluster.protocol",
        "signet_cluster.settings",
        "signet_cluster.breaker",
        "signet_cluster.state",
        "signet_cluster.spool",
        "signet_cluster.admin",
        "signet_cluster.merge",
        "signet_cluster.registry",
        "signet_cluster",
    ),
    ("signet_cluster.security",),
    ("signet_cluster.etcd",),
    ("signet_cluster.daemon",),
    ("signet_cluster.explain",),
    ("signet_cluster.devdaemon",),
    # The sidecar, lowest first.
    ("sidecar.keys", "sidecar.bodies", "sidecar.middlewares", "sidecar"),
    ("sidecar.membership",),
    ("sidecar.security",),
    ("sidecar.etcd",),
    ("sidecar.memory",),
    ("sidecar.federation",),
    ("sidecar.pipeline",),
    ("sidecar.control",),
    ("sidecar.ops",),
    ("sidecar.app", "sidecar.runner"),
    ("cli",),
)
PACKAGES = ("signet_cluster", "sidecar", "cli")


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            named = module == prefix or module.startswith(prefix + ".")
            if named and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def runtime_imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    own = module_name(path)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = own.split(".")
                if path.name != "__init__.py":
                    base.pop()
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def project_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_import_flows_down_the_layers() -> None:
    wrong = []
    for path in project_modules():
        own = module_name(path)
        mine = layer_of(own)
        for line, target in runtime_imports(path):
            if layer_of(target) > mine:
                wrong.append(f"{path.relative_to(ROOT)}:{line} {own} imports {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_sidecar_never_imports_the_dev_daemon() -> None:
    for path in (ROOT / "sidecar").rglob("*.py"):
        for line, target in runtime_imports(path):
            assert not target.startswith("signet_cluster.devdaemon"), f"{path}:{line}"


@pytest.mark.parametrize(
    ("module", "imports", "allowed"),
    [
        ("sidecar.memory.proxy", "sidecar.membership.peers", True),
        ("sidecar.membership.heartbeat", "sidecar.memory.handoff", False),
        ("signet_cluster.registry", "sidecar.keys", False),
    ],
)
def test_the_checker_tells_right_from_wrong(module: str, imports: str, allowed: bool) -> None:
    assert (layer_of(imports) <= layer_of(module)) is allowed


def test_every_package_says_what_it_owns_and_may_import() -> None:
    inits = [p for pkg in ("sidecar", "signet_cluster") for p in (ROOT / pkg).rglob("__init__.py")]
    for path in sorted(inits):
        if path.parent.name == "static":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert "May import" in doc, f"{path.relative_to(ROOT)}: docstring lacks 'May import'"
