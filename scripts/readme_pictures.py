"""Make the README's pictures from a real LeNet-BN run on Fashion-MNIST (docs/images/*.png).

    python scripts/readme_pictures.py --data DATA_ROOT                   # trains experiment=d2l_lenet_bn there
    python scripts/readme_pictures.py --data DATA_ROOT --run outputs/X/Y # uses a finished run folder instead

DATA_ROOT is a Fashion-MNIST root as ``dataset.root`` takes it (default ``$CNNBENCH_DATA``; one is required).

It runs, as a user would: ``cnnbench train`` (unless ``--run``), ``cnnbench eval``, ``cnnbench report`` on
the run's parent folder, and TensorBoard on that folder photographed by headless Chromium (Debian's
``chromium``) after the charts have drawn. The four PNGs are quantized to a small palette so that each
stays well under 150 KB: report.png, confusion.png, mistakes.png, tensorboard.png.

Chromium is driven over the DevTools protocol (a small client below, standard library only): its
``--screenshot`` flag alone shoots before TensorBoard's chart worker has drawn a line.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = 150_000  # per picture
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-port=0", "--remote-allow-origins=*"]
SCREEN = (1400, 1000)  # pixels: a desktop browser window

logger = logging.getLogger("readme_pictures")


def cnnbench(*args: str) -> str:
    """Run a cnnbench command as a user would; its output, or exit with it."""
    proc = subprocess.run([sys.executable, "-m", "cnnbench", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"cnnbench {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def small_png(source: Path, target: Path, colors: int = 256) -> int:
    """``source`` as a palette PNG (``colors`` colours, optimized) at ``target``; its size in bytes."""
    from PIL import Image

    with Image.open(source) as im:
        im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    size = target.stat().st_size
    if size > MAX_BYTES:
        return small_png(source, target, colors // 2) if colors > 8 else size
    return size


# ------------------------------------------------------------------- a minimal DevTools protocol client


class DevTools:
    """One page of a running Chromium over its WebSocket (RFC 6455 text frames, client frames masked)."""

    def __init__(self, ws_url: str) -> None:
        url = urlparse(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"DevTools refused the connection: {head[:200]!r}")
        self.next_id = 0

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            data += chunk
        return data

    def _send(self, text: str) -> None:
        payload, mask = text.encode(), os.urandom(4)
        n = len(payload)
        size = struct.pack("!B", 0x80 | n) if n < 126 else (struct.pack("!BH", 0x80 | 126, n) if n < 65536
                                                           else struct.pack("!BQ", 0x80 | 127, n))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(b"\x81" + size + mask + masked)

    def _recv(self) -> str:
        parts = []
        while True:
            first, second = self._read(2)
            n = second & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._read(8))[0]
            parts.append(self._read(n))
            if first & 0x80:  # FIN: the message is complete
                return b"".join(parts).decode()

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self._send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})


@contextmanager
def chromium_page(size: tuple[int, int] = SCREEN) -> Iterator[DevTools]:
    """A headless Chromium (Debian's ``chromium``) with one page of ``size`` pixels, driven over DevTools."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("needs Debian's chromium (apt-get install chromium)")
    # Chromium's helper processes may still write into the profile as it closes: a leftover file is no failure
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
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
            pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
            page = DevTools(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"])
            page.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1], deviceScaleFactor=1,
                      mobile=False)
            yield page
        finally:
            stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """End a child process (a browser, a server): terminate, then kill if it does not exit in 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def screenshot(url: str, target: Path, ready_js: str, settle_s: float = 8.0) -> None:
    """Open ``url`` in headless Chromium, wait until ``ready_js`` is true, let the charts draw, shoot."""
    with chromium_page() as page:
        page.call("Page.navigate", url=url)
        deadline = time.time() + 120
        while not page.call("Runtime.evaluate", expression=ready_js, returnByValue=True)["result"].get("value"):
            if time.time() > deadline:
                raise TimeoutError(f"the page never became ready ({ready_js})")
            time.sleep(0.5)
        time.sleep(settle_s)  # the chart worker draws after the cards exist
        target.write_bytes(base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"]))


def tensorboard_screenshot(logdir: Path, target: Path) -> None:
    """TensorBoard's first screen on ``logdir``, as a user opening it sees it."""
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", "0",
                           "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline, found = time.time() + 90, None
        while found is None and time.time() < deadline:
            found = re.search(r"at (http://127\.0\.0\.1:\d+)/", Path(log.name).read_text())
            time.sleep(0.3)
        if found is None:
            sys.exit(f"TensorBoard did not start:\n{Path(log.name).read_text()[-2000:]}")
        screenshot(found.group(1) + "/", target, "document.querySelectorAll('tb-truncated-path.tag').length >= 4")
    finally:
        tb.terminate()
        tb.wait(timeout=30)
        os.unlink(log.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("CNNBENCH_DATA"),
                        help="Fashion-MNIST root (dataset.root); default $CNNBENCH_DATA")
    parser.add_argument("--run", type=Path, default=None, help="a finished LeNet-BN run folder to use")
    parser.add_argument("--workdir", type=Path, default=REPO / "outputs" / "readme", help="runs go here")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    ns = parser.parse_args()
    if not ns.data:
        parser.error("give --data DATA_ROOT (a Fashion-MNIST root) or set CNNBENCH_DATA")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run = ns.run
    if run is None:
        run = ns.workdir / "lenet_bn"
        logger.info("training experiment=d2l_lenet_bn into %s", run)
        cnnbench("train", "experiment=d2l_lenet_bn", f"dataset.root={ns.data}", "trainer.progress_bar=false",
                 f"hydra.run.dir={run}")
    logger.info("evaluating %s", run)
    print(cnnbench("eval", str(run), "--data-root", ns.data))
    print(cnnbench("report", str(run)))
    shots = Path(tempfile.mkdtemp())
    # TensorBoard on a folder holding only this run (its event files), so the run list shows its name alone.
    board = shots / "board" / run.name
    board.mkdir(parents=True)
    for events in run.glob("events.out.tfevents.*"):
        shutil.copy2(events, board)
    logger.info("photographing TensorBoard on %s", run)
    tensorboard_screenshot(board.parent, shots / "tensorboard.png")
    ns.out.mkdir(parents=True, exist_ok=True)
    for source, name in ((run / "report.png", "report.png"), (run / "eval" / "test_confusion.png", "confusion.png"),
                         (run / "eval" / "test_mistakes.png", "mistakes.png"), (shots / "tensorboard.png", "tensorboard.png")):
        size = small_png(source, ns.out / name)
        logger.info("%s: %d bytes", ns.out / name, size)
        if size > MAX_BYTES:
            sys.exit(f"{name} is {size} bytes, over {MAX_BYTES}")
    shutil.rmtree(shots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
