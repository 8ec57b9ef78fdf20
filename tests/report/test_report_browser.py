"""The report in a real browser: Debian's headless chromium, driven over the Chrome DevTools Protocol.

The protocol runs over chromium's ``--remote-debugging-pipe`` (JSON messages
ending in NUL on file descriptors 3 and 4), so the test needs no websocket
client or webdriver package. CI installs chromium with ``.ci/install-browser``;
without it the test is skipped.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from cemaps.report.disruption_figures import prompt_label
from cemaps.report.results import load_results

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-pipe",
    "--window-size=1280,900",
]
TIMEOUT_S = 30.0

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(), reason="/usr/bin/chromium is absent; install it with .ci/install-browser"
)


class DevToolsPipe:
    """A Chrome DevTools Protocol connection over chromium's debugging pipe (fd 3: commands in, fd 4: out)."""

    def __init__(self, user_data_dir: Path) -> None:
        to_browser_read, self._write_fd = os.pipe()
        self._read_fd, from_browser_write = os.pipe()
        # chromium reads commands on fd 3 and writes replies on fd 4. Our ends are first moved to
        # close-on-exec fds >= 10, so the two dup2 actions below cannot overwrite one another.
        child_in, child_out = (
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser_read, from_browser_write)
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        actions = [
            (os.POSIX_SPAWN_DUP2, child_in, 3),
            (os.POSIX_SPAWN_DUP2, child_out, 4),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
        ]
        argv = [str(CHROMIUM), *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"]
        try:
            self.pid = os.posix_spawn(str(CHROMIUM), argv, os.environ, file_actions=actions)
        finally:
            os.close(child_in)
            os.close(child_out)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        self.deadline = time.monotonic() + TIMEOUT_S

    def _read_message(self) -> dict:
        while b"\0" not in self._buffer:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0 or not select.select([self._read_fd], [], [], remaining)[0]:
                raise TimeoutError(f"chromium did not answer within {TIMEOUT_S} s")
            chunk = os.read(self._read_fd, 1 << 20)
            if not chunk:
                raise ConnectionError("chromium closed the debugging pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read_message()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read_message()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def evaluate(self, expression: str, session: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError, ConnectionError):
            pass
        for _ in range(50):  # up to 5 s for a clean exit, then kill it
            if os.waitpid(self.pid, os.WNOHANG)[0]:
                break
            time.sleep(0.1)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self._write_fd)
        os.close(self._read_fd)


def expected_prompt_labels(results_dir: Path) -> list[str]:
    """The first metric's map's prompt texts in column order, cut as the report cuts them, from the CSV files."""
    results = load_results(results_dir)
    cem = results.cems[results.metrics[0]].sort_index(axis=1)
    prompts = pd.read_csv(results_dir / "prompts.csv", dtype={"prompt_id": str}).set_index("prompt_id")
    return [prompt_label(prompts.loc[p, "text"]) for p in cem.columns.get_level_values(2)]


def expected_cell(results_dir: Path, i: int, j: int) -> dict:
    """Model, prompt id and prompt text of CEM cell (i, j), from the CSV files (not from the page)."""
    results = load_results(results_dir)
    metric = results.metrics[0]
    cem = results.cems[metric].sort_index(axis=0).sort_index(axis=1)
    prompts = pd.read_csv(results_dir / "prompts.csv", dtype={"prompt_id": str}).set_index("prompt_id")
    prompt_id = cem.columns[j][2]
    return {
        "metric": metric,
        "model_id": cem.index[i][2],
        "prompt_id": prompt_id,
        "text": prompts.loc[prompt_id, "text"],
        "value": float(cem.iloc[i, j]),
    }


def test_report_renders_and_tooltip_shows_prompt_text(report_path, results_dir, tmp_path):
    started = time.monotonic()
    cell = expected_cell(results_dir, i=2, j=5)
    browser = DevToolsPipe(tmp_path / "chromium-profile")
    try:
        page = next(t for t in browser.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        session = browser.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        browser.events.clear()
        browser.send("Page.navigate", {"url": report_path.resolve().as_uri()}, session)
        browser.wait_for("Page.loadEventFired")

        images = browser.evaluate(
            "Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth}))", session
        )
        assert len(images) >= 10
        assert [i for i in images if not i["complete"] or i["width"] == 0] == []
        assert browser.evaluate("document.querySelectorAll('svg.cem rect.cell').length", session) > 0
        # issue 25: each column of the map is labelled by its prompt's text, under the map, without overlap
        labels = browser.evaluate(
            """Array.from(document.querySelector('svg.cem').querySelectorAll('text.prompt')).map(t => {
            const box = t.getBoundingClientRect();
            const cell = t.ownerSVGElement.querySelector('rect.cell[data-j="' + t.dataset.j + '"]');
            const column = cell.getBoundingClientRect();
            const cells = Array.from(t.ownerSVGElement.querySelectorAll('rect.cell'));
            return {j: +t.dataset.j, text: t.textContent, left: box.left, right: box.right, top: box.top,
                    width: box.width, height: box.height, centre: column.left + column.width / 2,
                    mapBottom: Math.max(...cells.map(c => c.getBoundingClientRect().bottom))};
        })""",
            session,
        )
        assert [label["text"] for label in labels] == expected_prompt_labels(results_dir)
        assert [label["j"] for label in labels] == list(range(len(labels)))
        for label, following in zip(labels, labels[1:], strict=False):
            assert label["right"] <= following["left"] + 0.5  # no label overlaps its neighbour
        for label in labels:
            assert label["width"] > 0 and label["height"] > label["width"]  # drawn, and read downwards
            assert label["left"] <= label["centre"] <= label["right"]  # under its own column
            assert label["top"] >= label["mapBottom"] - 0.5  # below the map, not over the cells

        centre = browser.evaluate(
            """(() => {
            const cell = document.querySelector('svg.cem rect.cell[data-i="2"][data-j="5"]');
            cell.scrollIntoView({block: "center", inline: "center"});
            const box = cell.getBoundingClientRect();
            return {x: box.x + box.width / 2, y: box.y + box.height / 2};
        })()""",
            session,
        )
        assert browser.evaluate("document.getElementById('cem-tooltip').hidden", session) is True
        browser.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": centre["x"], "y": centre["y"]}, session)
        tooltip = browser.evaluate(
            "(() => { const t = document.getElementById('cem-tooltip'); "
            "return {hidden: t.hidden, text: t.textContent, visible: t.getBoundingClientRect().width > 0}; })()",
            session,
        )
        assert tooltip["hidden"] is False and tooltip["visible"] is True
        assert cell["text"] in tooltip["text"]
        assert cell["prompt_id"] in tooltip["text"] and cell["model_id"] in tooltip["text"]
        shown_value = float(tooltip["text"].split(f"{cell['metric']}: ")[1])
        assert shown_value == pytest.approx(cell["value"], rel=1e-3)

        screenshot = browser.send("Page.captureScreenshot", {"format": "png"}, session)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "report.png").write_bytes(base64.b64decode(screenshot["data"]))

        errors = [
            e["params"]
            for e in browser.events
            if (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
            or e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        ]
        assert errors == []
        requested = [
            e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"
        ]
        assert [u for u in requested if not u.startswith(("file:", "data:"))] == []
    finally:
        browser.close()
    assert time.monotonic() - started < TIMEOUT_S


def test_hostile_results_run_no_script_in_the_browser(hostile_report_path, tmp_path):
    """Issue 22: every payload of conftest.HOSTILE would set document.title if it ran; the page's own
    script still runs (its hash is in the policy), and the tooltip shows the hostile text as text."""
    from hostile_strings import HOSTILE

    browser = DevToolsPipe(tmp_path / "chromium-profile")
    try:
        page = next(t for t in browser.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        session = browser.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            browser.send(f"{domain}.enable", session=session)
        browser.events.clear()
        browser.send("Page.navigate", {"url": hostile_report_path.resolve().as_uri()}, session)
        browser.wait_for("Page.loadEventFired")
        cells = browser.evaluate("document.querySelectorAll('svg.cem rect.cell').length", session)
        assert cells > 0
        centre = browser.evaluate(
            """(() => {
            const cells = Array.from(document.querySelectorAll('svg.cem rect.cell'));
            const cell = cells[Math.floor(cells.length / 2)];
            cell.scrollIntoView({block: "center", inline: "center"});
            const box = cell.getBoundingClientRect();
            return {x: box.x + box.width / 2, y: box.y + box.height / 2};
        })()""",
            session,
        )
        browser.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": centre["x"], "y": centre["y"]}, session)
        tooltip = browser.evaluate("document.getElementById('cem-tooltip').textContent", session)
        assert tooltip  # the page's own script ran
        hovered = browser.evaluate(
            "Array.from(document.querySelectorAll('text.label, td, dd')).forEach(e => "
            "e.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))); document.title",
            session,
        )
        assert hovered == "cemaps report"
        assert browser.evaluate("document.querySelectorAll('iframe, img[src=\"x\"]').length", session) == 0
        body = browser.evaluate("document.body.textContent", session)
        assert HOSTILE["alignment_drop"] in body and HOSTILE["animals"] in body
        texts = browser.evaluate(
            "JSON.parse(document.querySelector('script[type=\"application/json\"]').textContent)"
            ".prompts.map(p => p.text)",
            session,
        )
        assert HOSTILE["a photo of a robot"] in texts  # the tooltip's data keeps it, as text
        labels = browser.evaluate(
            "Array.from(document.querySelectorAll('svg.cem text.prompt')).map(t => t.textContent)", session
        )
        assert prompt_label(HOSTILE["a photo of a robot"]) in labels  # the map's label shows it as text
        blocked = [e for e in browser.events if "Content Security Policy" in json.dumps(e)]
        assert blocked == []  # nothing was even tried: escaping held before the policy had to
    finally:
        browser.close()
