"""The demo in a real browser: Debian's headless Chromium drives ``lmseg demo`` on 127.0.0.1.

Skipped where the ``demo`` extra, selenium or the browser is missing
(``pip install -e '.[demo,dev]'``, ``apt-get install chromium chromium-driver``). Every wait is
bounded and an alarm ends the whole test, so a stuck page fails the test instead of hanging it.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lmseg.visualize import legend_width, palette

pytest.importorskip("gradio", reason="the demo extra is not installed: pip install -e '.[demo]'")
pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[dev]'")

TOOLS = Path(__file__).resolve().parents[1] / "tools"
_spec = importlib.util.spec_from_file_location("demo_screenshot", TOOLS / "demo_screenshot.py")
assert _spec is not None and _spec.loader is not None
browser = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(browser)

if not (browser.CHROMIUM.is_file() and browser.CHROMEDRIVER.is_file()):
    pytest.skip(
        f"no {browser.CHROMIUM} or {browser.CHROMEDRIVER}: "
        "apt-get install chromium chromium-driver",
        allow_module_level=True,
    )

LIMIT_S = 240  # the whole test, start-up included (about 10 s on a 2-core VM)
CLASSES = ["sky", "grass", "soil"]

# Runs the demo with an audit hook that logs every connection or name lookup the server makes
# to anything but this machine, from the first import on.
WATCHED_LAUNCHER = """
import ipaddress, sys

log = open(sys.argv.pop(1), "a", buffering=1)

def local(host):
    if isinstance(host, bytes):
        host = host.decode()
    if host in (None, "", "localhost"):
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False

def hook(event, args):
    if event == "socket.connect" and isinstance(args[1], tuple) and not local(args[1][0]):
        log.write(f"connect {args[1]}\\n")
    elif event == "socket.getaddrinfo" and not local(args[0]):
        log.write(f"getaddrinfo {args[0]}\\n")

