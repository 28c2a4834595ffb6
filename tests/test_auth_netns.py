"""A real second host: a client in its own network namespace (veth pair) reaches the sidecar
from a non-loopback address. Unsigned it cannot read a memory; signed with the cluster key
it can. Needs root and `ip` (CI runs as root); skipped elsewhere."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from sidecar import keys

from .cluster_helpers import TEST_SECRET, Cluster

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parent.parent
ALICE = [{"name": "alice", "memory": {"read_policy": "isolated"}}]

CLIENT = r"""
import json, sys, time, urllib.request, urllib.error
from signet_cluster.security.signing import Signer
from signet_cluster.security.keyring import new_key, Keyring
url, secret = sys.argv[1], sys.argv[2]
body = json.dumps({"query": "launch codes", "agentId": "alice"}).encode()
key = new_key(secret)
signer = Signer(lambda: Keyring(keys=(key,), primary=key.id), "outsider", wall=time.time)
def call(signed):
    host = url.split("//")[1].split("/")[0]
    headers = {"Content-Type": "application/json", "Host": host}
    if signed:
        headers.update(signer.headers("POST", host, "/api/memory/recall", body, headers))
    req = urllib.request.Request(url + "/api/memory/recall", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
print(json.dumps({"unsigned": call(False), "signed": call(True)}))
"""


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[tuple[str, str, str]]:
    """(netns name, host-side address, namespace-side address) of a fresh veth pair."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (`ip`) to create a network namespace")
    tag = f"{os.getpid() % 100000}"
    name, host_if, ns_if = f"sc-auth-{tag}", f"vsc{tag}h", f"vsc{tag}n"
    octet = 1 + os.getpid() % 250
    host_ip, ns_ip = f"10.213.{octet}.1", f"10.213.{octet}.2"
    try:
        _run("ip", "netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create a network namespace here: {exc}")
    try:
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", name)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _run("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


async def test_a_client_on_another_host_cannot_read_a_memory_unsigned(
    cluster: Cluster, namespace: tuple[str, str, str]
) -> None:
    """From a client in another network namespace (a real non-loopback peer): an unsigned
    recall is 401 and returns nothing; the same recall signed with the cluster key returns
    the memory. The sidecar saw the namespace's address, not a hook."""
    name, host_ip, ns_ip = namespace
    a = await cluster.add("a", ALICE, coordinator=True, host=host_ip)
    assert a.url.startswith(f"http://{host_ip}:")
    code, saved = await cluster.post(
        a.url + "/api/memory/remember",
        {"content": "alice keeps the launch codes in the blue folder", "agentId": "alice"},
    )
    assert code == 200, saved
    assert a.app[keys.AUTH].peer_override is None
    with structlog.testing.capture_logs() as logs:
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            name,
            sys.executable,
            "-c",
            CLIENT,
            a.url,
            TEST_SECRET,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(ROOT),
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    unsigned_code, unsigned_body = result["unsigned"]
    assert unsigned_code == 401 and "launch codes" not in unsigned_body
    signed_code, signed_body = result["signed"]
    assert signed_code == 200 and "launch codes" in signed_body
    refusals = [e for e in logs if e["event"] == "request_refused"]
    assert [e["peer"] for e in refusals] == [ns_ip]
