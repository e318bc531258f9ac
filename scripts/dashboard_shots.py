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
from readme_pictures import SCREEN, DevTools, chromium_page, stop  # noqa: E402

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
    with chromium_page(size) as devtools:
        yield Page(devtools)


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
        stop(proc)


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
        stop(proc)


@contextmanager
def tensorboard(logdir: Path, log: Path) -> Iterator[str]:
    """TensorBoard on ``logdir``; yields its base URL."""
    with server([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", "0", "--host",
                 "127.0.0.1"], r"at (http://127\.0\.0\.1:\d+)/", log) as base:
        yield base


def hparams_shot(sweep: Path, target: Path, log: Path) -> list[str]:
    """TensorBoard's HParams table on ``sweep``: photographed; returns the grid's cells (headers first)."""
    with tensorboard(sweep, log) as base, browser() as page:
        page.open(base + "/#hparams")
        page.wait(f"({DEEP_TEXT_JS})('vaadin-grid-cell-content').length > 12")
        time.sleep(2)
        page.shot(target)
        return page.deep_text("vaadin-grid-cell-content")


def mlflow_shot(mlflow: str, store: str, path: str, target: Path, log: Path) -> str:
    """The MLflow UI at ``path`` (``/#/experiments/1/runs?...``): photographed; returns the page's text."""
    with mlflow_ui(mlflow, store, log) as base, browser((1800, 1000)) as page:
        page.open(base + path)
        page.wait("document.readyState === 'complete'")
        time.sleep(15)  # the runs table loads after the page
        page.shot(target)
        return page.eval("document.body.innerText")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--prefix", default="after")
    parser.add_argument("--mlflow-ui", default=None, help="the full mlflow's command (its UI)")
    parser.add_argument("--mlflow-path", default=None,
                        help="the UI page to open (default: the sweep's runs view as cnnbench prints it)")
    ns = parser.parse_args()
    ns.out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cells = hparams_shot(ns.sweep, ns.out / f"{ns.prefix}-hparams.png", Path(tmp) / "tb.log")
        seen["hparams_cells"] = cells[:20]
        ids = json.loads((ns.sweep / "mlflow.json").read_text()) if (ns.sweep / "mlflow.json").is_file() else {}
        if ns.mlflow_ui and ids:
            store, found = next(iter(ids.items()))
            path = ns.mlflow_path or (f"/#/experiments/{found['experiment_id']}/runs?workflowType=machine_learning"
                                      "&viewStateShareKey=cnnbench")
            text = mlflow_shot(ns.mlflow_ui, store, path, ns.out / f"{ns.prefix}-mlflow.png", Path(tmp) / "ui.log")
            seen["mlflow_text"] = text[:1500]
        report = subprocess.run([sys.executable, "-m", "cnnbench", "report", str(ns.sweep), "--out", tmp],
                                capture_output=True, text=True)
        if report.returncode == 0:
            shutil.copyfile(Path(tmp) / "report.png", ns.out / f"{ns.prefix}-report.png")
    print(json.dumps(seen, indent=1))


if __name__ == "__main__":
    main()
