"""Screenshots of a run's TensorBoard dashboards in a real headless browser, to check (and show in
``docs/``) that they are laid out as docs/training.md says: ``scripts/tensorboard_screenshots.py``.

``tensorboard_screenshots(logdir, out_dir)`` starts TensorBoard on a free local port, waits until it
answers, opens each dashboard (Time Series, the one TensorBoard opens on, then scalars, HParams,
images, text) in headless Chromium (the system package: ``apt-get install chromium``) and saves
``tensorboard_<dashboard>.png`` in ``out_dir``;
TensorBoard is stopped whatever happens. Nothing else is read or written. Give it a folder of runs
(``runs/``): the HParams dashboard finds a run's metrics in its ``validation`` and ``evaluation``
sub-runs by their path under the log folder, which a run's own ``logs/`` as the log folder lacks.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

DASHBOARDS = ("timeseries", "scalars", "hparams", "images", "text")  # as TensorBoard names them in its URL
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Time Series draws its line charts with WebGL, which headless Chromium without a GPU leaves blank:
# TensorBoard's forceSVG flag draws them as SVG
QUERY = "?forceSVG=true"


def browser() -> str:
    """The path of a Chromium-family browser; ``FileNotFoundError`` naming how to install one."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError(f"no headless browser found (looked for {', '.join(BROWSERS)}): "
                            "install one, e.g. apt-get install chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"TensorBoard did not answer at {url} within {timeout:.0f} s") from None
            time.sleep(0.5)


def tensorboard_screenshots(logdir: str, out_dir: str, dashboards=DASHBOARDS, width: int = 1600,
                            height: int = 1100, wait_ms: int = 20000) -> list[str]:
    """``tensorboard_<dashboard>.png`` for each of ``dashboards`` in ``out_dir``; returns the paths.
    ``wait_ms``: how long the page may load and draw (the browser's virtual time)."""
    if not os.path.isdir(logdir):
        raise FileNotFoundError(f"{logdir}: no such TensorBoard log folder")
    chrome = browser()
    os.makedirs(out_dir, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--port", str(port),
                               "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    paths = []
    try:
        wait_until_up(url + "data/runs")
        with tempfile.TemporaryDirectory() as profile:
            for dashboard in dashboards:
                path = os.path.abspath(os.path.join(out_dir, f"tensorboard_{dashboard}.png"))
                partial = path[:-4] + ".partial.png"
                subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                f"--user-data-dir={profile}", f"--window-size={width},{height}",
                                f"--virtual-time-budget={wait_ms}", f"--screenshot={partial}",
                                f"{url}{QUERY}#{dashboard}"], check=True, capture_output=True, timeout=180)
                os.replace(partial, path)  # whole or not at all
                paths.append(path)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return paths
