"""Signing and verification (signet_cluster.security.signing): round trips, tampering, replay, skew,
key rotation and header parsing, as properties over random input (hypothesis)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signet_cluster.security.keyring import Key, Keyring, new_key
from signet_cluster.security.signing import (
    AUTH_HEADERS,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TS_HEADER,
    AuthFailure,
    Presented,
    ReplayCache,
    Signer,
    Verifier,
)

NOW = 1_795_000_000.0
K1 = new_key("a" * 40, "k1")
K2 = new_key("b" * 40, "k2")
K3 = new_key("c" * 40, "k3")

methods = st.sampled_from(["GET", "POST", "DELETE", "PATCH", "PUT"])
hosts = st.from_regex(r"\A[a-z0-9.-]{1,30}(:[0-9]{1,5})?\Z")
paths = st.from_regex(r"\A/[A-Za-z0-9/_%.~-]{0,60}(\?[A-Za-z0-9=&%_.-]{0,40})?\Z")
bodies = st.binary(max_size=2048)


def ring(*keys: Key, primary: str | None = None) -> Keyring:
    return Keyring(keys=keys, primary=primary or keys[0].id)


def signer(keyring: Keyring, node: str = "node-a", now: float = NOW) -> Signer:
    return Signer(lambda: keyring, node, wall=lambda: now)


def verifier(keyring: Keyring | None, skew: float = 30.0, size: int = 1000) -> Verifier:
    return Verifier(lambda: keyring, skew_s=skew, cache=ReplayCache(size, int(skew * 1000)))


def check(
    v: Verifier,
    headers: dict[str, str],
    method: str,
    host: str,
    path: str,
    body: bytes,
    now: float = NOW,
) -> object:
    presented = Presented.parse(headers)
    assert presented is not None
    return v.verify(
        presented,
        method=method,
        host=host,
        path_qs=path,
        headers=headers.items(),
        body=body,
        now=now,
    )


@given(methods, hosts, paths, bodies)
def test_signed_request_verifies_once(method: str, host: str, path: str, body: bytes) -> None:
    """Any request signed with an installed key verifies, names its node and key, and the
    same headers are refused the second time (replay)."""
    keys = ring(K1)
    headers = signer(keys).headers(method, host, path, body)
    verified = check(verifier(keys), headers, method, host, path, body)
    v = verifier(keys)
    check(v, headers, method, host, path, body)
    with pytest.raises(AuthFailure) as info:
        check(v, headers, method, host, path, body)
    assert info.value.reason == "replayed"
    assert (
        getattr(verified, "node_id", None) == "node-a" and getattr(verified, "key_id", None) == "k1"
    )


@given(
    methods,
    hosts,
    paths,
    bodies,
    st.sampled_from(["method", "host", "path", "body", "node", "key", "nonce", "signature"]),
)
def test_any_change_breaks_the_signature(
    method: str, host: str, path: str, body: bytes, part: str
) -> None:
    """Changing the method, Host, path/query, body, node, key id, nonce or signature of a
    signed request makes it fail (bad signature, or an unknown key)."""
    keys = ring(K1, K2)
    headers = signer(keys).headers(method, host, path, body)
    if part == "method":
        method = "HEAD" if method != "HEAD" else "GET"
    elif part == "host":
        host = host + "x"
    elif part == "path":
        path = path + "/x"
    elif part == "body":
        body = body + b"!"
    elif part == "node":
        headers["x-signet-cluster-node"] = "node-b"
    elif part == "key":
        headers["x-signet-cluster-key"] = "k2"
    elif part == "nonce":
        headers[NONCE_HEADER] = "Z" * 22
    else:
        sig = headers[SIGNATURE_HEADER]
        headers[SIGNATURE_HEADER] = ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(AuthFailure) as info:
        check(verifier(keys), headers, method, host, path, body)
    assert info.value.reason == "bad_signature"


@given(st.floats(min_value=-3600, max_value=3600).filter(lambda d: abs(d) > 30.5))
def test_timestamps_outside_the_window_are_stale(offset: float) -> None:
    """A request signed more than `skew` seconds away from the verifier's clock is refused
    as stale, before and after the future."""
    keys = ring(K1)
    headers = signer(keys, now=NOW + offset).headers("POST", "h", "/p", b"{}")
    with pytest.raises(AuthFailure) as info:
        check(verifier(keys, skew=30), headers, "POST", "h", "/p", b"{}")
    assert info.value.reason == "stale"


def test_rotation_old_and_new_keys_both_verify() -> None:
    """During a rotation every installed key verifies; the primary signs; a removed key
    no longer verifies; an unknown key id is named in the error, never a secret."""
    old = ring(K1)
    both = ring(K1, K2)
    switched = both.use("k2")
    done = switched.remove("k1")
    for sender in (old, both, switched):
        for receiver in (both, switched):
            headers = signer(sender).headers("POST", "h", "/api/cluster/heartbeat", b"x")
            check(verifier(receiver), headers, "POST", "h", "/api/cluster/heartbeat", b"x")
    assert signer(switched).headers("GET", "h", "/", b"")["x-signet-cluster-key"] == "k2"
    headers = signer(old).headers("GET", "h", "/", b"")
    with pytest.raises(AuthFailure) as info:
        check(verifier(done), headers, "GET", "h", "/", b"")
    assert info.value.reason == "unknown_key" and "'k1'" in info.value.message
    assert "a" * 40 not in info.value.message


def test_keyring_changes_are_checked() -> None:
    """The primary cannot be removed, a key cannot be installed twice (by id or secret),
    only installed keys can become primary; repr never shows a secret."""
    keys = ring(K1, K2)
    with pytest.raises(ValueError, match="primary"):
        keys.remove("k1")
    with pytest.raises(ValueError, match="already installed"):
        keys.install(K2)
    with pytest.raises(ValueError, match="another key id"):
        keys.install(Key(id="k9", secret=K1.secret))
    with pytest.raises(ValueError, match="not installed"):
        keys.use("k3")
    assert keys.install(K3).use("k3").primary == "k3"
    assert "aaaa" not in repr(keys) and "bbbb" not in repr(keys)
    with pytest.raises(ValueError, match="too short"):
        new_key("short")


header_values = st.one_of(
    st.none(), st.text(max_size=80), st.text(string.ascii_letters, max_size=50)
)


@given(st.fixed_dictionaries({name: header_values for name in AUTH_HEADERS}))
def test_header_parsing_never_crashes(headers: dict[str, str | None]) -> None:
    """Any mix of present, missing and garbage signature headers either parses, is
    'unsigned' (none present) or raises AuthFailure('malformed'); nothing else escapes."""
    present = {k: v for k, v in headers.items() if v is not None}
    try:
        parsed = Presented.parse(present)
    except AuthFailure as exc:
        reason: str | None = exc.reason
    else:
        reason = None
        assert (parsed is None) == (not present)
    assert reason in (None, "malformed")


def test_half_signed_request_is_malformed_not_unsigned() -> None:
    """A request with some signature headers but not all is refused, never treated as
    unsigned (which loopback would admit)."""
    with pytest.raises(AuthFailure) as info:
        Presented.parse({TS_HEADER: "1"})
    assert info.value.reason == "malformed" and "missing" in info.value.message
    assert Presented.parse({}) is None


def test_no_keyring_cannot_verify() -> None:
    """A verifier without keys refuses signed requests with a reason saying so."""
    headers = signer(ring(K1)).headers("GET", "h", "/", b"")
    with pytest.raises(AuthFailure) as info:
        check(verifier(None), headers, "GET", "h", "/", b"")
    assert info.value.reason == "no_keyring"


ops = st.lists(
    st.tuples(st.integers(0, 40), st.integers(-5_000, 5_000), st.integers(0, 2_000)),
    max_size=200,
)


@settings(max_examples=300)
@given(ops, st.integers(1, 12))
def test_replay_cache_is_bounded_and_never_admits_a_replay(
    steps: list[tuple[int, int, int]], size: int
) -> None:
    """Whatever the order of requests and clock steps: the cache never holds more than its
    size, and the same signed request (nonce and timestamp: both are signed) is never
    accepted twice while its timestamp is inside the window."""
    window = 1_000
    cache = ReplayCache(size, window)
    accepted: set[tuple[str, int]] = set()
    now = 10_000
    for nonce_index, ts_offset, advance in steps:
        now += advance
        nonce = f"nonce-{nonce_index:012d}"
        ts = now + ts_offset
        if abs(ts - now) > window:
            continue  # the verifier refuses these as stale before the cache sees them
        try:
            cache.add(nonce, ts, now)
        except AuthFailure as exc:
            refused = exc.reason
        else:
            refused = None
            assert (nonce, ts) not in accepted or ts < now - window, "replay admitted"
            accepted.add((nonce, ts))
        assert refused in (None, "replayed", "stale")
        assert len(cache) <= size


ACTED_ON = {
    "x-signet-cluster-agent": "bob",
    "x-signet-agent-id": "bob",
    "x-signet-session-key": "agent:bob:s1",
    "Authorization": "Bearer t0ken-for-bob",
    "x-signet-cluster-replay": "1",
    "Content-Type": "application/json",
}


@pytest.mark.parametrize("name", sorted(ACTED_ON))
@pytest.mark.parametrize("change", ["alter", "drop"])
def test_every_header_the_receiver_acts_on_is_signed(name: str, change: str) -> None:
    """Issue 12: an on-path change of a signed hop's agent (bob -> alice), session key,
    bearer token, replay mark or content type breaks the signature, as does removing it."""
    keys = ring(K1)
    sent = dict(ACTED_ON)
    headers = {**sent, **signer(keys).headers("POST", "h:1", "/api/memory/recall", b"{}", sent)}
    if change == "alter":
        headers[name] = headers[name].replace("bob", "alice") + "x"
    else:
        del headers[name]
    with pytest.raises(AuthFailure) as info:
        check(verifier(keys), headers, "POST", "h:1", "/api/memory/recall", b"{}")
    assert info.value.reason == "bad_signature"


def test_an_added_signet_header_breaks_the_signature() -> None:
    """A header added on the way (say x-signet-agent-id: alice on a request that had none)
    is refused: the set of signed headers is part of the signature."""
    keys = ring(K1)
    headers = signer(keys).headers("POST", "h:1", "/api/memory/recall", b"{}", {})
    headers["x-signet-agent-id"] = "alice"
    with pytest.raises(AuthFailure) as info:
        check(verifier(keys), headers, "POST", "h:1", "/api/memory/recall", b"{}")
    assert info.value.reason == "bad_signature"


def test_a_signature_only_holds_for_the_receiver_it_names() -> None:
    """Issue 12: a request signed for node B (Host b:3860) and replayed unchanged to node A
    is refused by A, before its nonce is remembered."""
    keys = ring(K1)
    headers = signer(keys).headers("POST", "b:3860", "/api/cluster/promote", b"{}")
    presented = Presented.parse(headers)
    assert presented is not None
    v = verifier(keys)
    args = {
        "method": "POST",
        "host": "b:3860",
        "path_qs": "/api/cluster/promote",
        "headers": headers.items(),
        "body": b"{}",
        "now": NOW,
    }
    with pytest.raises(AuthFailure) as info:
        v.verify(presented, receiver=frozenset({"a:3860", "127.0.0.1:3860"}), **args)  # type: ignore[arg-type]
    assert info.value.reason == "wrong_host"
    assert v.verify(presented, receiver=frozenset({"b:3860"}), **args).node_id == "node-a"  # type: ignore[arg-type]


def test_a_request_signed_before_a_restart_says_so() -> None:
    """A request signed before the sidecar started is refused as such, not as "replay
    cache full" (which is what a flood does)."""
    cache = ReplayCache(2, 30_000, floor_ms=int(NOW * 1000))
    with pytest.raises(AuthFailure) as info:
        cache.check("n" * 16, int(NOW * 1000) - 5, int(NOW * 1000))
    assert info.value.reason == "signed_before_start"
    assert "before this sidecar started" in info.value.message
    assert "full" not in info.value.message
    now = int(NOW * 1000) + 10
    for i in range(3):
        cache.add(f"nonce-{i:012d}", now + i, now + i)
    with pytest.raises(AuthFailure) as info:
        cache.check("m" * 16, now, now + 3)
    assert info.value.reason == "stale" and "full" in info.value.message
