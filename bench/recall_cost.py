"""What one recall costs a real Signet 0.145.7 daemon, and the dev daemon beside it (run by
hand; not part of CI). The figures are the defaults of the dev daemon's recall-cost knob
(`--recall-cost real`, `signet_cluster/devdaemon/cost.py`).

    .venv/bin/python bench/recall_cost.py [--calls 150] [--json-only]

Method: one daemon in a fresh workspace, seeded with 60 memories matching the query and 100
that do not; for recall limits 1, 10, 25 and 50 (after 20 warm-up calls), `--calls`
sequential recalls over one keep-alive connection. Per call: the daemon's CPU time (user +
system from /proc, all threads, divided by the calls), wall p50/p99, rows and bytes of the
answer. CPU per call and per row are the least-squares line of CPU time against rows; the
fixed latency is the wall p50 at limit 1 minus its CPU time (time the daemon answers off
the CPU). The same run against the dev daemon with the knob off and on shows how close the
imitation is. CPU clock ticks are 10 ms, so use enough calls; on a loaded machine the CPU
figures hold better than the wall ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from proxy import PY, Conn, cpu_seconds, pct, start, wait_http

from tests.real_signet import REAL_SIGNET, low_free_port, write_real_roster

LIMITS = (1, 10, 25, 50)
QUERY = "zebra deploy runbook"


async def seed(port: int) -> None:
    for n in range(160):
        word = "zebra deploy runbook" if n < 60 else "unrelated gardening"
        body = {"content": f"note {n}: {word} step {n * 7919 % 1000}", "agentId": "default"}
        conn = Conn(port, "/api/memory/remember", json.dumps(body).encode())
        await conn.open()
        assert await conn.once() == 200, conn.body
        await conn.close()


async def profile(port: int, pid: int, calls: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for limit in LIMITS:
        body = json.dumps({"query": QUERY, "limit": limit}).encode()
        conn = Conn(port, "/api/memory/recall", body)
        await conn.open()
        for _ in range(20):
            assert await conn.once() == 200
        latencies = []
        cpu_before = cpu_seconds([pid])
        for _ in range(calls):
            started = time.perf_counter()
            assert await conn.once() == 200
            latencies.append(time.perf_counter() - started)
        cpu = (cpu_seconds([pid]) - cpu_before) / calls
        answer = json.loads(conn.body)
        await conn.close()
        rows.append(
            {
                "limit": limit,
                "rows": len(answer["results"]),
                "bytes": len(conn.body),
                "cpu_ms": round(cpu * 1000, 3),
                "p50_ms": round(pct(latencies, 0.5), 3),
                "p99_ms": round(pct(latencies, 0.99), 3),
            }
        )
    return rows


def fit(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Least squares of CPU ms and bytes against rows; fixed latency from limit 1."""
    xs = [r["rows"] for r in rows]
    mean_x = sum(xs) / len(xs)
    spread = sum((x - mean_x) ** 2 for x in xs) or 1.0

    def line(key: str) -> tuple[float, float]:
        ys = [r[key] for r in rows]
        mean_y = sum(ys) / len(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
        return mean_y - slope * mean_x, slope

    cpu_call, cpu_row = line("cpu_ms")
    bytes_call, bytes_row = line("bytes")
    first = rows[0]
    return {
        "cpu_ms_per_call": round(max(0.0, cpu_call), 3),
        "cpu_ms_per_row": round(max(0.0, cpu_row), 4),
        "latency_ms": round(max(0.0, first["p50_ms"] - first["cpu_ms"]), 3),
        "bytes_per_call": round(bytes_call),
        "bytes_per_row": round(bytes_row),
    }


async def real(root: Path, calls: int) -> dict[str, Any]:
    ws = root / "real"
    write_real_roster(ws, "0.145.7", [])
    port = low_free_port(23000)
    out = await asyncio.to_thread(
        subprocess.run,
        [str(REAL_SIGNET / "start-daemon"), "0.145.7", str(port), str(ws)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    pid = int(out.stdout.strip().splitlines()[-1])
    try:
        await seed(port)
        rows = await profile(port, pid, calls)
    finally:
        await asyncio.to_thread(
            subprocess.run, [str(REAL_SIGNET / "stop-daemon"), str(ws)], capture_output=True
        )
    return {"rows": rows, "fit": fit(rows)}


async def dev(root: Path, calls: int, cost: str) -> dict[str, Any]:
    ws = root / f"dev-{cost}"
    ws.mkdir()
    port = low_free_port(23500)
    args = [PY, "-m", "signet_cluster.devdaemon", "--port", str(port), "--path", str(ws)]
    proc = start([*args, "--recall-cost", cost], root / f"dev-{cost}.log")
    try:
        await wait_http(port, "/health")
        await seed(port)
        rows = await profile(port, proc.pid, calls)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return {"rows": rows, "fit": fit(rows)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=150)
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="signet-bench-recall-cost-"))
    try:
        report: dict[str, Any] = {}
        if not args.skip_real:
            report["real_0.145.7"] = await real(root, args.calls)
        report["dev_cost_off"] = await dev(root, args.calls, "off")
        report["dev_cost_real"] = await dev(root, args.calls, "real")
        report["machine"] = {"cpus": os.cpu_count(), "loadavg": os.getloadavg()}
        print(json.dumps(report, indent=2))
        if not args.json_only:
            print(
                f"\n{'daemon':<16}{'limit':>6}{'rows':>6}{'bytes':>8}{'cpu ms':>9}{'p50 ms':>9}{'p99 ms':>9}"
            )
            for name, result in report.items():
                if name == "machine":
                    continue
                for r in result["rows"]:
                    print(
                        f"{name:<16}{r['limit']:>6}{r['rows']:>6}{r['bytes']:>8}"
                        f"{r['cpu_ms']:>9.3f}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}"
                    )
                print(f"{'':<16}fit: {result['fit']}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
