"""The painting page in headless Chromium, served by `python -m ecgan_jax.serve` itself.

The command runs as a subprocess on a free 127.0.0.1 port over a converted checkpoint of a
tiny random generator, with a config override (`--config.seed=3`, which picks other
validation scenes). The browser paints a stroke with a class and the test checks: the image
changes, the page's label map (encoded by the page's own PNG writer) holds the stroke, and the
page shows exactly what POST /api/generate returns for that map; undo restores map and image;
fill paints the connected region that scipy finds; the two downloads hold the page's label map
and image; an uploaded PNG of twice the size arrives resized. A screenshot is saved in the
test's tmp dir.

Needs Chromium, its driver (Debian: `apt-get install chromium chromium-driver`) and selenium
(`pip install -e ".[serve]"`); skipped without them, a failure with ECGAN_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
import scipy.ndimage
from PIL import Image
from serve_checkpoint import CONFIG, ROOT, make_converted_checkpoint

from ecgan_jax.data import synthetic

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("serve_browser")]
CAR = 5


def _browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver) paths; skips (fails with ECGAN_REQUIRE_BROWSER=1) without."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append('the selenium package (pip install -e ".[serve]")')
    names = ("chromium", "chromium-browser", "google-chrome", "chrome")
    chromium = next((p for p in map(shutil.which, names) if p), None)
    driver = shutil.which("chromedriver")
    if chromium is None:
        missing.append("a Chromium browser (" + "/".join(names) + " on PATH)")
    if driver is None:
        missing.append("chromedriver on PATH")
    if missing:
        message = (
            "browser test needs " + ", ".join(missing) + "; Debian: apt-get install chromium "
            "chromium-driver"
        )
        if os.environ.get("ECGAN_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return chromium, driver


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base url, config, log path): the serve command running on a free loopback port."""
    _browser_paths()  # skip before paying for a checkpoint and a server
    tmp = tmp_path_factory.mktemp("serve_browser")
    config, ckpt, _, _ = make_converted_checkpoint(tmp / "converted")
    log = tmp / "serve.log"
    env = dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS="1", JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "ecgan_jax.serve", f"--config={CONFIG}"]
    command += [f"--workdir={ckpt}", "--host=127.0.0.1", "--port=0", "--config.seed=3"]
    with open(log, "wb") as err:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    url, deadline = None, time.monotonic() + 180
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        for line in list(lines):
            if line.startswith(b"ecgan_jax.serve: open "):
                url = line.split()[2].decode().rstrip("/")
        time.sleep(0.1)
    if url is None:
        proc.kill()
        tail = log.read_text(errors="replace")[-3000:]
        pytest.fail(f"python -m ecgan_jax.serve did not start (exit {proc.poll()}):\n{tail}")
    config.seed = 3
    yield url, config, log
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(served, downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,860")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    prefs = {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    options.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def wait_for_generation(driver, after: int, timeout: float = 60.0) -> int:
    """Waits until the page has shown a generation later than `after` and sends no more."""
    deadline = time.monotonic() + timeout
    script = (
        "const s = window.ecgan && window.ecgan.state;"
        "return s ? [s.generation, s.inflight || s.dirty] : [0, true];"
    )
    while time.monotonic() < deadline:
        generation, busy = driver.execute_script(script)
        if generation > after and not busy:
            return generation
        time.sleep(0.05)
    status = driver.execute_script("return document.getElementById('status').textContent")
    pytest.fail(f"the page showed no new image within {timeout} s (status: {status!r})")


def page_final(driver) -> np.ndarray:
    b64 = driver.execute_script("return window.ecgan.state.last.final")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def page_label_png(driver) -> bytes:
    return base64.b64decode(driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.ecgan.labelPngBase64().then(done);"
    ))  # fmt: skip


def page_ids(driver) -> np.ndarray:
    h, w = driver.execute_script("return [window.ecgan.state.H, window.ecgan.state.W]")
    ids = driver.execute_script("return Array.from(window.ecgan.state.ids)")
    return np.asarray(ids, np.int32).reshape(h, w)


