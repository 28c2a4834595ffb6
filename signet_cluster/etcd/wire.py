"""Wire types of etcd's v3 JSON gateway: the errors, the values a call returns, the
operations of a transaction, and the decoding of answers (base64 keys and values, 64-bit
integers as strings, default-valued fields left out). The client is signet_cluster.etcd.client."""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

import attrs

from signet_cluster.errors import ClusterError

# gRPC status codes etcd puts in `code`; these mean "this member cannot serve now, another
# one may" (shutting down, no leader, overloaded), so the call moves on to the next endpoint.
_RETRY_ELSEWHERE = {1, 4, 8, 14}  # CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNAVAILABLE
_NOT_FOUND = 5


class EtcdError(ClusterError):
    """Base of the etcd client's errors."""

    status = 503
    code = "etcd_error"


class EtcdUnavailable(EtcdError):
    """No endpoint answered (refused, timed out, or not serving)."""

    code = "etcd_unavailable"


class EtcdRequestFailed(EtcdError):
    """etcd answered, with an error (or with something that is not the v3 gateway)."""

    status = 502
    code = "etcd_request_failed"

    def __init__(self, message: str, *, grpc_code: int | None = None) -> None:
        super().__init__(message, details={"grpc_code": grpc_code} if grpc_code else None)
        self.grpc_code = grpc_code


class LeaseNotFound(EtcdRequestFailed):
    """The lease expired or was revoked; grant a new one."""

    code = "etcd_lease_not_found"


class WatchCompacted(EtcdError):
    """The watch cannot resume: etcd compacted the history it needs. Range again, then
    watch from the range's revision."""

    code = "etcd_watch_compacted"

    def __init__(self, message: str, *, compact_revision: int) -> None:
        super().__init__(message, details={"compact_revision": compact_revision})
        self.compact_revision = compact_revision


# -- values ------------------------------------------------------------------------------
def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any) -> bytes:
    return base64.b64decode(text) if isinstance(text, str) else b""


def as_int(value: Any) -> int:
    # int64 fields arrive as strings; absent means 0.
    return int(value) if value not in (None, "") else 0


