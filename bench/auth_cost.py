"""What request signing costs (run by hand; not part of CI).

    .venv/bin/python bench/auth_cost.py [--iterations 20000] [--requests 2000] [--json-only]

1. In process: signing and verifying one request (HMAC-SHA256 over the canonical string and
   the body's SHA-256, plus the replay cache) for bodies of 0 B, 1 KiB, and 150 KiB (a
   heartbeat with 1,000 agents), in microseconds per request.
2. End to end on loopback: `GET /api/cluster/info` of a real sidecar (its own process, beside
   a dev daemon), unsigned versus signed, at concurrency 1: p50/p99 latency and the
   difference.
Prints a table and a JSON document. Loopback only; stops what it starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from signet_cluster.security.keyring import generate_secret, load_secret_file, new_key
from signet_cluster.security.signing import Presented, ReplayCache, Signer, Verifier

PY = sys.executable
HOST = "127.0.0.1"


def in_process(iterations: int) -> dict[str, Any]:
    key = new_key(generate_secret(), "k1")
    from signet_cluster.security.keyring import Keyring

    ring = Keyring(keys=(key,), primary=key.id)
    signer = Signer(lambda: ring, "node-a", wall=time.time)
    results: dict[str, Any] = {}
    for label, size in (("0 B", 0), ("1 KiB", 1024), ("150 KiB", 150 * 1024)):
        body = os.urandom(size)
        verifier = Verifier(lambda: ring, skew_s=30, cache=ReplayCache(iterations + 10, 30_000))
        count = max(200, iterations // (1 + size // 4096))
        started = time.perf_counter()
        headers = [
            signer.headers("POST", "h:1", "/api/cluster/heartbeat", body) for _ in range(count)
        ]
        signed = time.perf_counter()
        now = time.time()
        for h in headers:
            presented = Presented.parse(h)
            assert presented is not None
            verifier.verify(
                presented,
                method="POST",
                host="h:1",
                path_qs="/api/cluster/heartbeat",
                body=body,
                now=now,
            )
        done = time.perf_counter()
        results[label] = {
            "sign_us": round((signed - started) / count * 1e6, 2),
            "verify_us": round((done - signed) / count * 1e6, 2),
            "iterations": count,
        }
    return results


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


async def wait_http(url: str) -> None:
    end = time.monotonic() + 20
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < end:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def end_to_end(requests: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="signet-authcost-"))
    secret = root / "cluster.key"
    secret.write_text(generate_secret() + "\n")
    ring = load_secret_file(secret)
    daemon_port, port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNET_CLUSTER_")}
    daemon = await asyncio.create_subprocess_exec(
        PY,
        "-m",
        "cli",
        "devdaemon",
        "--port",
        str(daemon_port),
        "--path",
        str(root / "ws"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    sidecar = await asyncio.create_subprocess_exec(
        PY,
        "-m",
        "cli",
        "serve",
        "--coordinator",
        "--port",
        str(port),
        "--daemon-url",
        f"http://{HOST}:{daemon_port}",
        "--workspace",
        str(root / "ws"),
        "--state-dir",
        str(root / "state"),
        env={**env, "SIGNET_CLUSTER_SECRET_FILE": str(secret), "SIGNET_CLUSTER_LOG_LEVEL": "error"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://{HOST}:{port}"
    host = f"{HOST}:{port}"
    signer = Signer(lambda: ring, "bench", wall=time.time)
    try:
        await wait_http(base + "/livez")
        out: dict[str, Any] = {}
        async with aiohttp.ClientSession() as session:
            for label, signed in (("unsigned", False), ("signed", True), ("unsigned again", False)):
                times: list[float] = []
                for _ in range(requests):
                    headers = {"Host": host}
                    if signed:
                        headers.update(signer.headers("GET", host, "/api/cluster/info", b""))
                    started = time.perf_counter()
                    async with session.get(base + "/api/cluster/info", headers=headers) as resp:
                        await resp.read()
                        assert resp.status == 200, resp.status
                    times.append((time.perf_counter() - started) * 1000)
                out[label] = {
                    "p50_ms": round(statistics.median(times), 3),
                    "p99_ms": round(pct(times, 0.99), 3),
                }
        out["signed_minus_unsigned_p50_ms"] = round(
            out["signed"]["p50_ms"]
            - (out["unsigned"]["p50_ms"] + out["unsigned again"]["p50_ms"]) / 2,
            3,
        )
        return out
    finally:
        for proc in (sidecar, daemon):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    result = {
        "in_process": in_process(args.iterations),
        "loopback": asyncio.run(end_to_end(args.requests)),
    }
    if not args.json_only:
        print(f"{'body':>8} {'sign (us)':>10} {'verify (us)':>12}")
        for label, row in result["in_process"].items():
            print(f"{label:>8} {row['sign_us']:>10} {row['verify_us']:>12}")
        print(f"{'GET /api/cluster/info':<24} {'p50 ms':>8} {'p99 ms':>8}")
        for label in ("unsigned", "signed", "unsigned again"):
            row = result["loopback"][label]
            print(f"{label:<24} {row['p50_ms']:>8} {row['p99_ms']:>8}")
        print(f"signed - unsigned p50: {result['loopback']['signed_minus_unsigned_p50_ms']} ms")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
