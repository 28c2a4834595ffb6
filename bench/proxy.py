"""What the sidecar costs its daemon's host (run by hand; not part of CI).

    .venv/bin/python bench/proxy.py [--real] [--duration 3] [--rounds 3] [--clients 8]
                                    [--only recall,status] [--baseline DIR] [--json-only]

Every server is its own process on loopback: the daemon (the dev daemon, or with `--real` the
real Signet 0.145.7 from ../shared/real-signet), sidecars (`signet-cluster serve`) and nginx
(a keep-alive reverse proxy from a temporary config). For each scenario it measures, over
interleaved rounds (direct, sidecar and nginx take turns, so drift and other load hit each
alike; one scenario after another, remember last):

- CPU seconds per request of the process(es) in front of the daemon (the sidecar, both
  sidecars for a remote agent, nginx with its workers) and of the daemon itself, read from
  /proc/<pid>/stat before and after each run: the robust figure on a shared machine. `net`
  subtracts what the front spends with no requests at all (heartbeats, the daemon watcher,
  key reloads; `idle`, measured for `--idle` seconds before the runs), which a busy machine's
  low request rate would otherwise charge to each request;
- throughput at saturation (`--clients` keep-alive connections), and its ratio to direct
  (the median over rounds of each round's ratio);
- p50 / p99 latency at one client, and what the front adds to direct.

Scenarios: `recall` (a local recall that does not federate: the `default` agent on a
one-node cluster), `recall_isolated` (an isolated agent's recall on a two-node cluster: it
is routed, not federated), `remember` (a new memory each request), `status`
(`GET /api/status`: the pass-through catch-all) and `remote` (an isolated agent that lives on
the other node: two sidecars, one hop; direct is that node's daemon asked as the agent).

The load generator is wrk (`apt-get install wrk`; a C event loop on one thread, so the client
costs little beside the servers); without it a minimal asyncio keep-alive client is used,
which costs more CPU itself. `--uvloop` runs the sidecars on uvloop, for comparison.
`--baseline DIR` adds `<scenario>/baseline` rows: a one-node sidecar run from another
source tree (e.g. `git archive 51c52b7 | tar -x -C DIR`) over the same daemon, measured in
the same interleaved rounds: an A/B that the machine's load cannot skew.
`--profile SECONDS` also records the local-recall sidecar under py-spy
(`pip install py-spy`) while it is saturated, and prints its top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import attrs
import yaml

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
REAL_SIGNET = Path(os.environ.get("SIGNET_REAL_DIR", ROOT.parent / "shared" / "real-signet"))
REAL_VERSION = "0.145.7"
RECALL = {"query": "vim editor keybindings", "limit": 10}
SEED = 200


def low_free_port(start: int = 21000, end: int = 32000) -> int:
    """A loopback port below the ephemeral range (outgoing connections cannot take it)."""
    for port in range(start + os.getpid() % 997 * 7, end):
        if port in _TAKEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port
    raise SystemExit("no free port below 32768")


_TAKEN: set[int] = set()


# -- processes ---------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux /proc; threads included)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def with_children(pid: int) -> list[int]:
    found = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def start(args: list[str], log: Path, code: Path | None = None) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    env = None
    if code is not None:  # another source tree's packages shadow the installed ones
        env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.Popen(
        args,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=code,
        env=env,
    )


def http(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"} if data else {},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return bytes(resp.read())


def wait_http(port: int, path: str, timeout: float = 30.0, want: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = http(port, "GET", path)
            if want is None or want.encode() in answer:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"port {port} did not answer {path} in time")


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


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if not found:
        raise SystemExit("nginx not found: apt-get install nginx-light")
    return found


class Lab:
    """Two daemons, three sidecars and nginx, each its own process; stopped on exit."""

    def __init__(self, root: Path, *, real: bool, uvloop: bool) -> None:
        self.root, self.real, self.uvloop = root, real, uvloop
        self.procs: list[subprocess.Popen[bytes]] = []
        self.real_workspaces: list[Path] = []
        self.port: dict[str, int] = {}
        self.pids: dict[str, list[int]] = {}

    def daemon(self, name: str, roster: list[tuple[str, str]]) -> None:
        ws = self.root / name
        ws.mkdir()
        port = self.port[name] = low_free_port()
        entries = [{"name": agent, "memory": {"read_policy": pol}} for agent, pol in roster]
        if self.real:
            config = yaml.safe_load((REAL_SIGNET / f"ts-{REAL_VERSION}" / "agent.yaml").read_text())
            config.setdefault("agents", {})["roster"] = entries
            (ws / "agent.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            self.real_workspaces.append(ws)
            out = subprocess.run(
                [str(REAL_SIGNET / "start-daemon"), REAL_VERSION, str(port), str(ws)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if out.returncode != 0:
                raise SystemExit(f"start-daemon failed: {out.stderr[-2000:]}")
            pid = int(out.stdout.strip().splitlines()[-1])
        else:
            (ws / "agent.yaml").write_text(yaml.safe_dump({"agents": {"roster": entries}}))
            args = [PY, "-m", "signet_cluster.devdaemon", "--port", str(port), "--path", str(ws)]
            proc = start(args, self.root / f"{name}.log")
            self.procs.append(proc)
            pid = proc.pid
            wait_http(port, "/health")
        self.pids[name] = with_children(pid)

    def sidecar(self, name: str, daemon: str, *extra: str, code: Path | None = None) -> None:
        """`signet-cluster serve` beside `daemon`; from the source tree `code` if given."""
        port = self.port[name] = low_free_port()
        cli = ["-m", "cli"]
        if self.uvloop:
            cli = [
                "-c",
                "import asyncio, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy());"
                " from cli.main import main; main()",
            ]
        args = [PY, *cli, "serve", "--port", str(port), "--node-id", name]
        args += ["--daemon-url", f"http://127.0.0.1:{self.port[daemon]}"]
        args += ["--workspace", str(self.root / daemon)]
        args += ["--state-dir", str(self.root / f"state-{name}"), "--log-level", "warning"]
        args += ["--log-format", "json", "--heartbeat-interval", "0.5", *extra]
        proc = start(args, self.root / f"{name}.log", code)
        self.procs.append(proc)
        self.pids[name] = [proc.pid]

    def nginx(self, daemon: str) -> None:
        port = self.port["nginx"] = low_free_port()
        conf_root = self.root / "nginx"
        conf_root.mkdir()
        conf = conf_root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(root=conf_root, daemon=self.port[daemon], port=port))
        proc = start(
            [nginx_binary(), "-c", str(conf), "-p", str(conf_root), "-g", "daemon off;"],
            self.root / "nginx.log",
        )
        self.procs.append(proc)
        wait_http(port, "/health")
        self.pids["nginx"] = with_children(proc.pid)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for ws in self.real_workspaces:
            subprocess.run(
                [str(REAL_SIGNET / "stop-daemon"), str(ws)], capture_output=True, timeout=60
            )


# -- load --------------------------------------------------------------------------------


@attrs.frozen
class Target:
    scenario: str
    via: str  # direct | sidecar | nginx
    port: int
    method: str
    path: str
    body: dict[str, Any] | None
    front: list[int]  # processes in front of the daemon (empty for direct)
    daemon: list[int]

    @property
    def name(self) -> str:
        return f"{self.scenario}/{self.via}"


@attrs.frozen
class Run:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    front_cpu_s: float
    daemon_cpu_s: float


_RUN_IDS = itertools.count()


def lua_script(target: Target, run_id: int) -> str:
    """wrk's request: fixed, or for a remember a new content each time (daemons dedupe)."""
    if target.scenario != "remember":
        body = json.dumps(target.body) if target.body is not None else ""
        lines = [f"wrk.method = {json.dumps(target.method)}"]
        if body:
            lines += [
                f"wrk.body = {json.dumps(body)}",
                'wrk.headers["Content-Type"] = "application/json"',
            ]
        return "\n".join(lines) + "\n"
    prefix = f"bench {target.via} run {run_id} item "
    return (
        "local n = 0\n"
        'local headers = {["Content-Type"] = "application/json"}\n'
        "request = function()\n"
        "  n = n + 1\n"
        f"  local body = '{{\"content\": \"{prefix}' .. n .. ' about the garden shed paint\"}}'\n"
        f'  return wrk.format("POST", "{target.path}", headers, body)\n'
        "end\n"
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if match is None:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(
    target: Target, clients: int, seconds: float, scratch: Path
) -> tuple[int, float, float, float]:
    """(requests, seconds, p50 ms, p99 ms) of one wrk run; every answer must be 2xx."""
    run_id = next(_RUN_IDS)
    script = scratch / f"wrk-{run_id}.lua"
    script.write_text(lua_script(target, run_id))
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{target.port}{target.path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"{target.name}: errors under load:\n{out}")
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    assert done is not None, out
    took = float(done.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    assert p50 is not None and p99 is not None, out
    return int(done.group(1)), took, _ms(p50.group(1)), _ms(p99.group(1))


class Conn:
    """The fallback client: one keep-alive HTTP/1.1 connection (Content-Length answers)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.n = 0

    def message(self) -> bytes:
        t = self.target
        self.n += 1
        body = b""
        if t.scenario == "remember":
            body = json.dumps({"content": f"bench {t.via} {id(self)} {self.n} garden"}).encode()
        elif t.body is not None:
            body = json.dumps(t.body).encode()
        head = f"{t.method} {t.path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + body

    async def run(self, until: float, latencies: list[float]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.target.port)
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(self.message())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head[9:10] == b"2":
                raise SystemExit(f"{self.target.name}: {head[:12]!r}")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - started) * 1000)
        writer.close()


def run_asyncio(target: Target, clients: int, seconds: float) -> tuple[int, float, float, float]:
    async def go() -> tuple[int, float, float, float]:
        latencies: list[float] = []
        started = time.perf_counter()
        until = started + seconds
        await asyncio.gather(*(Conn(target).run(until, latencies) for _ in range(clients)))
        took = time.perf_counter() - started
        ordered = sorted(latencies)
        return (
            len(ordered),
            took,
            ordered[len(ordered) // 2],
            ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        )

    return asyncio.run(go())


def measure(target: Target, clients: int, seconds: float, scratch: Path) -> Run:
    front0, daemon0 = cpu_seconds(target.front), cpu_seconds(target.daemon)
    if shutil.which("wrk"):
        requests, took, p50, p99 = run_wrk(target, clients, seconds, scratch)
    else:
        requests, took, p50, p99 = run_asyncio(target, clients, seconds)
    return Run(
        requests=requests,
        seconds=took,
        p50_ms=p50,
        p99_ms=p99,
        front_cpu_s=cpu_seconds(target.front) - front0,
        daemon_cpu_s=cpu_seconds(target.daemon) - daemon0,
    )


# -- the run -----------------------------------------------------------------------------


def build_lab(lab: Lab, want: set[str], baseline: Path | None) -> list[Target]:
    """d1 (alice isolated) and d2 (carol isolated); s0 a one-node cluster over d1; s1 the
    coordinator over d1 and s2 over d2 (a two-node cluster); nginx over d1."""
    lab.daemon("d1", [("alice", "isolated")])
    lab.daemon("d2", [("carol", "isolated")])
    lab.sidecar("s0", "d1")
    if baseline is not None:
        lab.sidecar("s0b", "d1", code=baseline)
    lab.sidecar("s1", "d1", "--coordinator")
    lab.sidecar("s2", "d2", "--coordinators", f"http://127.0.0.1:{lab.port['s1']}")
    lab.nginx("d1")
    for n in range(SEED):
        text = f"note {n}: the user prefers vim editor keybindings, variant {n}"
        http(lab.port["d1"], "POST", "/api/memory/remember", {"content": text})
        http(
            lab.port["d1"],
            "POST",
            "/api/memory/remember",
            {"content": f"alice {text}", "agentId": "alice"},
        )
        http(
            lab.port["d2"],
            "POST",
            "/api/memory/remember",
            {"content": f"carol {text}", "agentId": "carol"},
        )
    for name in ("s0", "s1", "s2", *(["s0b"] if baseline is not None else [])):
        wait_http(lab.port[name], "/readyz")
    wait_http(lab.port["s1"], "/api/cluster/resolve?agent_id=carol", want='"route": "remote"')
    wait_http(lab.port["s1"], "/api/cluster/resolve?agent_id=alice", want='"route": "local"')
    d1, d2 = lab.pids["d1"], lab.pids["d2"]
    alice = RECALL | {"agentId": "alice"}
    carol = RECALL | {"agentId": "carol"}
    recall, remember = "/api/memory/recall", "/api/memory/remember"
    p = lab.port
    every = [
        Target("recall", "direct", p["d1"], "POST", recall, RECALL, [], d1),
        Target("recall", "sidecar", p["s0"], "POST", recall, RECALL, lab.pids["s0"], d1),
        Target("recall", "nginx", p["nginx"], "POST", recall, RECALL, lab.pids["nginx"], d1),
        Target("recall_isolated", "direct", p["d1"], "POST", recall, alice, [], d1),
        Target("recall_isolated", "sidecar", p["s1"], "POST", recall, alice, lab.pids["s1"], d1),
        Target("remember", "direct", p["d1"], "POST", remember, None, [], d1),
        Target("remember", "sidecar", p["s0"], "POST", remember, None, lab.pids["s0"], d1),
        Target("remember", "nginx", p["nginx"], "POST", remember, None, lab.pids["nginx"], d1),
        Target("status", "direct", p["d1"], "GET", "/api/status", None, [], d1),
        Target("status", "sidecar", p["s0"], "GET", "/api/status", None, lab.pids["s0"], d1),
        Target("status", "nginx", p["nginx"], "GET", "/api/status", None, lab.pids["nginx"], d1),
        Target("remote", "direct", p["d2"], "POST", recall, carol, [], d2),
        Target(
            "remote", "sidecar", p["s1"], "POST", recall, carol, lab.pids["s1"] + lab.pids["s2"], d2
        ),
    ]
    if baseline is not None:
        every += [
            attrs.evolve(t, via="baseline", port=p["s0b"], front=lab.pids["s0b"])
            for t in every
            if t.via == "sidecar" and t.front == lab.pids["s0"]
        ]
    return [t for t in every if t.scenario in want]


def idle_rates(targets: list[Target], seconds: float) -> dict[str, float]:
    """CPU seconds per second each target's front spends with no requests (heartbeats,
    the daemon watcher, key reloads), measured before the runs."""
    fronts = {t.name: t.front for t in targets if t.front}
    before = {name: cpu_seconds(pids) for name, pids in fronts.items()}
    time.sleep(seconds)
    return {name: (cpu_seconds(pids) - before[name]) / seconds for name, pids in fronts.items()}


def summarize(
    runs: dict[tuple[str, str], list[Run]], targets: list[Target], idle: dict[str, float]
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for t in targets:
        one, sat = runs[(t.name, "c1")], runs[(t.name, "sat")]
        both = one + sat
        n = sum(r.requests for r in both)
        background = idle.get(t.name, 0.0) * sum(r.seconds for r in both)
        rows[t.name] = {
            "rps_saturated": round(statistics.median(r.requests / r.seconds for r in sat), 1),
            "p50_ms_c1": round(statistics.median(r.p50_ms for r in one), 3),
            "p99_ms_c1": round(statistics.median(r.p99_ms for r in one), 3),
            "front_cpu_ms_per_req": round(sum(r.front_cpu_s for r in both) / n * 1000, 3),
            # Less what the front spends anyway with no requests at all (idle_cpu_pct).
            "front_cpu_ms_per_req_net": round(
                max(0.0, sum(r.front_cpu_s for r in both) - background) / n * 1000, 3
            ),
            "front_idle_cpu_pct": round(idle.get(t.name, 0.0) * 100, 2),
            "front_cpu_ms_per_req_saturated": round(
                sum(r.front_cpu_s for r in sat) / sum(r.requests for r in sat) * 1000, 3
            ),
            "daemon_cpu_ms_per_req": round(sum(r.daemon_cpu_s for r in both) / n * 1000, 3),
            "requests": n,
        }
    compared: dict[str, Any] = {}
    for t in targets:
        if t.via == "direct":
            continue
        direct = f"{t.scenario}/direct"
        if direct not in rows:
            continue
        ratios = [
            (a.requests / a.seconds) / (b.requests / b.seconds)
            for a, b in zip(runs[(t.name, "sat")], runs[(direct, "sat")], strict=True)
        ]
        row, base = rows[t.name], rows[direct]
        compared[t.name] = {
            "throughput_ratio": round(statistics.median(ratios), 3),
            "throughput_ratios_per_round": [round(r, 3) for r in ratios],
            "added_p50_ms_c1": round(row["p50_ms_c1"] - base["p50_ms_c1"], 3),
            "added_p99_ms_c1": round(row["p99_ms_c1"] - base["p99_ms_c1"], 3),
            "front_cpu_ms_per_req": row["front_cpu_ms_per_req"],
            "front_cpu_ms_per_req_net": row["front_cpu_ms_per_req_net"],
            "front_cpu_share_of_daemon": round(
                row["front_cpu_ms_per_req"] / base["daemon_cpu_ms_per_req"], 3
            )
            if base["daemon_cpu_ms_per_req"]
            else None,
        }
    return {"targets": rows, "against_direct": compared}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--real", action="store_true", help=f"the real Signet {REAL_VERSION}")
    parser.add_argument("--duration", type=int, default=3, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--clients", type=int, default=8, help="connections at saturation")
    parser.add_argument(
        "--only",
        default="recall,recall_isolated,remember,status,remote",
        help="comma-separated scenarios",
    )
    parser.add_argument(
        "--idle", type=float, default=10.0, help="seconds to measure the fronts' idle CPU"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run a one-node sidecar from this source tree, side by side (an A/B: "
        "git archive COMMIT | tar -x -C DIR)",
    )
    parser.add_argument("--json-only", action="store_true", help="print only the JSON")
    parser.add_argument("--uvloop", action="store_true", help="run the sidecars on uvloop")
    parser.add_argument(
        "--profile", type=float, default=0.0, help="py-spy the recall sidecar this many seconds"
    )
    args = parser.parse_args()
    if args.real and not (REAL_SIGNET / "start-daemon").exists():
        raise SystemExit(f"no real Signet daemons at {REAL_SIGNET}")
    root = Path(tempfile.mkdtemp(prefix="signet-bench-proxy-"))
    lab = Lab(root, real=args.real, uvloop=args.uvloop)
    try:
        targets = build_lab(lab, set(args.only.split(",")), args.baseline)
        load_before = os.getloadavg()
        idle = idle_rates(targets, args.idle)
        for t in targets:  # warm-up: connections, caches, the daemon's first slow calls
            if t.scenario != "remember":
                measure(t, args.clients, 1.0, root)
        runs: dict[tuple[str, str], list[Run]] = {}
        # One scenario at a time, remember last: the memories it adds make the daemon's
        # recall slower, which must not fall on some recall rounds and not others.
        scenarios = sorted({t.scenario for t in targets}, key=lambda s: s == "remember")
        for scenario in scenarios:
            group = [t for t in targets if t.scenario == scenario]
            for round_no in range(args.rounds):
                # Rotate the order each round: no target always runs right after another.
                shift = round_no % len(group)
                for t in group[shift:] + group[:shift]:
                    runs.setdefault((t.name, "c1"), []).append(measure(t, 1, args.duration, root))
                    runs.setdefault((t.name, "sat"), []).append(
                        measure(t, args.clients, args.duration, root)
                    )
        report = summarize(runs, targets, idle)
        report["setup"] = {
            "daemon": f"signet {REAL_VERSION} (real)" if args.real else "dev daemon (ts)",
            "load_generator": "wrk" if shutil.which("wrk") else "asyncio",
            "clients_saturated": args.clients,
            "seconds_per_run": args.duration,
            "rounds": args.rounds,
            "uvloop": args.uvloop,
            "baseline": str(args.baseline) if args.baseline else None,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_before_after": [load_before[0], os.getloadavg()[0]],
        }
        if args.profile:
            report["profile"] = profile(lab, targets, args.clients, args.profile, root)
        print(json.dumps(report, indent=2))
        if not args.json_only:
            print_table(report)
    finally:
        lab.stop()
        if os.environ.get("BENCH_KEEP"):
            print("kept", root)
        else:
            shutil.rmtree(root, ignore_errors=True)


def profile(lab: Lab, targets: list[Target], clients: int, seconds: float, root: Path) -> list[str]:
    """py-spy samples of the local-recall sidecar while it is saturated (only the thread
    holding the GIL: CPU, not waiting): the functions with the most own time, then the
    project's and aiohttp's functions by inclusive time."""
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    target = next(t for t in targets if t.name in ("recall/sidecar", "remote/sidecar"))
    out = root / "profile.txt"
    args = [spy, "record", "-p", str(target.front[0]), "-d", str(int(seconds)), "-f", "raw"]
    args += ["-o", str(out), "-r", "1000", "--gil", "--nonblocking"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    measure(target, clients, seconds + 1, root)
    proc.wait()
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        for frame in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            inclusive[frame] = inclusive.get(frame, 0) + int(count)
        total += int(count)
    lines = [f"py-spy, {total} samples with the GIL held; own time:"]
    for leaf, count in sorted(own.items(), key=lambda kv: -kv[1])[:20]:
        lines.append(f"{count / total * 100:5.1f}%  {leaf}")
    lines.append("inclusive time (sidecar, signet_cluster, aiohttp):")
    ours = [
        (f, c) for f, c in inclusive.items() if re.search(r"\((sidecar|signet_cluster|aiohttp)/", f)
    ]
    for frame, count in sorted(ours, key=lambda kv: -kv[1])[:30]:
        lines.append(f"{count / total * 100:5.1f}%  {frame}")
    return lines


def print_table(report: dict[str, Any]) -> None:
    s = report["setup"]
    print(
        f"\n{s['daemon']}, {s['load_generator']}, {s['rounds']} rounds x {s['seconds_per_run']} s,"
        f" saturation at {s['clients_saturated']} clients, load {s['loadavg_before_after']}"
    )
    head = (
        f"{'target':<26}{'req/s':>9}{'ratio':>7}{'p50 c1':>9}{'+p50':>8}{'p99 c1':>9}"
        f"{'+p99':>8}{'front cpu':>11}{'net':>8}{'idle':>7}{'daemon cpu':>12}"
    )
    print(head + "\n" + " " * 76 + "ms/req  ms/req  %core      ms/req")
    for name, row in report["targets"].items():
        cmp = report["against_direct"].get(name)
        ratio = f"{cmp['throughput_ratio']:.3f}" if cmp else "-"
        add50 = f"{cmp['added_p50_ms_c1']:+.3f}" if cmp else "-"
        add99 = f"{cmp['added_p99_ms_c1']:+.3f}" if cmp else "-"
        front = f"{row['front_cpu_ms_per_req']:.3f}" if cmp else "-"
        net = f"{row['front_cpu_ms_per_req_net']:.3f}" if cmp else "-"
        idle = f"{row['front_idle_cpu_pct']:.2f}" if cmp else "-"
        print(
            f"{name:<26}{row['rps_saturated']:>9.1f}{ratio:>7}{row['p50_ms_c1']:>9.3f}{add50:>8}"
            f"{row['p99_ms_c1']:>9.3f}{add99:>8}{front:>11}{net:>8}{idle:>7}"
            f"{row['daemon_cpu_ms_per_req']:>12.3f}"
        )
    for line in report.get("profile", []):
        print(line)


if __name__ == "__main__":
    main()
