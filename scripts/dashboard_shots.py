"""Photograph the dashboards of a sweep as a person opens them, in headless Chromium (Debian's ``chromium``):

    python scripts/dashboard_shots.py SWEEP_DIR OUT_DIR [--prefix after] [--mlflow-ui /path/to/mlflow]

- ``PREFIX-hparams.png``: TensorBoard's HParams table on the sweep folder;
- ``PREFIX-mlflow.png``: the MLflow UI's runs view of the sweep's experiment (needs the full ``mlflow`` at
  least the writer's version: ``--mlflow-ui`` names its command; skipped without it);
- ``PREFIX-report.png``: ``cnnbench report SWEEP_DIR``'s picture.

It prints what each page shows (the HParams columns ticked, the MLflow table's columns) as JSON. The
browser is driven over the DevTools protocol by ``readme_pictures.py``'s client (standard library only).
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_pictures import CHROMIUM_FLAGS, SCREEN, DevTools  # noqa: E402

# Text of every element matching a selector, through the shadow roots of TensorBoard's Polymer pages.
DEEP_TEXT_JS = """
(selector) => {
  const out = [];
  const walk = (root) => {
    root.querySelectorAll(selector).forEach(e => out.push(e.innerText || e.textContent || ''));
    root.querySelectorAll('*').forEach(e => { if (e.shadowRoot) walk(e.shadowRoot); });
  };
  walk(document);
  return out.map(t => t.trim()).filter(t => t);
}
"""


class Page:
    """One headless Chromium tab: navigate, wait for a condition, evaluate, photograph."""

    def __init__(self, devtools: DevTools) -> None:
        self.devtools = devtools

    def open(self, url: str) -> None:
        self.devtools.call("Page.navigate", url=url)

    def eval(self, expression: str):
        result = self.devtools.call("Runtime.evaluate", expression=expression, returnByValue=True,
                                    awaitPromise=True)
        return result["result"].get("value")

    def deep_text(self, selector: str) -> list[str]:
        """Texts of the elements matching ``selector``, shadow roots included."""
        return self.eval(f"({DEEP_TEXT_JS})({json.dumps(selector)})") or []

    def wait(self, expression: str, timeout_s: float = 120.0) -> None:
        deadline = time.time() + timeout_s
        while not self.eval(expression):
            if time.time() > deadline:
                raise TimeoutError(f"the page never became ready ({expression})")
            time.sleep(0.5)

    def shot(self, target: Path) -> None:
        target.write_bytes(base64.b64decode(self.devtools.call("Page.captureScreenshot", format="png")["data"]))


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser(size: tuple[int, int] = SCREEN) -> Iterator[Page]:
    """A headless Chromium with one page of ``size`` pixels."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                 f"--window-size={size[0]},{size[1]}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.time() + 60
            while not port_file.is_file() or len(port_file.read_text().split()) < 2:
                if time.time() > deadline:
                    raise TimeoutError("chromium did not open its DevTools port")
                time.sleep(0.2)
            port = port_file.read_text().split()[0]
            import urllib.request

            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
            devtools = DevTools(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"])
            devtools.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1],
                          deviceScaleFactor=1, mobile=False)
            yield Page(devtools)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@contextmanager
def server(command: list[str], ready: str, log: Path, timeout_s: float = 120.0) -> Iterator[str]:
    """A web server started by ``command``; yields its base URL, read from its log by the regex ``ready``."""
    proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout_s
        while True:
            found = re.search(ready, log.read_text())
            if found:
                break
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"{command[0]} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield found.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_ui(mlflow: str, store_uri: str, log: Path) -> Iterator[str]:
    """``mlflow ui`` (the command ``mlflow``) on a store; yields its base URL once it answers."""
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([mlflow, "ui", "--backend-store-uri", store_uri, "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"mlflow ui did not start:\n{log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
