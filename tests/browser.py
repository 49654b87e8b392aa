"""Open an HTML file in headless Chromium and report what a reader would see go wrong.

A small Chrome DevTools Protocol client over one WebSocket (the ``websockets`` sync client, in
flattened session mode): it starts Debian's ``chromium`` with a throw-away profile, opens the
page, waits for its load event, counts the images and how many actually decoded, collects
console errors, uncaught exceptions and failed resource loads, and takes a screenshot. The
browser is always killed, with its whole process group, however the check ends.

Also a command: ``python -m tests.browser REPORT.html --screenshot OUT.png``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

CANDIDATES = ("chromium", "chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-extensions",
    "--no-first-run",
    "--remote-debugging-port=0",
)
# Counts <img> elements, and those that loaded and decoded (naturalWidth > 0 after decode()).
IMAGES_JS = """
(async () => {
  const images = Array.from(document.images);
  await Promise.all(images.map((img) => img.decode().catch(() => null)));
  return {
    images: images.length,
    loaded: images.filter((img) => img.complete && img.naturalWidth > 0).length,
    title: document.title,
  };
})()
"""


@dataclass(frozen=True)
class PageCheck:
    """What the browser saw."""

    images: int
    images_loaded: int
    console_errors: list[str] = field(default_factory=list)
    title: str = ""


def chromium_path() -> str | None:
    """The Chromium executable on PATH, or None."""
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class _Cdp:
    """Commands and events of one page session over the browser's WebSocket."""

    def __init__(self, ws: ClientConnection, *, deadline: float) -> None:
        self.ws = ws
        self.deadline = deadline
        self.session: str | None = None
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def _receive(self) -> dict[str, Any]:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the browser did not answer in time")
        message: dict[str, Any] = json.loads(self.ws.recv(timeout=left))
        return message

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its result; events that arrive meanwhile are kept."""
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = self._receive()
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message', reply['error'])}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        """The first event called ``method`` (already received, or the next to arrive)."""
        for event in self.events:
            if event["method"] == method:
                return event
        while True:
            event = self._receive()
            if "method" in event:
                self.events.append(event)
                if event["method"] == method:
                    return event


def _errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in events:
        params = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = params.get("args", [])
            out.append(
                "console.error: "
                + " ".join(str(a.get("value", a.get("description", ""))) for a in args)
            )
        elif e["method"] == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            out.append(f"exception: {text}")
        elif e["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            where = f" ({entry['url']})" if entry.get("url") else ""
            out.append(f"{entry.get('source', 'log')}: {entry.get('text', '')}{where}")
    return out


def _start(executable: str, profile: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so the renderers die with it
    )


def _endpoint(profile: Path, process: subprocess.Popen[bytes], *, deadline: float) -> str:
    """The browser's WebSocket URL, from the DevToolsActivePort file Chromium writes."""
    port_file = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with status {process.returncode} on start")
        lines = port_file.read_text().split() if port_file.exists() else []
        if len(lines) >= 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.05)
    raise TimeoutError("chromium did not open its DevTools port in time")


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Wait briefly for the browser to exit, then kill what is left of its process group."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def check_page(
    html: Path,
    screenshot: Path | None = None,
    *,
    width: int = 1280,
    height: int = 900,
    full_page: bool = False,
    timeout: float = 60.0,
) -> PageCheck:
    """Load ``html`` in headless Chromium and report images and console errors.

    Args:
        html: The page, opened as a ``file://`` URL.
        screenshot: Where to write a PNG of the page, if given.
        width: Viewport width in CSS pixels.
        height: Viewport height; the screenshot is this first screen unless ``full_page``.
        full_page: Capture the whole page height instead of the first screen.
        timeout: Seconds for the whole check.

    Raises:
        FileNotFoundError: Chromium is not installed, or ``html`` does not exist.
        TimeoutError: The browser did not start or the page did not load in time.
    """
    executable = chromium_path()
    if executable is None:
        raise FileNotFoundError("chromium is not installed (`make test` installs it)")
    page = Path(html).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"{page}: no such file")
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="retailml-chromium-") as tmp:
        profile = Path(tmp)
        process = _start(executable, profile)
        try:
            url = _endpoint(profile, process, deadline=deadline)
            with connect(
                url, max_size=None, open_timeout=max(deadline - time.monotonic(), 1)
            ) as ws:
                cdp = _Cdp(ws, deadline=deadline)
                target = cdp.send("Target.createTarget", url="about:blank")["targetId"]
                cdp.session = cdp.send("Target.attachToTarget", targetId=target, flatten=True)[
                    "sessionId"
                ]
                for domain in ("Page", "Runtime", "Log"):
                    cdp.send(f"{domain}.enable")
                cdp.send(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=height,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                cdp.events.clear()  # only what the page itself does counts
                navigated = cdp.send("Page.navigate", url=page.as_uri())
                if navigated.get("errorText"):
                    raise RuntimeError(f"{page}: {navigated['errorText']}")
                cdp.wait_for("Page.loadEventFired")
                found = cdp.send(
                    "Runtime.evaluate", expression=IMAGES_JS, awaitPromise=True, returnByValue=True
                )["result"]["value"]
                if screenshot is not None:
                    if full_page:
                        size = cdp.send("Page.getLayoutMetrics")["cssContentSize"]
                        cdp.send(
                            "Emulation.setDeviceMetricsOverride",
                            width=width,
                            height=int(size["height"]),
                            deviceScaleFactor=1,
                            mobile=False,
                        )
                    shot = cdp.send("Page.captureScreenshot", format="png")
                    Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
                # Errors logged while the images decoded or the screenshot was taken count too.
                errors = _errors(cdp.events)
                # A clean exit lets Chromium reap its own helper processes.
                cdp.session = None
                with contextlib.suppress(Exception):
                    cdp.send("Browser.close")
        finally:
            _kill(process)
    return PageCheck(
        images=int(found["images"]),
        images_loaded=int(found["loaded"]),
        console_errors=errors,
        title=str(found["title"]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.browser", description="Check a page in headless Chromium."
    )
    parser.add_argument("html", type=Path)
    parser.add_argument("--screenshot", type=Path, help="write a PNG of the page here")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--full-page", action="store_true", help="capture the whole page")
    args = parser.parse_args(argv)
    result = check_page(
        args.html, args.screenshot, width=args.width, height=args.height, full_page=args.full_page
    )
    print(f"title: {result.title}")
    print(f"images: {result.images_loaded}/{result.images} loaded")
    for error in result.console_errors:
        print(f"error: {error}")
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")
    ok = result.images == result.images_loaded and not result.console_errors
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
