"""Headless Chromium driven over the DevTools protocol, for the tests that need a real browser
(Debian's `chromium`; `.ci/run` installs it)."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from conftest import free_port, wait_http

__all__ = ["CHROMIUM", "Page", "chromium", "open_page"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [  # as root it needs --no-sandbox; the rest keep it off this machine's closed network
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
]


@contextmanager
def chromium(profile: Path) -> Iterator[int]:
    """A headless Chromium with a fresh profile in `profile`; yields its DevTools port."""
    port = free_port()
    browser = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/json/version")
        yield port
    finally:
        os.killpg(browser.pid, 9)
        browser.wait()


class Page:
    """One DevTools page session: `call` sends a protocol command and returns its result."""

    def __init__(self, ws) -> None:
        self._ws = ws
        self._ids = iter(range(1, 1_000_000))

    async def call(self, method: str, **params) -> dict:
        i = next(self._ids)
        await self._ws.send_json({"id": i, "method": method, "params": params})
        async for msg in self._ws:
            data = msg.json()
            if data.get("id") == i:
                return data.get("result", {})
        raise ConnectionError(f"DevTools closed before answering {method}")

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


@asynccontextmanager
async def open_page(port: int) -> AsyncIterator[Page]:
    """The browser's first page tab, over its DevTools websocket."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        deadline, target = time.monotonic() + 60, None
        while target is None:  # the browser answers before its first tab exists
            assert time.monotonic() < deadline, "the browser opened no page tab"
            async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                target = next((t for t in await response.json() if t["type"] == "page"), None)
            if target is None:
                await asyncio.sleep(0.2)
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            yield Page(ws)
