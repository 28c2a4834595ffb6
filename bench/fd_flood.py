"""Bench: a flood of idle connections against a sidecar with few file descriptors (run by
hand; not part of CI).

    .venv/bin/python bench/fd_flood.py [--fd-limit 1024] [--connections 1100]
        [--seconds 20] [--json-only]

Starts a dev daemon and `signet-cluster serve` (its own process) with the open-files limit
set to `--fd-limit` (soft = hard, so the sidecar cannot raise it: the worst case), then opens
`--connections` idle connections (the incident: 1,100 under the default 1024) and holds
them for `--seconds` while probing `/livez` and a pass-through `GET /api/status` every 0.5 s
on fresh connections. Prints a table and a JSON document: probes answered and their
latency, what the sidecar's log grew by (bytes, lines), its CPU time over the flood (from
/proc/PID/stat), and what its /readyz said. Loopback only; bounded in time; stops everything
it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PY = sys.executable
HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def get(port: int, path: str, timeout: float = 5.0) -> tuple[int | None, float, bytes]:
    """(status or None, seconds, body head) on a fresh connection."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
    except (OSError, TimeoutError):
        return None, time.monotonic() - started, b""
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(4096), timeout)
    except (OSError, TimeoutError):
        return None, time.monotonic() - started, b""
    finally:
        writer.close()
    elapsed = time.monotonic() - started
    if not data.startswith(b"HTTP/1."):
        return None, elapsed, data[:200]
    return int(data.split(b" ", 2)[1]), elapsed, data.split(b"\r\n\r\n", 1)[-1][:300]


async def wait_up(port: int, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        status, _, _ = await get(port, "/livez", 1.0)
        if status == 200:
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"port {port} did not come up")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="signet-fdflood-"))
    daemon_port, port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNET_CLUSTER_")}
    env["PYTHONPATH"] = str(ROOT)
    daemon = await asyncio.create_subprocess_exec(
        *[PY, "-m", "cli", "devdaemon", "--port", str(daemon_port), "--path", str(root / "ws")],
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    log_path = root / "sidecar.log"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.fd_limit, args.fd_limit))

    with log_path.open("wb") as log_file:
        sidecar = await asyncio.create_subprocess_exec(
            *[PY, "-m", "cli", "serve", "--port", str(port), "--coordinator"],
            env={
                **env,
                "SIGNET_CLUSTER_DAEMON_URL": f"http://{HOST}:{daemon_port}",
                "SIGNET_CLUSTER_WORKSPACE": str(root / "ws"),
                "SIGNET_CLUSTER_STATE_DIR": str(root / "state"),
                "SIGNET_CLUSTER_LOG_FORMAT": "json",
            },
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
            preexec_fn=limit,
        )
    writers: list[asyncio.StreamWriter] = []
    try:
        await wait_up(port)
        await asyncio.sleep(1.0)  # the first daemon probe
        log_before = log_path.stat().st_size
        cpu_before = cpu_seconds(sidecar.pid)
        opened = 0
        for _ in range(args.connections):
            try:
                _r, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
            except (OSError, TimeoutError):
                continue
            writers.append(writer)
            opened += 1
        probes: list[dict[str, Any]] = []
        readyz: list[str] = []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            for path in ("/livez", "/api/status"):
                status, seconds, _ = await get(port, path)
                probes.append({"path": path, "status": status, "ms": round(seconds * 1000, 1)})
            status, _, body = await get(port, "/readyz")
            readyz.append(f"{status} {body.decode(errors='replace')[:160]}")
            await asyncio.sleep(0.5)
        cpu = cpu_seconds(sidecar.pid) - cpu_before
        log_bytes = log_path.stat().st_size - log_before
        log_lines = log_path.read_bytes()[log_before:].count(b"\n")
    finally:
        for writer in writers:
            writer.close()
        for proc in (sidecar, daemon):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (sidecar, daemon):
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(root, ignore_errors=True)

    def summary(path: str) -> dict[str, Any]:
        mine = [p for p in probes if p["path"] == path]
        answered = [p for p in mine if p["status"] == 200]
        ms = sorted(p["ms"] for p in answered)
        return {
            "probes": len(mine),
            "answered_200": len(answered),
            "statuses": sorted({str(p["status"]) for p in mine}),
            "median_ms": ms[len(ms) // 2] if ms else None,
            "max_ms": ms[-1] if ms else None,
        }

    return {
        "fd_limit": args.fd_limit,
        "connections_opened": opened,
        "seconds": args.seconds,
        "livez": summary("/livez"),
        "api_status_passthrough": summary("/api/status"),
        "readyz_seen": sorted(set(readyz))[:5],
        "log_bytes": log_bytes,
        "log_lines": log_lines,
        "log_bytes_per_s": round(log_bytes / args.seconds),
        "sidecar_cpu_s": round(cpu, 2),
    }


def table(result: dict[str, Any]) -> str:
    lines = [f"{'probe':<12} {'probes':>6} {'200s':>5} {'median ms':>10} {'max ms':>8}  statuses"]
    for name in ("livez", "api_status_passthrough"):
        s = result[name]
        lines.append(
            f"{name:<12} {s['probes']:>6} {s['answered_200']:>5} {s['median_ms']!s:>10} "
            f"{s['max_ms']!s:>8}  {','.join(s['statuses'])}"
        )
    lines.append(
        f"{result['connections_opened']} idle connections, fd limit {result['fd_limit']}; log "
        f"{result['log_bytes']} bytes ({result['log_lines']} lines) in {result['seconds']} s; "
        f"sidecar CPU {result['sidecar_cpu_s']} s"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fd-limit", type=int, default=1024)
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 300:
        raise SystemExit("--seconds: 1-300 (the bench is bounded in time)")
    if args.connections > resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 64:
        with contextlib.suppress(ValueError, OSError):
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(run(args))
    if not args.json_only:
        print(table(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
