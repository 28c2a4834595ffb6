"""etcd backend benchmark: how fast a dead node leaves routing, and what an idle cluster costs
etcd (run by hand; not part of CI; needs /usr/bin/etcd from Debian's etcd-server).

    .venv/bin/python bench/etcd_failover.py [--rounds 3] [--ttls 2,5] [--json-only]

A real etcd, an observer sidecar (in this process, beside a dev daemon) and a victim sidecar
(`signet-cluster serve`, its own process, beside its own dev daemon) with agent `bob`. For each
lease TTL, `--rounds` times: wait until the observer routes `bob` to the victim, SIGKILL the
victim (it cannot revoke its lease), and time until the observer's routing table drops `bob`
(the lease expires in etcd, the watch delivers the deletion). Then once with SIGTERM (a clean
stop revokes the lease). Finally, with both sidecars idle, it counts etcd's puts and lease
renewals over `--idle` seconds (from etcd's /metrics).

Then, on a three-member etcd, `--rounds` times: freeze (SIGSTOP) the member an observer
sidecar's calls and watch use (a follower: leadership is moved away first), as a partition
would (sockets open, nothing answers), write a record through another member, and time from
the freeze until the observer's view shows it (its calls fail over, its watch follows them);
also whether its lease survived. Prints a table and a JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from sidecar import keys
from sidecar.app import make_app
from sidecar.etcd.backend import ETCD as ETCD_BACKEND
from signet_cluster.devdaemon import DevDaemonConfig, make_devdaemon_app
from signet_cluster.logconfig import configure_logging
from signet_cluster.settings import Settings

ETCD = "/usr/bin/etcd"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(check: Any, timeout: float, what: str, period: float = 0.01) -> float:
    """Seconds until `check()` is true (polled every `period`)."""
    started = time.perf_counter()
    while not await check():
        if time.perf_counter() - started > timeout:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(period)
    return time.perf_counter() - started


async def start_daemon(base: Path, roster: list[dict[str, Any]]) -> tuple[web.AppRunner, str]:
    workspace = base / "workspace"
    workspace.mkdir(parents=True)
    (workspace / "agent.yaml").write_text(yaml.safe_dump({"agents": {"roster": roster}}))
    runner = web.AppRunner(make_devdaemon_app(DevDaemonConfig(path=workspace, flavor="ts")))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def etcd_counters(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))

    return {
        "puts": total("etcd_mvcc_put_total"),
        "txns": total("etcd_mvcc_txn_total"),
        "raft_proposals": total("etcd_server_proposals_committed_total"),
        "lease_renewals": total("etcd_debugging_lease_renewed_total"),
    }


def spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="etcd-bench-"))
    client_port, peer_port = free_port(), free_port()
    etcd_url, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    etcd = spawn(
        [
            ETCD,
            "--name=bench",
            f"--data-dir={base / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=bench={peer}",
        ]
    )
    runners: list[web.AppRunner] = []
    victim: subprocess.Popen[bytes] | None = None
    results: dict[str, Any] = {"ttls": {}}
    try:
        async with aiohttp.ClientSession() as session:

            async def etcd_up() -> bool:
                try:
                    async with session.get(etcd_url + "/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(etcd_up, 30, "etcd")
            observer_daemon, observer_daemon_url = await start_daemon(base / "o", [])
            victim_daemon, victim_daemon_url = await start_daemon(
                base / "v", [{"name": "bob", "memory": {"read_policy": "shared"}}]
            )
            runners += [observer_daemon, victim_daemon]
            for ttl in args.ttls:
                interval = 1.0 if ttl >= 5 else 0.5
                common: dict[str, Any] = {
                    "registry_backend": "etcd",
                    "etcd_endpoints": (etcd_url,),
                    "etcd_prefix": f"/bench-{ttl}/",
                    "heartbeat_interval": interval,
                    "peer_ttl": float(ttl),
                }
                settings = Settings(
                    node_id="observer",
                    port=free_port(),
                    daemon_url=observer_daemon_url,
                    workspace=str(base / "o" / "workspace"),
                    state_dir=str(base / f"o-state-{ttl}"),
                    **common,
                )
                app = make_app(settings)
                runner = web.AppRunner(app)
                await runner.setup()
                await web.TCPSite(runner, "127.0.0.1", settings.port).start()
                runners.append(runner)

                def routes_bob(app: web.Application = app) -> bool:
                    view = app[keys.MEMBERSHIP].latest()
                    return view is not None and view.route("bob") is not None

                config = base / f"victim-{ttl}.toml"
                config.write_text(
                    f'node_id = "victim"\nport = {free_port()}\n'
                    f'daemon_url = "{victim_daemon_url}"\n'
                    f'workspace = "{base / "v" / "workspace"}"\n'
                    f'state_dir = "{base / "v-state"}"\nheartbeat_interval = {interval}\n'
                    f'peer_ttl = {float(ttl)}\nlog_level = "error"\n[registry]\nbackend = "etcd"\n'
                    f'[etcd]\nendpoints = ["{etcd_url}"]\nprefix = "{common["etcd_prefix"]}"\n'
                )
                env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNET_CLUSTER_")}
                kills: list[float] = []
                for sig in [signal.SIGKILL] * args.rounds + [signal.SIGTERM]:
                    victim = spawn([PY, "-m", "cli", "serve", "--config", str(config)], env)
                    await wait_until(lambda: _true(routes_bob()), 60, "bob routed", 0.05)
                    victim.send_signal(sig)
                    gone = await wait_until(lambda: _true(not routes_bob()), 60, "bob unrouted")
                    victim.wait(10)
                    victim = None
                    if sig == signal.SIGKILL:
                        kills.append(gone)
                    else:
                        clean = gone
                results["ttls"][ttl] = {
                    "lease_ttl_s": ttl,
                    "heartbeat_interval_s": interval,
                    "kill_to_unrouted_s": [round(k, 3) for k in kills],
                    "kill_median_s": round(statistics.median(kills), 3),
                    "kill_max_s": round(max(kills), 3),
                    "kill_max_over_ttl": round(max(kills) / ttl, 2),
                    "clean_stop_to_unrouted_s": round(clean, 3),
                }
                if ttl != args.ttls[-1]:
                    runners.remove(runner)  # one observer at a time: the idle count stays exact
                    await runner.cleanup()
            # Idle cost: the last observer alone plus one victim, both registered, no changes.
            victim = spawn([PY, "-m", "cli", "serve", "--config", str(config)], env)
            await wait_until(lambda: _true(routes_bob()), 60, "bob routed", 0.05)
            await asyncio.sleep(2 * interval)  # let the last writes settle
            before = await etcd_counters(session, etcd_url)
            await asyncio.sleep(args.idle)
            after = await etcd_counters(session, etcd_url)
            results["idle"] = {
                "seconds": args.idle,
                "sidecars": 2,
                "heartbeat_interval_s": interval,
                **{f"{k}_per_s": round((after[k] - before[k]) / args.idle, 2) for k in after},
            }
            version = await (await session.get(etcd_url + "/version")).json()
            results["etcd_version"] = version.get("etcdserver")
    finally:
        if victim is not None:
            victim.kill()
            victim.wait(10)
        for runner in reversed(runners):
            await runner.cleanup()
        etcd.terminate()
        etcd.wait(30)
    return results


async def _true(value: bool) -> bool:
    return value


def spawn_member(
    base: Path, name: str, ports: dict[str, tuple[int, int]]
) -> subprocess.Popen[bytes]:
    client, peer = ports[name]
    cluster = ",".join(f"{n}=http://127.0.0.1:{p}" for n, (_c, p) in ports.items())
    return spawn(
        [
            ETCD,
            f"--name={name}",
            f"--data-dir={base / name}",
            f"--listen-client-urls=http://127.0.0.1:{client}",
            f"--advertise-client-urls=http://127.0.0.1:{client}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster={cluster}",
        ]
    )


async def member_status(session: aiohttp.ClientSession, url: str) -> tuple[int, int]:
    """(this member's id, the leader's id) as the member reports them."""
    async with session.post(url + "/v3/maintenance/status", json={}) as resp:
        status = await resp.json(content_type=None)
    return int(status["header"]["member_id"]), int(status["leader"])


async def member_failover(rounds: int) -> dict[str, Any]:
    """Freeze the member an observer uses; time until a change made elsewhere reaches it."""
    base = Path(tempfile.mkdtemp(prefix="etcd-members-"))
    ports = {f"m{i}": (free_port(), free_port()) for i in range(3)}
    urls = {name: f"http://127.0.0.1:{client}" for name, (client, _peer) in ports.items()}
    members = {name: spawn_member(base, name, ports) for name in ports}
    runners: list[web.AppRunner] = []
    seen: list[float] = []  # freeze -> the observer's view shows a change made meanwhile
    leases_kept = 0
    try:
        async with aiohttp.ClientSession() as session:
            for url in urls.values():

                async def up(url: str = url) -> bool:
                    try:
                        async with session.get(url + "/health") as resp:
                            return resp.status == 200
                    except aiohttp.ClientError:
                        return False

                await wait_until(up, 30, f"etcd member {url}")
            daemon, daemon_url = await start_daemon(base / "o", [])
            runners.append(daemon)
            settings = Settings(
                node_id="observer",
                port=free_port(),
                daemon_url=daemon_url,
                workspace=str(base / "o" / "workspace"),
                state_dir=str(base / "o-state"),
                registry_backend="etcd",
                etcd_endpoints=tuple(urls.values()),
                heartbeat_interval=0.5,
                peer_ttl=2.0,
            )
            app = make_app(settings)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", settings.port).start()
            runners.append(runner)
            backend = app[ETCD_BACKEND]
            await wait_until(lambda: _true(backend.watch_connected), 30, "the observer's watch")
            for n in range(rounds):
                frozen = next(k for k, u in urls.items() if u == backend.client.endpoint)
                live = next(u for k, u in urls.items() if k != frozen)
                # Freeze a follower (as a partitioned member would be to its clients): a
                # frozen leader would add an election to the figure.
                member_id, leader_id = await member_status(session, urls[frozen])
                if member_id == leader_id:
                    target, _ = await member_status(session, live)
                    async with session.post(
                        urls[frozen] + "/v3/maintenance/transfer-leadership",
                        json={"targetID": str(target)},
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                lease = backend.lease
                members[frozen].send_signal(signal.SIGSTOP)
                frozen_at = time.perf_counter()
                try:
                    record = {"node_id": f"mark{n}", "url": "http://127.0.0.1:9", "first_seen": 0}
                    async with session.post(
                        f"{live}/v3/kv/put",
                        json={
                            "key": b64(f"/signet-cluster/members/mark{n}"),
                            "value": b64(json.dumps(record)),
                        },
                        timeout=aiohttp.ClientTimeout(total=10),
                    ) as resp:
                        assert resp.status == 200, await resp.text()

                    def marked(n: int = n) -> bool:
                        view = app[keys.MEMBERSHIP].latest()
                        return view is not None and view.peer(f"mark{n}") is not None

                    await wait_until(lambda: _true(marked()), 60, "the mark")
                    seen.append(time.perf_counter() - frozen_at)
                    await wait_until(lambda: _true(backend.watch_connected), 30, "the watch")
                    leases_kept += backend.lease == lease
                finally:
                    members[frozen].send_signal(signal.SIGCONT)
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        for process in members.values():
            process.send_signal(signal.SIGCONT)
            process.terminate()
            process.wait(30)
    return {
        "members": len(urls),
        "lease_ttl_s": 2,
        "heartbeat_interval_s": 0.5,
        "call_timeout_s": 0.5,
        "freeze_to_seen_s": [round(t, 3) for t in seen],
        "seen_median_s": round(statistics.median(seen), 3),
        "seen_max_s": round(max(seen), 3),
        "leases_kept": f"{leases_kept}/{rounds}",
    }


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


PY = sys.executable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ttls", default="2,5")
    parser.add_argument("--idle", type=float, default=10.0)
    parser.add_argument("--json-only", action="store_true")
    args = parser.parse_args()
    args.ttls = [int(t) for t in args.ttls.split(",")]
    configure_logging("error", "console")
    results = asyncio.run(run(args))
    results["member_freeze"] = asyncio.run(member_failover(args.rounds))
    if not args.json_only:
        print(f"etcd {results['etcd_version']}")
        print(
            f"{'lease TTL':>9}  {'kill→unrouted median':>20}  {'max':>6}  {'max/TTL':>7}  {'clean stop':>10}"
        )
        for ttl, row in results["ttls"].items():
            print(
                f"{ttl:>8}s  {row['kill_median_s']:>19.2f}s  {row['kill_max_s']:>5.2f}s"
                f"  {row['kill_max_over_ttl']:>7.2f}  {row['clean_stop_to_unrouted_s']:>9.3f}s"
            )
        idle = results["idle"]
        print(
            f"idle, 2 sidecars, {idle['seconds']:.0f}s: puts/s {idle['puts_per_s']}, "
            f"txns/s {idle['txns_per_s']}, raft proposals/s {idle['raft_proposals_per_s']}, "
            f"lease renewals/s {idle['lease_renewals_per_s']}"
        )
        frozen = results["member_freeze"]
        print(
            f"a frozen member of {frozen['members']}, 2 s lease: a change is seen "
            f"{frozen['seen_median_s']:.2f}s after the freeze (median; max "
            f"{frozen['seen_max_s']:.2f}s); leases kept {frozen['leases_kept']}"
        )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
