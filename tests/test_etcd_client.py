"""The etcd v3 JSON-gateway client against a real etcd (and real misbehaving servers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from signet_cluster.etcd.client import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    EtcdRequestFailed,
    EtcdUnavailable,
    Get,
    LeaseNotFound,
    Put,
    WatchBatch,
    WatchCompacted,
    prefix_end,
)

from .cluster_helpers import free_port, wait_for
from .etcd_helpers import EtcdServer, etcd  # noqa: F401  (fixture)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


async def test_keys_round_trip_with_prefix_ranges(
    etcd: EtcdServer,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    """Values are bytes in and out (base64 on the wire), a prefix range sees exactly the keys
    under it, and a delete by prefix removes them all."""
    client = EtcdClient(session, [etcd.url], timeout=2)
    rev = await client.put("/p/a", b"\x00\xffbinary")
    await client.put("/p/b/c", b"{}")
    await client.put("/q", b"outside")
    found = await client.range("/p/", prefix=True)
    assert [(kv.key, kv.value) for kv in found.kvs] == [
        ("/p/a", b"\x00\xffbinary"),
        ("/p/b/c", b"{}"),
    ]
    assert found.revision > rev and found.kvs[0].mod_revision == rev
    assert await client.get("/missing") is None
    assert await client.delete("/p/", prefix=True) == 2
    assert (await client.range("/p/", prefix=True)).kvs == ()
    assert (await client.get("/q")) is not None
    assert prefix_end(b"a\xff") == b"b" and prefix_end(b"\xff") == b"\0"


async def test_lease_keys_vanish_on_revoke_and_keepalive_reports_lost_lease(
    etcd: EtcdServer,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    """A key put under a lease lives while the lease does; revoking deletes it; renewing a
    revoked lease raises LeaseNotFound (the cue to re-grant); revoking twice is harmless."""
    client = EtcdClient(session, [etcd.url], timeout=2)
    lease = await client.lease_grant(1)
    assert lease.ttl == 2  # etcd's minimum TTL on a default single member
    assert await client.lease_keepalive(lease.id) == 2
    await client.put("/leased", b"x", lease=lease.id)
    kv = await client.get("/leased")
    assert kv is not None and kv.lease == lease.id
    assert await client.lease_revoke(lease.id) is True
    assert await client.get("/leased") is None
    with pytest.raises(LeaseNotFound, match="not found"):
        await client.lease_keepalive(lease.id)
    assert await client.lease_revoke(lease.id) is False
    assert await client.lease_ttl(lease.id) == -1
    with pytest.raises(LeaseNotFound):
        await client.put("/leased", b"x", lease=lease.id)


async def test_first_create_wins_and_every_caller_agrees(
    etcd: EtcdServer,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    """Twenty concurrent creates of one key: exactly one succeeds, and every loser is told
    the winner's value (compare-and-swap on create revision 0)."""
    client = EtcdClient(session, [etcd.url], timeout=5)
    results = await asyncio.gather(
        *(client.create("/claims/x", f"node{i}".encode()) for i in range(20))
    )
    winners = [kv.value for won, kv in results if won]
    assert len(winners) == 1
    assert {kv.value for _won, kv in results} == {winners[0]}
    stored = await client.get("/claims/x")
    assert stored is not None and stored.value == winners[0]