def api_final(url: str, png: bytes) -> np.ndarray:
    req = urllib.request.Request(f"{url}/api/generate", data=png, method="POST")
    with urllib.request.urlopen(req, timeout=60) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())))


def test_paint_a_stroke_and_the_image_follows(served, browser, downloads, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url, config, _ = served
    driver = browser
    driver.get(url + "/")
    generation = wait_for_generation(driver, 0)
    h, w = (int(v) for v in config.dataset.image_size)
    scene = synthetic.SyntheticSource(16, (h, w), seed=3, stream=1)[0]
    np.testing.assert_array_equal(page_ids(driver), scene["label"])  # validation map 0
    before = page_final(driver)

    driver.find_element(By.CSS_SELECTOR, f".class-button[data-id='{CAR}']").click()
    canvas = driver.find_element(By.ID, "label-canvas")
    width = canvas.size["width"]
    stroke = ActionChains(driver).move_to_element_with_offset(canvas, -width // 3, 0)
    stroke.click_and_hold().move_by_offset(width // 3, 0).move_by_offset(width // 3, 0)
    stroke.release().perform()
    generation = wait_for_generation(driver, generation)

    after = page_final(driver)
    assert after.shape == (h, w, 3) and not np.array_equal(after, before)
    png = page_label_png(driver)  # the page's own PNG writer
    ids = np.asarray(Image.open(io.BytesIO(png)))
    np.testing.assert_array_equal(ids, page_ids(driver))
    changed = ids != scene["label"]
    rows = np.flatnonzero(changed.any(axis=1))
    assert changed.any() and np.all(ids[changed] == CAR)
    assert rows.min() >= h // 2 - 3 and rows.max() <= h // 2 + 3  # a horizontal stroke
    assert changed[h // 2, w // 4 : 3 * w // 4].all()
    np.testing.assert_array_equal(api_final(url, png), after)  # the page shows the API's image
    driver.save_screenshot(str(tmp_path / "page_after_stroke.png"))
    assert Image.open(tmp_path / "page_after_stroke.png").size[0] > 0

    driver.find_element(By.ID, "undo").click()
    generation = wait_for_generation(driver, generation)
    np.testing.assert_array_equal(page_ids(driver), scene["label"])
    np.testing.assert_array_equal(page_final(driver), before)

    # Fill at the top-left pixel with "road": its 4-connected region, as scipy labels it.
    driver.find_element(By.CSS_SELECTOR, "input[name=tool][value=fill]").click()
    driver.find_element(By.CSS_SELECTOR, ".class-button[data-id='1']").click()
    left, top = -canvas.size["width"] // 2 + 1, -canvas.size["height"] // 2 + 1
    ActionChains(driver).move_to_element_with_offset(canvas, left, top).click().perform()
    generation = wait_for_generation(driver, generation)
    regions, _ = scipy.ndimage.label(scene["label"] == scene["label"][0, 0])
    want = np.where(regions == regions[0, 0], 1, scene["label"])
    np.testing.assert_array_equal(page_ids(driver), want)
    filled = page_ids(driver)

    # Downloads: the label map (the page's PNG, ids as palette indices) and I″.
    driver.find_element(By.ID, "download-label").click()
    driver.find_element(By.ID, "download-image").click()
    label_file, image_file = downloads / "label_map.png", downloads / "generated.png"
    deadline = time.monotonic() + 30
    while not (label_file.exists() and image_file.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    np.testing.assert_array_equal(np.asarray(Image.open(label_file)), filled)
    np.testing.assert_array_equal(np.asarray(Image.open(image_file)), page_final(driver))

    # Upload: a grey label map at twice the size comes back resized by nearest.
    upload = tmp_path / "upload.png"
    other = synthetic.SyntheticSource(16, (h, w), seed=3, stream=1)[5]["label"]
    Image.fromarray(np.repeat(np.repeat(other, 2, 0), 2, 1).astype(np.uint8)).save(upload)
    driver.find_element(By.ID, "upload").send_keys(str(upload))
    generation = wait_for_generation(driver, generation)
    np.testing.assert_array_equal(page_ids(driver), other)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
