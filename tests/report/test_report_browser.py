"""The report in a real browser (Debian's headless chromium): it renders, logs no console error, requests
nothing from the network, and a screenshot of it is not blank.

The page is driven over the Chrome DevTools Protocol through ``--remote-debugging-pipe`` (JSON messages
separated by NUL bytes on file descriptors 3 and 4): no websocket client is needed, and every network
request and console message the page causes is observed as an event rather than parsed from logs.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
    "--hide-scrollbars", "--disable-dev-shm-usage",
]


class DevTools:
    """A minimal CDP client over chromium's debugging pipe."""

    def __init__(self, chromium: str, user_data_dir: Path) -> None:
        to_child, from_parent = os.pipe()  # we write from_parent, chromium reads fd 3
        from_child, to_parent = os.pipe()  # chromium writes fd 4, we read from_child

        def wire() -> None:
            # In the child, before subprocess closes the fds not in pass_fds: the pipe ends become fds 3
            # and 4 (via fds >= 10, so that neither end is overwritten if it already is 3 or 4).
            high_in, high_out = fcntl.fcntl(to_child, fcntl.F_DUPFD, 10), fcntl.fcntl(to_parent, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.proc = subprocess.Popen(
            [chromium, *FLAGS, f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=wire,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(to_parent)
        self._out, self._in = from_parent, from_child
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self._out)
        os.close(self._in)

    def _receive(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                return None
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the debugging pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while (reply := self._receive(deadline - time.monotonic())) is not None:
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)
        raise TimeoutError(f"no reply to {method} within {timeout} s")

    def wait_for(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            seen = next((e for e in self.events if e.get("method") == method), None)
            if seen:
                return seen
            event = self._receive(deadline - time.monotonic())
            if event is None:
                raise TimeoutError(f"no {method} event within {timeout} s")
            self.events.append(event)

    def drain(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (event := self._receive(deadline - time.monotonic())) is not None:
            self.events.append(event)


def _problems(events: list[dict[str, Any]], page_url: str) -> list[str]:
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            found.append(f"console {params['type']}: {params.get('args')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
            found.append(f"log {params['entry']['level']}: {params['entry'].get('text')}")
        elif method == "Runtime.exceptionThrown":
            found.append(f"exception: {params.get('exceptionDetails')}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if url != page_url and not url.startswith("data:"):
                found.append(f"request to {url}")
        elif method == "Network.loadingFailed":
            found.append(f"failed load: {params.get('errorText')}")
    return found


_PAGE_STATE = (
    "JSON.stringify({title: document.title, images: document.images.length, "
    "broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length, "
    "scripts: document.scripts.length, sections: document.querySelectorAll('article[id^=class-]').length})"
)


def load_page(chromium: str, page: Path, profile: Path) -> tuple[list[str], list[str], dict[str, Any]]:
    """Open ``page`` in a fresh headless chromium; returns (problems, requested URLs, page state)."""
    browser = DevTools(chromium, profile)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.send(f"{domain}.enable", session=session)
        url = page.resolve().as_uri()
        browser.send("Page.navigate", {"url": url}, session=session)
        browser.wait_for("Page.loadEventFired")
        browser.drain(1.0)  # late console messages or requests
        state = browser.send("Runtime.evaluate", {"expression": _PAGE_STATE, "returnByValue": True},
                             session=session)
    finally:
        browser.close()
    requests = [e["params"]["request"]["url"] for e in browser.events
                if e.get("method") == "Network.requestWillBeSent"]
    return _problems(browser.events, url), requests, json.loads(state["result"]["value"])


def test_report_loads_without_console_errors_or_network_requests(chromium, report_path, tmp_path):
    problems, requests, page = load_page(chromium, report_path, tmp_path / "profile")
    assert [r for r in requests if not r.startswith("data:")] == [report_path.resolve().as_uri()]
    assert problems == []
    assert page["title"].startswith("Clever Hans audit of synthetic <skin> lesions")
    assert page["scripts"] == 0, "the escaped <script> class name must not become a script element"
    assert page["images"] > 20 and page["broken"] == 0
    assert page["sections"] == 3


def test_the_browser_check_sees_external_requests_and_console_errors(chromium, tmp_path):
    """Control: the check above is not vacuous."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="http://127.0.0.1:9/x.png">'
                    '<script>console.error("boom")</script></body></html>')
    problems, requests, _ = load_page(chromium, page, tmp_path / "profile")
    assert "http://127.0.0.1:9/x.png" in requests
    assert any("request to http://127.0.0.1:9/x.png" in p for p in problems)
    assert any(p.startswith("console error") and "boom" in p for p in problems)


def test_screenshot_of_the_report_is_not_blank(chromium, report_path, tmp_path):
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1280,2000", report_path.resolve().as_uri()],
        check=True, timeout=120, capture_output=True,
    )
    image = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert image.shape == (2000, 1280, 3)
    grey = image.mean(axis=2)
    assert grey.std() > 20, "the screenshot is (nearly) uniform: the page did not render"
    assert (grey < 100).mean() > 0.005, "no dark text pixels"
    reddish = (image[..., 0] > 180) & (image[..., 1] < 120) & (image[..., 2] < 120)
    assert reddish.sum() > 100, "the red candidate markers / heatmaps are missing from the first screen"