sys.addaudithook(hook)
from lmseg.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.fixture
def deadline():
    def expire(signum, frame):
        raise TimeoutError(f"the browser test ran past {LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def labels_from_colours(picture: np.ndarray, image: np.ndarray, k: int) -> np.ndarray:
    """``(H, W)`` class of every pixel of an overlay, recovered from its colour: the class whose
    colour blended with the input at alpha 0.5 gives the pixel (-1 where none does)."""
    expected = np.round(image[None] * 0.5 + palette(k)[:, None, None] * 0.5)  # (K, H, W, 3)
    match = (np.abs(expected - picture[None].astype(int)) <= 1).all(axis=-1)
    labels = np.where(match.any(axis=0), match.argmax(axis=0), -1)
    return labels


def test_the_page_segments_an_upload_offline(tmp_path, deadline):
    """Upload, segment, read the overlay back, table, click, hide, a corrupt upload; the page
    and the server reach nothing but 127.0.0.1."""
    start = time.monotonic()
    path = tmp_path / "upload.png"
    browser.scene_image(200, 150).save(path)
    image = np.asarray(Image.open(path).convert("RGB"))
    launcher = tmp_path / "watched.py"
    launcher.write_text(WATCHED_LAUNCHER)
    outside = tmp_path / "outside.log"
    outside.touch()
    server_log = tmp_path / "server.log"

    try:
        run_page(tmp_path, path, image, launcher, outside, server_log)
    except BaseException:
        print(f"server log:\n{server_log.read_text(errors='replace')}", file=sys.stderr)
        raise
    print(f"browser test: {time.monotonic() - start:.1f} s", file=sys.stderr)


def run_page(tmp_path, path, image, launcher, outside, server_log):
    """The steps of the browser test, in one browser session on one server."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with (
        browser.serve_demo(
            timeout=120, log=server_log, launcher=(str(launcher), str(outside))
        ) as url,
        browser.chromium(timeout=60) as driver,
    ):
        overlay = np.asarray(browser.segment_in_page(driver, url, path, ", ".join(CLASSES)))
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "sky" in d.find_element(By.CSS_SELECTOR, "#class-table").text)
        table = driver.find_element(By.CSS_SELECTOR, "#class-table").text
        status = driver.find_element(By.CSS_SELECTOR, "#status").text
        header = driver.find_element(By.CSS_SELECTOR, "#header").text

        # The overlay: the input plus the legend of the classes present, colours blended.
        labels = labels_from_colours(overlay[:150, :200], image, len(CLASSES))
        assert (labels >= 0).all(), (
            "every pixel of the overlay is the input blended with a class colour"
        )
        present = [CLASSES[i] for i in np.unique(labels)]
        assert overlay.shape == (150, 200 + legend_width(present), 3)
        assert not np.array_equal(overlay[:, :200], image)

        # The table lists every class, with its pixel count as the overlay shows it. Its visible
        # text reads cell by cell: the three headers, then class, pixels, share per row.
        cells = table.splitlines()
        cells = cells[cells.index("share (%)") + 1 :]
        rows = {cells[i]: int(cells[i + 1]) for i in range(0, len(cells) - 2, 3)}
        assert rows == {name: int((labels == i).sum()) for i, name in enumerate(CLASSES)}
        assert "random weights give meaningless outputs" in header.lower() + status.lower()

        # A click on the overlay names the class of the pixel under it.
        img = driver.find_element(By.CSS_SELECTOR, "#overlay img")
        box = driver.execute_script(
            "const b = arguments[0].getBoundingClientRect(); return [b.width, b.height];", img
        )
        scale = box[0] / overlay.shape[1]
        ActionChains(driver).move_to_element_with_offset(
            img, int((150 - overlay.shape[1] / 2) * scale), int((40 - overlay.shape[0] / 2) * scale)
        ).click().perform()
        wait.until(lambda d: "pixel (" in d.find_element(By.CSS_SELECTOR, "#pixel").text)
        said = driver.find_element(By.CSS_SELECTOR, "#pixel").text
        x, y = (int(v) for v in said.split("(")[1].split(")")[0].split(","))
        assert abs(x - 150) <= 2 and abs(y - 40) <= 2
        assert f": {CLASSES[labels[y, x]]} (" in said

        # Hiding the largest class re-renders the overlay: its pixels show the bare input.
        biggest = max(present, key=lambda name: rows[name])
        old = img.get_attribute("src")
        driver.find_element(
            By.XPATH, f"//*[@id='hide']//label[normalize-space()='{biggest}']"
        ).click()
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#overlay img").get_attribute("src") != old
        )
        hidden = np.asarray(browser.read_overlay(driver))
        mask = labels == CLASSES.index(biggest)
        assert np.array_equal(hidden[:150, :200][mask], image[mask])
        assert hidden.shape[1] == 200 + legend_width([n for n in present if n != biggest])

        # A corrupt upload gets lmseg's one-line message on the page.
        corrupt = tmp_path / "broken.png"
        corrupt.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
        driver.find_element(
            By.CSS_SELECTOR, "#input-image button[aria-label='Remove Image']"
        ).click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#input-image img"))
        driver.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(
            str(corrupt)
        )
        driver.find_element(By.CSS_SELECTOR, "#segment").click()
        wait.until(lambda d: "Error:" in d.find_element(By.CSS_SELECTOR, "#status").text)
        said = driver.find_element(By.CSS_SELECTOR, "#status").text
        assert said.startswith("Error: cannot read the upload: broken.png is not a readable image")
        assert "Traceback" not in driver.find_element(By.TAG_NAME, "body").text

        # Nothing the page loaded came from anywhere but the demo's own server.
        hosts = browser.requested_hosts(driver)
        assert hosts == {"127.0.0.1"}, hosts

    assert outside.read_text() == "", (
        f"the server reached outside this machine:\n{outside.read_text()}"
    )