async def test_txn_compare_and_swap_branches(
    etcd: EtcdServer,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    """A txn runs its success ops only while every compare holds, else its failure ops,
    and reports each op's answer."""
    client = EtcdClient(session, [etcd.url], timeout=2)
    rev = await client.put("/k", b"1")
    stale = await client.txn(
        [Compare.unchanged("/k", rev - 1)], [Delete("/k")], [Get("/k"), Put("/other", b"2")]
    )
    assert not stale.succeeded
    assert stale.responses[1] is None
    first = stale.responses[0]
    assert not isinstance(first, int) and first is not None and first.kvs[0].value == b"1"
    done = await client.txn(
        [Compare.unchanged("/k", rev), Compare.value_is("/k", b"1"), Compare.present("/k")],
        [Delete("/k")],
    )
    assert done.succeeded and done.responses == (1,)
    assert await client.get("/k") is None and await client.get("/other") is not None


async def collect(batches: AsyncIterator[WatchBatch], into: list[tuple[str, str, bytes]]) -> None:
    async for batch in batches:
        into.extend((e.type, e.kv.key, e.kv.value) for e in batch.events)


async def test_watch_streams_changes_and_resumes_after_an_etcd_restart(
    etcd: EtcdServer,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    """A prefix watch delivers puts and deletes in order; when etcd restarts the stream is
    reopened from the revision after the last event, so nothing is lost or delivered twice,
    and the break is reported."""
    client = EtcdClient(session, [etcd.url], timeout=2)
    start = await client.put("/w/0", b"zero")
    seen: list[tuple[str, str, bytes]] = []
    breaks: list[EtcdError] = []
    watch = client.watch(
        "/w/", prefix=True, start_revision=start, on_disconnect=breaks.append, retry_max=0.2
    )
    task = asyncio.create_task(collect(watch, seen))
    try:
        await client.put("/w/1", b"one")
        await client.delete("/w/0")
        await wait_for(lambda: _async(len(seen) == 3), what="three events")
        await etcd.stop()
        await wait_for(lambda: _async(bool(breaks)), what="the break to be reported")
        await etcd.start()
        await client.put("/w/2", b"two")
        await wait_for(lambda: _async(len(seen) >= 4), what="the event after the restart")
        await client.put("/w/3", b"three")
        await wait_for(lambda: _async(len(seen) >= 5), what="one more event")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await watch.aclose()
    assert seen == [
        ("put", "/w/0", b"zero"),
        ("put", "/w/1", b"one"),
        ("delete", "/w/0", b""),
        ("put", "/w/2", b"two"),
        ("put", "/w/3", b"three"),
    ]
    assert all(isinstance(b, EtcdUnavailable) for b in breaks)


async def _async(value: bool) -> bool:
    return value


async def test_watch_from_compacted_history_raises(
    etcd: EtcdServer,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    """Resuming from a revision etcd has compacted away cannot be done silently: the watch
    raises WatchCompacted with the compaction revision."""
    client = EtcdClient(session, [etcd.url], timeout=2)
    first = await client.put("/c/a", b"1")
    last = await client.put("/c/a", b"2")
    await client.call("/kv/compaction", {"revision": str(last)})
    async with aclosing(client.watch("/c/", prefix=True, start_revision=first)) as watch:
        with pytest.raises(WatchCompacted) as caught:
            async for _batch in watch:
                pass
    assert caught.value.compact_revision == last


async def test_unreachable_endpoints_give_one_clear_error(session: aiohttp.ClientSession) -> None:
    """With nothing listening, every call fails fast with EtcdUnavailable naming each
    endpoint tried."""
    one, two = dead_url(), dead_url()
    client = EtcdClient(session, [one, two], timeout=1)
    with pytest.raises(EtcdUnavailable) as caught:
        await client.range("/x")
    assert one in caught.value.message and two in caught.value.message
    assert caught.value.message.startswith("etcd unreachable: ")


async def test_calls_fail_over_to_the_next_endpoint(
    etcd: EtcdServer,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    """A dead first endpoint is skipped; the one that answered is tried first next time."""
    client = EtcdClient(session, [dead_url(), etcd.url], timeout=1)
    await client.put("/f", b"1")
    assert client.endpoint == etcd.url


async def test_a_server_that_is_not_etcd_or_hangs_is_reported(
    session: aiohttp.ClientSession,
) -> None:
    """An endpoint answering HTML is named as not being etcd's gateway; one that never
    answers times out after the call's timeout."""

    async def html(_request: web.Request) -> web.Response:
        return web.Response(text="<html>nginx</html>", status=404, content_type="text/html")

    async def hang(_request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    app = web.Application()
    app.router.add_post("/v3/kv/range", html)
    app.router.add_post("/v3/kv/put", hang)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        client = EtcdClient(session, [str(server.make_url("")).rstrip("/")], timeout=0.3)
        with pytest.raises(EtcdRequestFailed, match="did not answer JSON"):
            await client.range("/x")
        with pytest.raises(EtcdUnavailable, match=r"timed out after 0\.3s"):
            await client.put("/x", b"1")
    finally:
        await server.close()


async def test_a_watch_that_never_answers_moves_on_to_the_next_member(
    etcd: EtcdServer,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    """A member that takes the watch request but never answers it (not even the response
    headers, as a member in trouble may do) is given up after the call timeout, and the
    watch opens on the next member."""
    answered = asyncio.Event()

    async def silent(_request: web.Request) -> web.Response:
        answered.set()
        await asyncio.sleep(30)
        return web.Response()

    app = web.Application()
    app.router.add_post("/v3/watch", silent)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    try:
        silent_url = str(server.make_url("")).rstrip("/")
        client = EtcdClient(session, [silent_url, etcd.url], timeout=0.3)
        breaks: list[EtcdError] = []
        watch = client.watch("/s/", prefix=True, start_revision=1, on_disconnect=breaks.append)
        async with aclosing(watch), asyncio.timeout(10):
            first = await anext(watch)
        assert answered.is_set() and first.created and first.endpoint == etcd.url
        assert breaks == [] and client.endpoint == etcd.url
    finally:
        await server.close()


async def test_etcd_errors_keep_their_message(
    etcd: EtcdServer,  # noqa: F811
    session: aiohttp.ClientSession,
) -> None:
    """An error etcd itself reports (here: a put under a lease that does not exist, a read
    of a compacted revision) surfaces with etcd's own message and gRPC code."""
    client = EtcdClient(session, [etcd.url], timeout=2)
    rev = await client.put("/e", b"1")
    await client.put("/e", b"2")
    await client.call("/kv/compaction", {"revision": str(rev + 1)})
    with pytest.raises(EtcdRequestFailed) as caught:
        await client.call("/kv/range", {"key": "L2U=", "revision": str(rev)})
    assert "compacted" in caught.value.message and caught.value.grpc_code == 11
    with pytest.raises(ValueError, match="at least one"):
        EtcdClient(session, [], timeout=1)
