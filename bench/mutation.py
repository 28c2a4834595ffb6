"""Mutation score of the security core, module by module (run by hand; not part of CI).

    .venv/bin/pip install -e '.[mutation]'
    .venv/bin/python bench/mutation.py [--module merge ...] [--max-children 1] [--report-only]

For each module (one at a time, so the machine is not swamped) it runs `mutmut run` on that
module's mutants only. mutmut (configured under [tool.mutmut] in pyproject.toml) copies the
packages into `mutants/`, records which tests of the configured selection call each function,
and runs each mutant against just those tests. Then it reads mutmut's per-file results and
prints a table and a JSON document:

- `score`: detected mutants (killed or timed out) / all mutants; a mutant no test reaches
  counts as surviving.
- `score_excluding_equivalents`: the same with the mutants listed in
  docs/mutation-equivalents.md left out (they cannot be detected: the program behaves the
  same).
- `unexplained`: survivors not listed there, i.e. missing tests; `stale_listings`: listed
  mutants that no longer survive (killed now, or renumbered after an edit of the module).

`--report-only` skips the runs and reports what `mutants/` holds from the last ones. mutmut's
own `mutmut show NAME` prints a mutant's diff. Logs of each run go to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "docs" / "mutation-equivalents.md"
RESULTS = ROOT / "bench" / "results"

# short name -> source file; the mutant names of a file start with its dotted module path.
MODULES: dict[str, str] = {
    "signing": "signet_cluster/security/signing.py",
    "roles": "signet_cluster/security/roles.py",
    "visibility": "signet_cluster/daemon/visibility.py",
    "owner_checks": "sidecar/memory/owner_checks.py",
    "agent_resolution": "signet_cluster/daemon/agent_resolution.py",
    "registry": "signet_cluster/registry.py",
    "merge": "signet_cluster/merge.py",
}

# mutmut's exit codes per mutant (mutmut/stats.py): what counts as detected.
DETECTED = {1, 3, 36, 24, -24, 152, 255, 37}  # killed, pytest error, timeouts, type check
SURVIVED = {0}
NO_TESTS = {5, 33}

_LISTED = re.compile(r"`((?:signet_cluster|sidecar|cli)\.[^`\s]+__mutmut_\d+)`")


def dotted(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def listed_equivalents() -> set[str]:
    if not EQUIVALENTS.exists():
        return set()
    return set(_LISTED.findall(EQUIVALENTS.read_text(encoding="utf-8")))


def run_module(name: str, max_children: int) -> float:
    """Run mutmut on one module's mutants; returns the CPU seconds its processes used."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"mutation-{name}.log"
    pattern = dotted(MODULES[name]) + ".*"
    before = _children_cpu()
    with log.open("w") as out:
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "mutmut"),
                "run",
                pattern,
                "--max-children",
                str(max_children),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if proc.returncode != 0:
        sys.exit(f"mutmut failed on {name} (exit {proc.returncode}); see {log}")
    return _children_cpu() - before


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def module_report(name: str, equivalents: set[str]) -> dict[str, Any]:
    meta = ROOT / "mutants" / (MODULES[name] + ".meta")
    if not meta.exists():
        return {"module": name, "error": f"no results in {meta.relative_to(ROOT)}: run it first"}
    codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
    prefix = dotted(MODULES[name]) + "."
    codes = {k: v for k, v in codes.items() if k.startswith(prefix)}
    detected = sorted(k for k, v in codes.items() if v in DETECTED)
    survived = sorted(k for k, v in codes.items() if v in SURVIVED or v in NO_TESTS)
    not_run = sorted(k for k, v in codes.items() if v is None)
    other = sorted(k for k, v in codes.items() if k not in {*detected, *survived, *not_run})
    total = len(codes)
    listed = {k for k in equivalents if k.startswith(prefix)}
    excused = [k for k in survived if k in listed]
    unexplained = [k for k in survived if k not in listed]
    considered = total - len(excused)
    return {
        "module": name,
        "file": MODULES[name],
        "mutants": total,
        "killed": len(detected),
        "survived": len(survived),
        "not_run": len(not_run),
        "other": len(other),
        "equivalent": len(excused),
        "score": round(100 * len(detected) / total, 1) if total else None,
        "score_excluding_equivalents": (
            round(100 * len(detected) / considered, 1) if considered else None
        ),
        "unexplained": unexplained,
        "stale_listings": sorted(listed - set(survived)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES))
    parser.add_argument("--max-children", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    names = args.module or list(MODULES)
    cpu: dict[str, float] = {}
    wall: dict[str, float] = {}
    if not args.report_only:
        for name in names:
            started = time.monotonic()
            cpu[name] = round(run_module(name, args.max_children), 1)
            wall[name] = round(time.monotonic() - started, 1)
    equivalents = listed_equivalents()
    reports = [module_report(name, equivalents) for name in names]
    for report in reports:
        if report["module"] in cpu:
            report["cpu_s"] = cpu[report["module"]]
            report["wall_s"] = wall[report["module"]]
    print(
        f"{'module':<18}{'mutants':>8}{'killed':>8}{'survived':>9}{'equiv.':>7}"
        f"{'score %':>9}{'excl. equiv. %':>16}"
    )
    for r in reports:
        if "error" in r:
            print(f"{r['module']:<18}{r['error']}")
            continue
        print(
            f"{r['module']:<18}{r['mutants']:>8}{r['killed']:>8}{r['survived']:>9}"
            f"{r['equivalent']:>7}{r['score']:>9}{r['score_excluding_equivalents']:>16}"
        )
    for r in reports:
        for key in ("unexplained", "stale_listings"):
            if r.get(key):
                print(f"{r['module']} {key.replace('_', ' ')}: {', '.join(r[key])}")
    print(json.dumps({"modules": reports}, indent=2))


if __name__ == "__main__":
    main()
