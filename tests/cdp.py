"""A small Chrome DevTools Protocol driver for tests: start Debian's headless Chromium with a
fresh profile on an ephemeral debugging port, open a page, evaluate JavaScript, take
screenshots. Only the few CDP methods the tests need; no webdriver in between."""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

from .cluster_helpers import wait_for

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--window-size=1280,900",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # Chromium picks a free port and writes it to its profile
)


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise AssertionError("no Chromium found: install the Debian package `chromium` (see .ci/run)")


class Browser:
    """One headless Chromium process and a DevTools connection to its first page."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.process: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.log: BinaryIO | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Browser:
        self.profile.mkdir(parents=True, exist_ok=True)
        self.log = (self.profile / "chromium.log").open("wb")
        self.process = await asyncio.create_subprocess_exec(
            chromium_binary(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile}",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self.log,
        )
        port_file = self.profile / "DevToolsActivePort"

        async def listening() -> bool:
            assert self.process is not None
            if self.process.returncode is not None:
                log = (self.profile / "chromium.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"Chromium exited with {self.process.returncode}:\n{log}")
            return port_file.exists() and len(port_file.read_text().splitlines()) >= 2

        await wait_for(listening, timeout=30, what="Chromium's DevTools port")
        port = int(port_file.read_text().splitlines()[0])
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.log is not None:
            self.log.close()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One CDP command; events arriving meanwhile are skipped."""
        assert self.ws is not None
        message_id = next(self._ids)
        await self.ws.send_json({"id": message_id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), 30)
            if message.get("id") == message_id:
                if "error" in message:
                    raise AssertionError(f"{method} failed: {message['error']}")
                return message.get("result", {})  # type: ignore[no-any-return]

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

        async def loaded() -> bool:
            return await self.evaluate("document.readyState") == "complete"

        await wait_for(loaded, timeout=30, what=f"{url} to load")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> bytes:
        result = await self.send("Page.captureScreenshot", format="png")
        data = base64.b64decode(result["data"])
        await asyncio.to_thread(path.write_bytes, data)
        return data