def prefix_end(prefix: bytes) -> bytes:
    """The `range_end` that makes a range cover every key starting with `prefix`."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # an all-0xff (or empty) prefix: every key from `prefix` on


def range_body(key: str, prefix: bool) -> dict[str, str]:
    raw = key.encode()
    body = {"key": b64(raw)}
    if prefix:
        body["range_end"] = b64(prefix_end(raw))
    return body


@attrs.frozen(kw_only=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyValue:
        return cls(
            key=unb64(data.get("key")).decode("utf-8", "replace"),
            value=unb64(data.get("value")),
            create_revision=as_int(data.get("create_revision")),
            mod_revision=as_int(data.get("mod_revision")),
            version=as_int(data.get("version")),
            lease=as_int(data.get("lease")),
        )


@attrs.frozen(kw_only=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    revision: int

    @classmethod
    def from_json(cls, data: dict[str, Any], revision: int | None = None) -> RangeResult:
        kvs = tuple(KeyValue.from_json(kv) for kv in data.get("kvs") or ())
        if revision is None:
            revision = as_int((data.get("header") or {}).get("revision"))
        return cls(kvs=kvs, revision=revision)


@attrs.frozen(kw_only=True)
class Lease:
    id: int
    ttl: int


@attrs.frozen(kw_only=True)
class WatchEvent:
    type: Literal["put", "delete"]
    kv: KeyValue  # for a delete: key and mod_revision only


@attrs.frozen(kw_only=True)
class WatchBatch:
    """One watch answer. `created` marks the first answer of each (re)connected stream;
    `next_revision` is where a resumed watch continues without loss or repetition;
    `endpoint` is the member whose stream delivered it."""

    revision: int
    events: tuple[WatchEvent, ...]
    created: bool
    next_revision: int
    endpoint: str


# -- transactions ------------------------------------------------------------------------
@attrs.frozen
class Compare:
    """One txn condition on a key. Build with the named constructors."""

    key: str
    target: Literal["CREATE", "MOD", "VERSION", "VALUE", "LEASE"]
    operand: int | bytes
    result: Literal["EQUAL", "NOT_EQUAL", "GREATER", "LESS"] = "EQUAL"

    @classmethod
    def absent(cls, key: str) -> Compare:
        """The key does not exist (its create revision is 0)."""
        return cls(key, "CREATE", 0)

    @classmethod
    def present(cls, key: str) -> Compare:
        return cls(key, "CREATE", 0, "GREATER")

    @classmethod
    def unchanged(cls, key: str, mod_revision: int) -> Compare:
        """The key was last written at `mod_revision` (compare-and-swap on a version seen)."""
        return cls(key, "MOD", mod_revision)

    @classmethod
    def value_is(cls, key: str, value: bytes) -> Compare:
        return cls(key, "VALUE", value)

    def to_json(self) -> dict[str, Any]:
        field = {
            "CREATE": "create_revision",
            "MOD": "mod_revision",
            "VERSION": "version",
            "VALUE": "value",
            "LEASE": "lease",
        }[self.target]
        operand = b64(self.operand) if isinstance(self.operand, bytes) else str(self.operand)
        return {
            "key": b64(self.key.encode()),
            "target": self.target,
            "result": self.result,
            field: operand,
        }


@attrs.frozen
class Put:
    key: str
    value: bytes
    lease: int = 0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"key": b64(self.key.encode()), "value": b64(self.value)}
        if self.lease:
            body["lease"] = str(self.lease)
        return {"request_put": body}


@attrs.frozen
class Delete:
    key: str
    prefix: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"request_delete_range": range_body(self.key, self.prefix)}


@attrs.frozen
class Get:
    key: str
    prefix: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"request_range": range_body(self.key, self.prefix)}


Op = Put | Delete | Get


@attrs.frozen(kw_only=True)
class TxnResult:
    succeeded: bool
    revision: int
    # One entry per op of the branch taken: RangeResult for a Get, the number of keys
    # deleted for a Delete, None for a Put.
    responses: tuple[RangeResult | int | None, ...]


def txn_responses(data: dict[str, Any], revision: int) -> tuple[RangeResult | int | None, ...]:
    out: list[RangeResult | int | None] = []
    for item in data.get("responses") or ():
        if "response_range" in item:
            out.append(RangeResult.from_json(item["response_range"], revision))
        elif "response_delete_range" in item:
            out.append(as_int(item["response_delete_range"].get("deleted")))
        else:
            out.append(None)
    return tuple(out)


def watch_batch(data: Any, url: str, next_revision: int, endpoint: str) -> WatchBatch:
    raise_for_error(data, url, 200)
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, dict):
        raise EtcdRequestFailed(f"{url}: unexpected watch answer {str(data)[:200]}")
    compacted = as_int(result.get("compact_revision"))
    if compacted:
        raise WatchCompacted(
            f"etcd compacted its history past revision {next_revision} "
            f"(now at {compacted}); the watch must start again from a fresh read",
            compact_revision=compacted,
        )
    if result.get("canceled"):
        reason = result.get("cancel_reason") or "no reason given"
        raise EtcdUnavailable(f"{url}: etcd cancelled the watch ({reason})")
    events = []
    for item in result.get("events") or ():
        kind: Literal["put", "delete"] = "delete" if item.get("type") == "DELETE" else "put"
        kv = KeyValue.from_json(item.get("kv") or {})
        events.append(WatchEvent(type=kind, kv=kv))
        next_revision = max(next_revision, kv.mod_revision + 1)
    return WatchBatch(
        revision=as_int((result.get("header") or {}).get("revision")),
        events=tuple(events),
        created=bool(result.get("created")),
        next_revision=next_revision,
        endpoint=endpoint,
    )


def parse_json(raw: bytes, url: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        snippet = raw[:120].decode("utf-8", "replace")
        raise EtcdRequestFailed(
            f"{url} did not answer JSON (is this etcd >= 3.4's client URL?): {snippet!r}"
        ) from None


def raise_for_error(data: Any, url: str, status: int) -> None:
    if isinstance(data, dict) and ("error" in data or "code" in data) and "header" not in data:
        inner = data.get("error")
        if isinstance(inner, dict):  # a stream's error is `{"error": {...}}`
            data = inner
        message = str(data.get("message") or data.get("error") or data)[:300]
        code = data.get("code", data.get("grpc_code"))
        code = code if isinstance(code, int) else None
        if code == _NOT_FOUND and "lease" in message:
            raise LeaseNotFound(f"{url}: {message}", grpc_code=code)
        if code in _RETRY_ELSEWHERE:
            raise EtcdUnavailable(f"{url}: {message}")
        raise EtcdRequestFailed(f"{url}: {message}", grpc_code=code)
    if status != 200:
        raise EtcdRequestFailed(f"{url} answered HTTP {status}: {str(data)[:200]}")
    if not isinstance(data, dict):
        raise EtcdRequestFailed(f"{url}: unexpected answer {str(data)[:200]}")
