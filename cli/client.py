"""The CLI's HTTP client for a sidecar: one call per command, a timeout on each, and every
failure turned into one readable line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import attrs
import click
from yarl import URL

if TYPE_CHECKING:
    from .credentials import Credentials

T = TypeVar("T")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DEGRADED = 3
EXIT_UNREACHABLE = 4


class CliError(click.ClickException):
    """One line on stderr and a chosen exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@attrs.frozen
class Answer:
    status: int
    body: Any
    url: str = ""  # what was asked, for error messages


@attrs.frozen(kw_only=True)
class SidecarClient:
    base_url: str
    timeout: float = 10.0
    # More sidecars to try, in order, when `base_url` cannot be reached (--sidecar A,B,C).
    fallbacks: tuple[str, ...] = ()
    # The cluster key (every request is signed with it) and TLS files: cli/credentials.py.
    credentials: Credentials | None = None

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        base_url: str | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer:
        if base_url is not None or not self.fallbacks:
            return await self._call_one(method, path, body, base_url or self.base_url, params)
        first_error: CliError | None = None
        for url in (self.base_url, *self.fallbacks):
            try:
                return await self._call_one(method, path, body, url, params)
            except CliError as exc:
                if exc.exit_code != EXIT_UNREACHABLE:
                    raise
                first_error = first_error or exc
        assert first_error is not None
        raise first_error

    async def _call_one(
        self, method: str, path: str, body: Any, base_url: str, params: dict[str, str] | None
    ) -> Answer:
        url = URL(base_url.rstrip("/") + path)
        if params:
            url = url.extend_query(params)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        credentials = self.credentials
        if credentials is not None and credentials.signer is not None:
            host = url.host_port_subcomponent or ""
            headers["Host"] = host
            headers.update(
                credentials.signer.headers(method, host, url.raw_path_qs, data or b"", headers)
            )
        elif credentials is not None and credentials.viewer_token and method in ("GET", "HEAD"):
            headers["Authorization"] = f"Bearer {credentials.viewer_token}"
        ssl_context = credentials.ssl_context if credentials is not None else None
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session,
                session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    ssl=ssl_context if ssl_context is not None and url.scheme == "https" else True,
                ) as resp,
            ):
                raw = await resp.read()
        except TimeoutError:
            raise CliError(f"{url}: no answer within {self.timeout:g}s", EXIT_UNREACHABLE) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise CliError(
                f"cannot reach the sidecar at {base_url} ({exc or type(exc).__name__}); "
                "is `signet-cluster serve` running there? (set --sidecar or SIGNET_CLUSTER_SIDECAR)",
                EXIT_UNREACHABLE,
            ) from None
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        return Answer(resp.status, parsed, str(url))

    async def admin(self, method: str, path: str, body: Any = None) -> Answer:
        """An operation only a coordinator performs: when the sidecar we were pointed at is
        not one, try the coordinators it names, in order."""
        answer = await self.call(method, path, body)
        if answer.status != 421 or not isinstance(answer.body, dict):
            return answer
        coordinators = (answer.body.get("details") or {}).get("coordinators") or []
        if not coordinators:
            raise CliError(
                f"{self.base_url} is not a coordinator and knows none; point --sidecar at a coordinator"
            )
        last: CliError | None = None
        for url in coordinators:
            try:
                answer = await self.call(method, path, body, base_url=url)
            except CliError as exc:
                last = exc
                continue
            if answer.status != 421:
                return answer
        raise last or CliError("no coordinator accepted the request", EXIT_UNREACHABLE)


def error_text(answer: Answer) -> str:
    """One line: the sidecar's own `error` (it lists every problem), else what answered."""
    body = answer.body
    if isinstance(body, dict) and body.get("error"):
        return str(body["error"])
    text = " ".join(str(body or "").split())[:200]
    # Not our JSON error shape: something else listens there (the daemon, a proxy, ...).
    return (
        f"{answer.url} answered HTTP {answer.status}"
        + (f": {text}" if text else "")
        + "; is --sidecar a signet-cluster sidecar?"
    )


def expect_ok(answer: Answer) -> Any:
    if 200 <= answer.status < 300:
        return answer.body
    raise CliError(error_text(answer))


async def get_status(client: SidecarClient) -> dict[str, Any]:
    """`GET /api/cluster/status`, checked to be one: something else answering 200 (another
    service on that port) must not pass for an empty, healthy cluster."""
    answer = await client.call("GET", "/api/cluster/status")
    body = expect_ok(answer)
    if not isinstance(body, dict) or not isinstance(body.get("nodes"), list):
        raise CliError(
            f"{answer.url} did not answer with a cluster status; "
            "is --sidecar a signet-cluster sidecar?"
        )
    return body
