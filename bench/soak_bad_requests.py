"""Soak: a sidecar's memory under a flood of bad requests (run by hand; not part of CI).

    .venv/bin/python bench/soak_bad_requests.py [--seconds 60] [--concurrency 32]
        [--replay-cache-size 20000] [--json-only]

Starts a dev daemon and a coordinator sidecar (`signet-cluster serve`, its own process, with a
cluster key) on loopback, then for `--seconds` sends, round-robin from `--concurrency`
workers: unsigned admin calls, signatures with an unknown key, tampered bodies, replays,
stale timestamps, correctly signed but invalid messages (these fill the replay cache, which
must stop at its size), malformed JSON, oversized bodies, oversized headers, garbage bytes on
raw connections, half-sent requests that are abandoned, absolute-form request targets
(`GET http://x/health`), over-long request lines, and recalls whose `limit` is an integer too
large for a float (on a federated read: a second sidecar contributes). Every second it samples
the sidecar's RSS (/proc/PID/status). Prints a table of RSS over time and a JSON document:
requests by kind and status, RSS at start / peak / end, growth over the second half, whether
the sidecar still answers /livez, and what the flood put in its log (bytes, lines, longest
line, tracebacks; the sidecar logs at `warning`). Loopback only; bounded in time; stops
everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from signet_cluster.security.keyring import Keyring, generate_secret, load_secret_file, new_key
from signet_cluster.security.signing import Signer

PY = sys.executable
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def wait_http(url: str, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
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


# A signature covers Content-Type (signet_cluster.security.signing).
JSON_CT = {"Content-Type": "application/json"}


class Flood:
    def __init__(self, base: str, port: int, keyring: Keyring) -> None:
        self.base = base
        self.port = port
        self.host = f"{HOST}:{port}"
        self.good = Signer(lambda: keyring, "soak", wall=time.time)
        wrong = new_key(generate_secret(), "not-installed")
        self.wrong = Signer(
            lambda: Keyring(keys=(wrong,), primary=wrong.id), "soak", wall=time.time
        )
        self.stale = Signer(lambda: keyring, "soak", wall=lambda: time.time() - 3600)
        self.statuses: Counter[str] = Counter()
        self.sent = 0
        self.replay_headers = self.good.headers(
            "POST", self.host, "/api/cluster/join", b"{}", JSON_CT
        )

    async def http(
        self,
        session: aiohttp.ClientSession,
        kind: str,
        method: str,
        path: str,
        body: bytes,
        headers: dict[str, str],
    ) -> None:
        try:
            async with session.request(
                method, self.base + path, data=body, headers={"Host": self.host, **headers}
            ) as resp:
                await resp.read()
                self.statuses[f"{kind}:{resp.status}"] += 1
        except (aiohttp.ClientError, OSError) as exc:
            self.statuses[f"{kind}:{type(exc).__name__}"] += 1
        self.sent += 1

    async def raw(self, kind: str, data: bytes, abandon: bool = False) -> None:
        try:
            reader, writer = await asyncio.open_connection(HOST, self.port)
            writer.write(data)
            await writer.drain()
            if not abandon:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(256), 2)
            writer.close()
            self.statuses[f"{kind}:sent"] += 1
        except OSError as exc:
            self.statuses[f"{kind}:{type(exc).__name__}"] += 1
        self.sent += 1

    async def one(self, session: aiohttp.ClientSession, n: int) -> None:
        json_ct = JSON_CT
        kind = n % 14
        if kind == 0:
            await self.http(session, "unsigned_admin", "POST", "/api/cluster/join", b"{}", json_ct)
        elif kind == 1:
            body = b'{"address": "127.0.0.1:1"}'
            await self.http(
                session,
                "unknown_key",
                "POST",
                "/api/cluster/join",
                body,
                {
                    **json_ct,
                    **self.wrong.headers("POST", self.host, "/api/cluster/join", body, json_ct),
                },
            )
        elif kind == 2:
            headers = self.good.headers("POST", self.host, "/api/cluster/join", b"{}", JSON_CT)
            await self.http(
                session, "tampered", "POST", "/api/cluster/join", b'{"a":1}', {**json_ct, **headers}
            )
        elif kind == 3:
            await self.http(
                session,
                "replayed",
                "POST",
                "/api/cluster/join",
                b"{}",
                {**json_ct, **self.replay_headers},
            )
        elif kind == 4:
            await self.http(
                session,
                "stale",
                "GET",
                "/api/cluster/status",
                b"",
                self.stale.headers("GET", self.host, "/api/cluster/status", b""),
            )
        elif kind == 5:
            body = json.dumps({"node_id": "soak", "agents": [{"id": "x" * 200}] * 50}).encode()
            await self.http(
                session,
                "signed_invalid",
                "POST",
                "/api/cluster/heartbeat",
                body,
                {
                    **json_ct,
                    **self.good.headers("POST", self.host, "/api/cluster/heartbeat", body, json_ct),
                },
            )
        elif kind == 6:
            body = b"{not json" * 100
            await self.http(
                session,
                "bad_json",
                "POST",
                "/api/cluster/adopt",
                body,
                {
                    **json_ct,
                    **self.good.headers("POST", self.host, "/api/cluster/adopt", body, json_ct),
                },
            )
        elif kind == 7:
            await self.http(
                session,
                "oversized",
                "POST",
                "/api/cluster/heartbeat",
                b"x" * (2 * 1024 * 1024),
                json_ct,
            )
        elif kind == 8:
            await self.raw(
                "big_header",
                b"GET /livez HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 20000 + b"\r\n\r\n",
            )
        elif kind == 9:
            await self.raw("garbage", os.urandom(4096) + b"\r\n\r\n")
        elif kind == 11:
            await self.raw("absolute_form", b"GET http://x/health HTTP/1.1\r\nHost: x\r\n\r\n")
        elif kind == 12:
            await self.raw("long_line", b"GET /" + b"A" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        elif kind == 13:
            body = b'{"query": "deploy", "agentId": "soak", "limit": ' + b"9" * 4000 + b"}"
            await self.http(session, "huge_limit", "POST", "/api/memory/recall", body, json_ct)
        else:
            await self.raw(
                "abandoned",
                b"POST /api/cluster/heartbeat HTTP/1.1\r\nHost: x\r\nContent-Length: 999\r\n\r\n{",
                abandon=True,
            )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="signet-soak-"))
    secret = root / "cluster.key"
    secret.write_text(generate_secret() + "\n")
    secret.chmod(0o600)
    keyring = load_secret_file(secret)
    daemon_port, port = free_port(), free_port()
    daemon2_port, port2 = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNET_CLUSTER_")}
    procs = []
    for ws, dport, agent in (("ws", daemon_port, "soak"), ("ws2", daemon2_port, "other")):
        (root / ws).mkdir()
        # A shared reader, so a recall fans out to the second node.
        (root / ws / "agent.yaml").write_text(
            f"agents:\n  roster:\n  - name: {agent}\n    memory: {{read_policy: shared}}\n"
        )
        procs.append(
            await asyncio.create_subprocess_exec(
                *[PY, "-m", "cli", "devdaemon", "--port", str(dport), "--path", str(root / ws)],
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )
        await wait_http(f"http://{HOST}:{dport}/health")
    sidecar_env = {
        **env,
        "SIGNET_CLUSTER_SECRET_FILE": str(secret),
        "SIGNET_CLUSTER_REPLAY_CACHE_SIZE": str(args.replay_cache_size),
        "SIGNET_CLUSTER_IDLE_TIMEOUT": "5",
        "SIGNET_CLUSTER_BODY_TIMEOUT": "5",
        "SIGNET_CLUSTER_LOG_LEVEL": "warning",
        "SIGNET_CLUSTER_LOG_FORMAT": "json",
    }
    log_path = root / "sidecar.log"
    log_file = log_path.open("wb")  # closed in the finally below
    sidecar = await asyncio.create_subprocess_exec(
        *[
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
        ],
        env=sidecar_env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log_file,
    )
    procs.append(sidecar)
    member = await asyncio.create_subprocess_exec(
        *[
            PY,
            "-m",
            "cli",
            "serve",
            "--port",
            str(port2),
            "--coordinators",
            f"http://{HOST}:{port}",
            "--daemon-url",
            f"http://{HOST}:{daemon2_port}",
            "--workspace",
            str(root / "ws2"),
            "--state-dir",
            str(root / "state2"),
        ],
        env={**sidecar_env, "SIGNET_CLUSTER_LOG_LEVEL": "error"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    procs.append(member)
    base = f"http://{HOST}:{port}"
    try:
        await wait_http(base + "/livez")
        await wait_http(f"http://{HOST}:{port2}/readyz")
        flood = Flood(base, port, keyring)
        samples: list[tuple[float, int, int]] = [(0.0, rss_kib(sidecar.pid), 0)]
        started = time.monotonic()
        stop = started + args.seconds
        counter = itertools.count()

        async def worker() -> None:
            connector = aiohttp.TCPConnector(limit=0, force_close=False)
            async with aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=10)
            ) as session:
                while time.monotonic() < stop:
                    await flood.one(session, next(counter))

        async def sampler() -> None:
            while time.monotonic() < stop:
                await asyncio.sleep(1.0)
                samples.append((time.monotonic() - started, rss_kib(sidecar.pid), flood.sent))

        await asyncio.gather(sampler(), *(worker() for _ in range(args.concurrency)))
        async with aiohttp.ClientSession() as session, session.get(base + "/livez") as resp:
            alive = resp.status == 200
        half = [s[1] for s in samples if s[0] >= args.seconds / 2]
        log_file.flush()
        log_text = log_path.read_bytes().decode("utf-8", "replace")
        log_lines = log_text.splitlines()
        return {
            "seconds": args.seconds,
            "concurrency": args.concurrency,
            "replay_cache_size": args.replay_cache_size,
            "requests": flood.sent,
            "requests_per_s": round(flood.sent / args.seconds, 1),
            "by_kind_and_status": dict(sorted(flood.statuses.items())),
            "server_errors_5xx": sum(
                v for k, v in flood.statuses.items() if k.split(":")[1].startswith("5")
            ),
            "rss_kib": {
                "start": samples[0][1],
                "peak": max(s[1] for s in samples),
                "end": samples[-1][1],
                "second_half_growth": (half[-1] - half[0]) if half else None,
            },
            "samples": [{"t_s": round(t, 1), "rss_kib": r, "requests": n} for t, r, n in samples],
            "still_alive": alive,
            "log": {
                "bytes": len(log_text),
                "lines": len(log_lines),
                "longest_line": max((len(line) for line in log_lines), default=0),
                "tracebacks": log_text.count("Traceback"),
            },
            "sidecar_exit_code": sidecar.returncode,
        }
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log_file.close()
        if args.keep_log:
            print(log_path.read_text(errors="replace"), file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)


def table(result: dict[str, Any]) -> str:
    lines = [f"{'t (s)':>7} {'RSS (MiB)':>10} {'requests':>9}"]
    for s in result["samples"]:
        lines.append(f"{s['t_s']:>7} {s['rss_kib'] / 1024:>10.1f} {s['requests']:>9}")
    r = result["rss_kib"]
    lines.append(
        f"requests {result['requests']} ({result['requests_per_s']}/s), 5xx {result['server_errors_5xx']}, "
        f"RSS start {r['start'] / 1024:.1f} MiB, peak {r['peak'] / 1024:.1f} MiB, end {r['end'] / 1024:.1f} MiB, "
        f"second-half growth {(r['second_half_growth'] or 0) / 1024:.1f} MiB, alive {result['still_alive']}"
    )
    log = result["log"]
    lines.append(
        f"log {log['bytes']} bytes in {log['lines']} lines (longest {log['longest_line']}), "
        f"tracebacks {log['tracebacks']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--replay-cache-size", type=int, default=20000)
    parser.add_argument("--json-only", action="store_true")
    parser.add_argument("--keep-log", action="store_true", help="print the sidecar log to stderr")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 1800:
        raise SystemExit("--seconds: 1-1800 (the soak is bounded in time)")
    result = asyncio.run(run(args))
    if not args.json_only:
        print(table(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
