"""Screenshot of the demo page after a segmentation, for docs/demo.md.

    python tools/demo_screenshot.py [--out docs/figures/demo.png] [--model lmseg_tiny]

Starts ``lmseg demo`` on 127.0.0.1, drives Debian's headless Chromium (``/usr/bin/chromium``
with ``/usr/bin/chromedriver``, through selenium: no browser is downloaded), uploads a generated
image, segments it and saves the page. Needs the ``demo`` extra and
``apt-get install chromium chromium-driver``.

The browser helpers below are also what the browser test drives the page with.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import urlparse
from urllib.request import urlopen

import numpy as np
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# No sandbox: CI runs as root, where Chromium's sandbox refuses to start. The rest keeps the
# browser from reaching the network on its own (updates, sync, field trials, QUIC probes).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_page(
    url: str, *, timeout: float, process: subprocess.Popen[Any] | None = None
) -> None:
    """Return once ``url`` answers; raise if it does not in ``timeout`` s or ``process`` ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the demo exited with status {process.returncode} before serving")
        try:
            with urlopen(url, timeout=2):
                return
        except (URLError, OSError):
            time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextmanager
def serve_demo(
    *args: str,
    timeout: float = 120.0,
    log: Path | None = None,
    launcher: tuple[str, ...] = ("-m", "lmseg"),
) -> Iterator[str]:
    """Run ``python -m lmseg demo --port P ARGS`` and yield its address; stop it afterwards.

    ``launcher`` replaces ``-m lmseg`` (a script taking the same arguments, e.g. one that
    watches the server's network use).
    """
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, *launcher, "demo", "--port", str(port), *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_page(url, timeout=timeout, process=process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log:
            out.close()  # type: ignore[union-attr]


@contextmanager
def chromium(*, timeout: float = 60.0, window: tuple[int, int] = (1280, 1000)) -> Iterator[Any]:
    """A selenium driver for headless Chromium with a fresh profile; every wait is bounded.

    The driver records the browser's network requests (``driver.get_log("performance")``).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Selenium Manager (which would look for or fetch a browser) has nothing to do: both paths
    # are given. SE_OFFLINE keeps it from reaching out should it run anyway.
    os.environ["SE_OFFLINE"] = "true"
    with tempfile.TemporaryDirectory(prefix="lmseg-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={window[0]},{window[1]}")
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        try:
            driver.set_page_load_timeout(timeout)
            driver.set_script_timeout(timeout)
            yield driver
        finally:
            driver.quit()


def scene_image(width: int = 200, height: int = 150) -> Image.Image:
    """A generated RGB picture: sky-blue top, green band, brown bottom, a red disc."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:] = (120, 170, 230)
    rgb[y > height * 0.45] = (70, 150, 60)
    rgb[y > height * 0.75] = (130, 90, 50)
    disc = (x - width * 0.7) ** 2 + (y - height * 0.35) ** 2 < (height * 0.18) ** 2
    rgb[disc] = (210, 40, 40)
    return Image.fromarray(rgb)


def segment_in_page(
    driver: Any, url: str, image: Path, classes: str, *, timeout: float = 60.0
) -> Image.Image:
    """Open the page, upload ``image``, type ``classes``, press Segment; the overlay it shows
    (see :func:`read_overlay`)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    driver.get(url)
    upload = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#input-image input[type=file]"))
    )
    upload.send_keys(str(image.resolve()))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#input-image img")))
    box = driver.find_element(By.CSS_SELECTOR, "#classes textarea, #classes input")
    box.clear()
    box.send_keys(classes)
    driver.find_element(By.CSS_SELECTOR, "#segment").click()
    return read_overlay(driver, timeout=timeout)


def read_overlay(driver: Any, *, timeout: float = 60.0) -> Image.Image:
    """The overlay the page shows, read back from the page: the browser fetches the ``<img>``'s
    source and hands over its bytes, which are decoded here."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout)
    img = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#overlay img")))
    wait.until(
        lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", img
        )
    )
    data = driver.execute_async_script(
        """
        const [img, done] = arguments;
        fetch(img.src).then(r => r.arrayBuffer()).then(buffer => {
            let s = ""; const bytes = new Uint8Array(buffer);
            for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
            done(btoa(s));
        }).catch(e => done("error: " + e));
        """,
        img,
    )
    if data.startswith("error: "):
        raise RuntimeError(f"could not read the overlay back from the page: {data}")
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def requested_hosts(driver: Any) -> set[str]:
    """Hosts of every request the page made so far (from the browser's network log)."""
    import json

    hosts = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            parsed = urlparse(message["params"]["request"]["url"])
            if parsed.scheme in ("http", "https", "ws", "wss"):
                hosts.add(parsed.hostname or "")
    return hosts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/figures/demo.png", help="PNG to write")
    parser.add_argument("--model", default="lmseg_tiny", help="variant shown")
    parser.add_argument("--classes", default="sky, grass, soil, ball", help="classes typed")
    parser.add_argument("--width", type=int, default=1200, help="browser window width")
    parser.add_argument("--height", type=int, default=1250, help="browser window height")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.png"
        scene_image(320, 240).save(path)
        with (
            serve_demo("--model", args.model) as url,
            chromium(window=(args.width, args.height)) as driver,
        ):
            segment_in_page(driver, url, path, args.classes)
            time.sleep(0.5)  # let the table and status finish drawing
            driver.execute_script("window.scrollTo(0, 0)")
            shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    # An adaptive palette keeps the committed PNG small (the page is mostly flat colours).
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shot.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
