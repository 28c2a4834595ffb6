"""Proxy overhead benchmark (run by hand; not part of CI).

    .venv/bin/python bench/proxy.py [--requests 3000] [--json-only] [--uvloop]

(`--uvloop` runs the sidecars on uvloop for comparison; `pip install uvloop` first. It saved
about 3 % of the sidecar's CPU per request here, so the sidecar does not use it.)

Recall latency p50/p99 at concurrency 1 and 8, in one run, for:
  (a) direct       the dev daemon itself
  (b) sidecar      through a local sidecar (a `default` recall on a one-node cluster, so
                   nothing fans out: the pure proxy path)
  (c) nginx        through an nginx reverse proxy (keep-alive upstream) to the same daemon
  (d) remote       an isolated agent on another node, through two sidecars (one hop)
Each (b)-(d) overhead is reported over its direct baseline ((d): the remote daemon asked
directly as that agent), and the ratio of (b)'s overhead to (c)'s. `cpu_us_per_request` is the
CPU time the process(es) in front of the daemon spent per request (for `a_direct`, the
daemon's own): on a busy machine it attributes cost better than wall-clock latency.

Every server runs in its own process (`signet-cluster devdaemon`, `signet-cluster serve`,
nginx from a temporary config on loopback); the load generator is a minimal keep-alive
HTTP/1.1 client so its own cost stays small and equal for every target. nginx is taken from
PATH (installed with `apt-get install nginx-light` when missing and running as root).
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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

PY = sys.executable
QUERY = {"query": "vim editor keybindings", "limit": 10}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Conn:
    """One keep-alive HTTP/1.1 connection sending a fixed request (Content-Length bodies)."""

    def __init__(self, port: int, path: str, body: bytes) -> None:
        self.port = port
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.body = b""

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def once(self) -> int:
        assert self.reader is not None and self.writer is not None
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        self.body = await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


async def measure(port: int, body: dict[str, Any], requests: int, concurrency: int) -> list[float]:
    data = json.dumps(body).encode()
    conns = [Conn(port, "/api/memory/recall", data) for _ in range(concurrency)]
    for conn in conns:
        await conn.open()
    for conn in conns:  # warm-up: connections to the upstream, caches
        for _ in range(100):
            assert await conn.once() == 200
    latencies: list[float] = []
    per = requests // concurrency

    async def worker(conn: Conn) -> None:
        for _ in range(per):
            started = time.perf_counter()
            status = await conn.once()
            latencies.append(time.perf_counter() - started)
            assert status == 200, status

    await asyncio.gather(*(worker(c) for c in conns))
    for conn in conns:
        await conn.close()
    return latencies


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


async def wait_http(port: int, path: str, timeout: float = 20.0, want: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = await reader.read()
            writer.close()
            if data.startswith(b"HTTP/1.1 200") and (want is None or want.encode() in data):
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit(f"port {port} did not answer {path} in time")


async def remember(port: int, content: str, agent: str | None = None) -> None:
    body: dict[str, Any] = {"content": content}
    if agent:
        body["agentId"] = agent
    data = json.dumps(body).encode()
    conn = Conn(port, "/api/memory/remember", data)
    await conn.open()
    assert await conn.once() == 200
    await conn.close()


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found:
        return found
    if os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True)
        return "/usr/sbin/nginx"
    raise SystemExit("nginx not found: apt-get install nginx-light")


NGINX_CONF = """
worker_processes 1;
error_log {root}/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream daemon {{ server 127.0.0.1:{daemon}; keepalive 32; keepalive_requests 1000000; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://daemon;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per measurement")
    parser.add_argument("--json-only", action="store_true", help="print only the JSON")
    parser.add_argument(
        "--uvloop", action="store_true", help="run the sidecars on uvloop (to compare)"
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="signet-bench-proxy-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = {name: free_port() for name in ("d1", "s0", "s1", "d2", "s2", "nginx")}
        ws1, ws2 = root / "ws1", root / "ws2"
        for ws, roster in (
            (ws1, []),
            (ws2, [{"name": "carol", "memory": {"read_policy": "isolated"}}]),
        ):
            ws.mkdir()
            (ws / "agent.yaml").write_text(yaml.safe_dump({"agents": {"roster": roster}}))
        for name, ws in (("d1", ws1), ("d2", ws2)):
            procs.append(
                start(
                    [
                        PY,
                        "-m",
                        "signet_cluster.devdaemon",
                        "--port",
                        str(ports[name]),
                        "--path",
                        str(ws),
                    ],
                    root / f"{name}.log",
                )
            )
        await wait_http(ports["d1"], "/health")
        await wait_http(ports["d2"], "/health")

        uvloop = args.uvloop

        def sidecar(name: str, daemon: str, ws: Path, *extra: str) -> None:
            cli = ["-m", "cli"]
            if uvloop:
                cli = [
                    "-c",
                    "import asyncio, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); from cli.main import main; main()",
                ]
            args = [PY, *cli, "serve", "--port", str(ports[name]), "--node-id", name]
            args += ["--daemon-url", f"http://127.0.0.1:{ports[daemon]}", "--workspace", str(ws)]
            args += ["--state-dir", str(root / f"state-{name}"), "--log-level", "warning"]
            args += ["--log-format", "json", "--heartbeat-interval", "0.5", *extra]
            procs.append(start(args, root / f"{name}.log"))

        # (b): a standalone sidecar in front of d1 (a one-node cluster: nothing fans out).
        sidecar("s0", "d1", ws1)
        # (d): a two-node cluster; carol (isolated) lives on node s2.
        sidecar("s1", "d1", ws1, "--coordinator")
        sidecar("s2", "d2", ws2, "--coordinators", f"http://127.0.0.1:{ports['s1']}")
        nginx_root = root / "nginx"
        nginx_root.mkdir()
        conf = nginx_root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=nginx_root, daemon=ports["d1"], port=ports["nginx"]))
        procs.append(
            start(
                [nginx_binary(), "-c", str(conf), "-p", str(nginx_root), "-g", "daemon off;"],
                root / "nginx.log",
            )
        )
        for n in range(200):
            await remember(
                ports["d1"], f"note {n}: the user prefers vim editor keybindings, variant {n}"
            )
            await remember(
                ports["d2"], f"carol note {n}: vim editor keybindings in tmux, variant {n}", "carol"
            )
        await wait_http(ports["s0"], "/readyz")
        await wait_http(ports["s1"], "/readyz")
        await wait_http(ports["nginx"], "/health")
        await wait_http(
            ports["s1"], "/api/cluster/resolve?agent_id=carol", want='"route": "remote"'
        )
        carol = QUERY | {"agentId": "carol"}
        # CPU of the process(es) each target adds in front of its daemon (d: both sidecars).
        pid = {
            name: proc.pid
            for name, proc in zip(("d1", "d2", "s0", "s1", "s2", "nginx"), procs, strict=True)
        }
        cpu_pids = {
            "a_direct": [pid["d1"]],
            "b_sidecar": [pid["s0"]],
            "c_nginx": [pid["nginx"], *children(pid["nginx"])],
            "d_remote_direct": [pid["d2"]],
            "d_remote": [pid["s1"], pid["s2"]],
        }
        targets = {
            "a_direct": (ports["d1"], QUERY),
            "b_sidecar": (ports["s0"], QUERY),
            "c_nginx": (ports["nginx"], QUERY),
            "d_remote_direct": (ports["d2"], carol),
            "d_remote": (ports["s1"], carol),
        }
        results: dict[str, dict[str, float]] = {}
        for concurrency in (1, 8):
            # Interleave rounds so drift (thermal, other load) hits every target alike.
            samples: dict[str, list[float]] = {name: [] for name in targets}
            cpu = dict.fromkeys(targets, 0.0)
            for _round in range(3):
                for name, (port, body) in targets.items():
                    before = cpu_seconds(cpu_pids[name])
                    samples[name] += await measure(port, body, args.requests // 3, concurrency)
                    cpu[name] += cpu_seconds(cpu_pids[name]) - before
            for name, values in samples.items():
                sent = len(values) + 3 * 100 * concurrency  # warm-up requests included
                results[f"{name}@c{concurrency}"] = {
                    "p50_ms": round(pct(values, 0.50), 3),
                    "p99_ms": round(pct(values, 0.99), 3),
                    "mean_ms": round(statistics.fmean(values) * 1000, 3),
                    "cpu_us_per_request": round(cpu[name] / sent * 1e6, 1),
                    "n": len(values),
                }
        report = summarize(results)
        print(json.dumps(report, indent=2))
        if not args.json_only:
            print_table(report)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if os.environ.get("BENCH_KEEP"):
            print("kept", root)
        else:
            shutil.rmtree(root, ignore_errors=True)


def summarize(results: dict[str, dict[str, float]]) -> dict[str, Any]:
    overheads: dict[str, dict[str, float]] = {}
    for c in (1, 8):
        for q in ("p50_ms", "p99_ms"):
            base = results[f"a_direct@c{c}"][q]
            remote_base = results[f"d_remote_direct@c{c}"][q]
            for name, ref in (("b_sidecar", base), ("c_nginx", base), ("d_remote", remote_base)):
                overheads.setdefault(f"{name}@c{c}", {})[q] = round(
                    results[f"{name}@c{c}"][q] - ref, 3
                )
    ratios = {}
    for c in (1, 8):
        for q in ("p50_ms", "p99_ms"):
            nginx = overheads[f"c_nginx@c{c}"][q]
            ratios[f"sidecar_over_nginx@c{c}.{q}"] = (
                round(overheads[f"b_sidecar@c{c}"][q] / nginx, 2) if nginx > 0 else None
            )
    target = overheads["b_sidecar@c1"]
    return {
        "latency": results,
        "overhead_over_direct": overheads,
        "ratio_sidecar_overhead_to_nginx_overhead": ratios,
        "target_c1": {
            "p50_ms_max": 0.4,
            "p99_ms_max": 1.5,
            "met": target["p50_ms"] <= 0.4 and target["p99_ms"] <= 1.5,
        },
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


def print_table(report: dict[str, Any]) -> None:
    print()
    print(f"{'target':<20}{'p50 ms':>9}{'p99 ms':>9}{'+p50':>9}{'+p99':>9}{'cpu us/req':>12}")
    for key, row in report["latency"].items():
        over = report["overhead_over_direct"].get(key, {})
        print(
            f"{key:<20}{row['p50_ms']:>9.3f}{row['p99_ms']:>9.3f}"
            f"{over.get('p50_ms', 0):>9.3f}{over.get('p99_ms', 0):>9.3f}"
            f"{row['cpu_us_per_request']:>12.1f}"
        )
    for key, value in report["ratio_sidecar_overhead_to_nginx_overhead"].items():
        print(f"{key}: {value}")
    print(f"target (b) c1 +p50 <= 0.4 ms, +p99 <= 1.5 ms: met={report['target_c1']['met']}")


if __name__ == "__main__":
    asyncio.run(main())
